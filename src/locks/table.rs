//! The lock table: which session holds each lock, which sessions wait for
//! it and in what order, and the last fencing token granted.
//!
//! Pure data and deterministic operations, no clock and no I/O: a single
//! broker applies them under its own lock and persists the table; a
//! cluster applies them as committed Raft commands, so every broker holds
//! the same table. Tokens come from one counter for every lock, kept in the
//! table, so a grant's token is larger than every earlier grant's, of any
//! lock, for as long as the table's data lives (Chubby's sequencers and
//! etcd's revisions work the same way).

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::{LockError, MAX_LOCKS, MAX_WAITERS};

/// A lock session's id: unique for the life of the table.
pub type SessionId = u64;

/// A lock and who holds and waits for it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct LockEntry {
    /// The holding session and its grant's token.
    holder: Option<(SessionId, u64)>,
    /// Sessions waiting, first in line first.
    waiters: VecDeque<SessionId>,
}

/// What an acquire did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Acquired {
    /// The session holds the lock, with this grant's token (a session that
    /// held it already keeps its token).
    Granted(u64),
    /// The session waits in the lock's queue.
    Queued,
    /// Another session holds it and the caller would not wait.
    Busy,
}

/// A grant made to a waiter when the lock came free.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The lock.
    pub lock: String,
    /// The session now holding it.
    pub session: SessionId,
    /// Its token.
    pub token: u64,
}

/// One lock, for listings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockInfo {
    /// Its name.
    pub name: String,
    /// The holding session and its token.
    pub holder: Option<(SessionId, u64)>,
    /// Waiting sessions, first in line first.
    pub waiters: Vec<SessionId>,
}

/// Every lock, and the counters of tokens and sessions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockTable {
    locks: BTreeMap<String, LockEntry>,
    last_token: u64,
    last_session: SessionId,
}

impl LockTable {
    /// A session id never handed out before by this table.
    pub fn new_session(&mut self) -> SessionId {
        self.last_session += 1;
        self.last_session
    }

    /// The largest token granted so far.
    pub fn last_token(&self) -> u64 {
        self.last_token
    }

    /// Takes `lock` for `session` if it is free (or already the session's);
    /// otherwise queues the session if `wait`, else answers `Busy`.
    pub fn acquire(
        &mut self,
        lock: &str,
        session: SessionId,
        wait: bool,
    ) -> Result<Acquired, LockError> {
        if !self.locks.contains_key(lock) && self.locks.len() >= MAX_LOCKS {
            return Err(LockError::LimitReached(format!(
                "{MAX_LOCKS} locks are held or awaited already"
            )));
        }
        let next_token = self.last_token + 1;
        let entry = self.locks.entry(lock.to_string()).or_default();
        match entry.holder {
            None => {
                entry.holder = Some((session, next_token));
                self.last_token = next_token;
                Ok(Acquired::Granted(next_token))
            }
            Some((holder, token)) if holder == session => Ok(Acquired::Granted(token)),
            Some(_) if !wait => Ok(Acquired::Busy),
            Some(_) => {
                if !entry.waiters.contains(&session) {
                    if entry.waiters.len() >= MAX_WAITERS {
                        return Err(LockError::LimitReached(format!(
                            "lock {lock:?} has {MAX_WAITERS} waiters already"
                        )));
                    }
                    entry.waiters.push_back(session);
                }
                Ok(Acquired::Queued)
            }
        }
    }

    /// Releases `lock` if `session` holds it (the next waiter, if any, is
    /// granted it), or takes `session` out of its queue if it waits.
    /// Refused if it does neither.
    pub fn release(&mut self, lock: &str, session: SessionId) -> Result<Option<Grant>, LockError> {
        let not_held = || LockError::NotHeld {
            lock: lock.to_string(),
            session,
        };
        let entry = self.locks.get_mut(lock).ok_or_else(not_held)?;
        if let Some(at) = entry.waiters.iter().position(|s| *s == session) {
            entry.waiters.remove(at);
            return Ok(None);
        }
        match entry.holder {
            Some((holder, _)) if holder == session => Ok(self.hand_on(lock)),
            _ => Err(not_held()),
        }
    }

    /// Ends `session`: releases what it holds (each lock to its next
    /// waiter) and takes it out of every queue.
    pub fn drop_session(&mut self, session: SessionId) -> Vec<Grant> {
        let mut held = Vec::new();
        for (name, entry) in &mut self.locks {
            entry.waiters.retain(|s| *s != session);
            if entry.holder.is_some_and(|(s, _)| s == session) {
                held.push(name.clone());
            }
        }
        let grants = held.iter().filter_map(|name| self.hand_on(name)).collect();
        self.locks
            .retain(|_, e| e.holder.is_some() || !e.waiters.is_empty());
        grants
    }

    /// Frees `lock` and grants it to the first waiter, if any.
    fn hand_on(&mut self, lock: &str) -> Option<Grant> {
        let entry = self.locks.get_mut(lock)?;
        entry.holder = None;
        let Some(next) = entry.waiters.pop_front() else {
            self.locks.remove(lock);
            return None;
        };
        self.last_token += 1;
        entry.holder = Some((next, self.last_token));
        Some(Grant {
            lock: lock.to_string(),
            session: next,
            token: self.last_token,
        })
    }

