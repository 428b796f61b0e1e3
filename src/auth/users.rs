//! Users and their password hashes: salted argon2id in PHC strings, never
//! the password. `<data>/users`, replaced atomically and synced.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use parking_lot::RwLock;

use super::AuthError;
use crate::storage::atomic_file::Durability;
use crate::storage::meta_file::{self, MetaKind};

const KIND: MetaKind = MetaKind {
    magic: *b"SPUS",
    version: 1,
};
/// The file, in the data directory.
pub const FILE: &str = "users";
/// Longest user name, in bytes.
pub const MAX_NAME: usize = 128;
/// Shortest password.
pub const MIN_PASSWORD: usize = 8;

/// The users.
pub struct UserStore {
    path: PathBuf,
    users: RwLock<BTreeMap<String, String>>,
    /// A hash to verify against for unknown users, so that the time taken
    /// does not say whether a user exists.
    decoy: String,
}

fn hash(password: &str) -> Result<String, AuthError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Invalid(format!("cannot hash the password: {e}")))
}

/// Checks a user name: 1 to [`MAX_NAME`] bytes of letters, digits, `.`,
/// `_`, `-` and `@`.
pub fn check_name(name: &str) -> Result<(), AuthError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(AuthError::Invalid(format!(
            "invalid user name {name:?}: 1 to {MAX_NAME} letters, digits, '.', '_', '-' or '@'"
        )))
    }
}

impl UserStore {
    /// Opens the users kept in `dir`.
    pub fn open(dir: &Path) -> Result<UserStore, AuthError> {
        let path = dir.join(FILE);
        let users = meta_file::read(&path, KIND)?.unwrap_or_default();
        Ok(UserStore {
            path,
            users: RwLock::new(users),
            decoy: hash("not a password of anyone")?,
        })
    }

    /// Creates `name` or sets its password (slow: hashes).
    pub fn upsert(&self, name: &str, password: &str) -> Result<(), AuthError> {
        check_name(name)?;
        if password.chars().count() < MIN_PASSWORD {
            return Err(AuthError::Invalid(format!(
                "the password must have at least {MIN_PASSWORD} characters"
            )));
        }
        let hashed = hash(password)?;
        let mut users = self.users.write();
        let mut next = users.clone();
        next.insert(name.to_string(), hashed);
        meta_file::write(&self.path, KIND, &next, Durability::Synced)?;
        *users = next;
        Ok(())
    }

    /// Removes `name`.
    pub fn remove(&self, name: &str) -> Result<(), AuthError> {
        let mut users = self.users.write();
        let mut next = users.clone();
        if next.remove(name).is_none() {
            return Err(AuthError::NotFound(format!("no user {name:?}")));
        }
        meta_file::write(&self.path, KIND, &next, Durability::Synced)?;
        *users = next;
        Ok(())
    }

    /// The users' names.
    pub fn names(&self) -> Vec<String> {
        self.users.read().keys().cloned().collect()
    }

    /// True if `password` is `name`'s (slow by design).
    pub fn verify(&self, name: &str, password: &str) -> bool {
        let stored = self.users.read().get(name).cloned();
        let known = stored.is_some();
        let hash = stored.unwrap_or_else(|| self.decoy.clone());
        let matches = verify_against(&hash, password);
        known && matches
    }
}

/// True if `password` matches the stored PHC hash string `hash` (false
/// for a hash that does not parse: a damaged users file locks the user out,
/// it never lets anyone in).
pub fn verify_against(hash: &str, password: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_stored_hashed_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = UserStore::open(dir.path()).expect("open");
        store.upsert("alice", "correct horse").expect("add");
        assert!(store.verify("alice", "correct horse"));
        assert!(!store.verify("alice", "wrong horse!"));
        assert!(!store.verify("bob", "correct horse"));
        let raw = std::fs::read(dir.path().join(FILE)).expect("file");
        assert!(
            !raw.windows(13).any(|w| w == b"correct horse"),
            "the password is in the users file"
        );
        // Survives a reopen; removal works once.
        let store = UserStore::open(dir.path()).expect("reopen");
        assert!(store.verify("alice", "correct horse"));
        assert!(store.upsert("bad name!", "long enough").is_err());
        assert!(store.upsert("carol", "short").is_err());
        store.remove("alice").expect("remove");
        assert!(store.remove("alice").is_err());
        assert!(!store.verify("alice", "correct horse"));
    }
}