    /// Takes `session` out of `lock`'s queue; a grant it got stands. True if
    /// it was waiting.
    pub fn leave_queue(&mut self, lock: &str, session: SessionId) -> bool {
        let Some(entry) = self.locks.get_mut(lock) else {
            return false;
        };
        let before = entry.waiters.len();
        entry.waiters.retain(|s| *s != session);
        before != entry.waiters.len()
    }

    /// The session holding `lock` and its token.
    pub fn holder(&self, lock: &str) -> Option<(SessionId, u64)> {
        self.locks.get(lock)?.holder
    }

    /// True if `session` waits for `lock`.
    pub fn is_waiting(&self, lock: &str, session: SessionId) -> bool {
        self.locks
            .get(lock)
            .is_some_and(|e| e.waiters.contains(&session))
    }

    /// The locks whose names start with `prefix`, by name.
    pub fn list(&self, prefix: &str) -> Vec<LockInfo> {
        self.locks
            .range(prefix.to_string()..)
            .take_while(|(name, _)| name.starts_with(prefix))
            .map(|(name, e)| LockInfo {
                name: name.clone(),
                holder: e.holder,
                waiters: e.waiters.iter().copied().collect(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiters_are_granted_in_arrival_order_each_with_a_larger_token() {
        let mut t = LockTable::default();
        let (a, b, c) = (t.new_session(), t.new_session(), t.new_session());
        assert_eq!(t.acquire("l", a, true), Ok(Acquired::Granted(1)));
        // Acquiring again is idempotent: same token, no new grant.
        assert_eq!(t.acquire("l", a, true), Ok(Acquired::Granted(1)));
        assert_eq!(t.acquire("l", c, true), Ok(Acquired::Queued));
        assert_eq!(t.acquire("l", b, true), Ok(Acquired::Queued));
        // A try from a waiter answers busy and keeps its place.
        assert_eq!(t.acquire("l", b, false), Ok(Acquired::Busy));
        assert!(t.is_waiting("l", b));
        let grant = t.release("l", a).expect("holder releases");
        assert_eq!(
            grant,
            Some(Grant {
                lock: "l".into(),
                session: c,
                token: 2
            })
        );
        // Another lock's grant takes the next token: one counter for all.
        assert_eq!(t.acquire("m", a, false), Ok(Acquired::Granted(3)));
        let grant = t.release("l", c).expect("holder releases");
        assert_eq!(grant.map(|g| (g.session, g.token)), Some((b, 4)));
        assert_eq!(t.release("l", b), Ok(None));
        assert_eq!(t.holder("l"), None);
        assert_eq!(
            t.list(""),
            vec![LockInfo {
                name: "m".into(),
                holder: Some((a, 3)),
                waiters: vec![]
            }]
        );
    }

    #[test]
    fn a_release_by_anyone_but_the_holder_is_refused() {
        let mut t = LockTable::default();
        let (a, b) = (t.new_session(), t.new_session());
        assert_eq!(t.acquire("l", a, false), Ok(Acquired::Granted(1)));
        assert_eq!(t.acquire("l", b, false), Ok(Acquired::Busy));
        assert_eq!(
            t.release("l", b),
            Err(LockError::NotHeld {
                lock: "l".into(),
                session: b
            })
        );
        assert!(t.release("nope", a).is_err());
        assert_eq!(t.holder("l"), Some((a, 1)));
    }

    #[test]
    fn a_dropped_session_frees_its_locks_and_leaves_every_queue() {
        let mut t = LockTable::default();
        let (a, b, c) = (t.new_session(), t.new_session(), t.new_session());
        t.acquire("x", a, true).expect("x");
        t.acquire("y", a, true).expect("y");
        t.acquire("z", b, true).expect("z");
        t.acquire("x", b, true).expect("x queued");
        t.acquire("z", a, true).expect("z queued");
        t.acquire("z", c, true).expect("z queued");
        let grants = t.drop_session(a);
        assert_eq!(
            grants
                .iter()
                .map(|g| (g.lock.as_str(), g.session))
                .collect::<Vec<_>>(),
            vec![("x", b)]
        );
        assert_eq!(t.holder("y"), None);
        assert!(!t.is_waiting("z", a));
        // b's release of z skips the dropped a and grants c.
        let grant = t.release("z", b).expect("release").expect("grant");
        assert_eq!(grant.session, c);
        assert_eq!(t.last_token(), 5);
        assert_eq!(t.list("y"), vec![]);
    }

    #[test]
    fn the_table_is_bounded() {
        let mut t = LockTable::default();
        let a = t.new_session();
        for i in 0..MAX_LOCKS {
            t.acquire(&format!("l{i}"), a, false).expect("room");
        }
        assert!(matches!(
            t.acquire("one-more", a, false),
            Err(LockError::LimitReached(_))
        ));
    }
}
