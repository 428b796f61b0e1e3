//! What a deterministic simulation changes in Spool, and nothing else does.
//!
//! The cluster simulation (`tests/simulation.rs`) runs several brokers,
//! their clients and a simulated network (turmoil) on one thread. A
//! failing seed is only worth something if it fails the same way every
//! time, so on that thread everything a broker does must follow from the
//! seed, in an order that depends on nothing else:
//!
//! - work that would go to another thread ([`spawn_blocking`], the
//!   storage flusher, the Raft log writer) runs on the calling task, at
//!   once, instead of finishing at a moment the operating system picks;
//! - random numbers (Raft election timeouts, journal ids) come from the
//!   seed ([`random_u64`]);
//! - the monotonic clock that queue-group deadlines and storage's idle
//!   tracking read is the simulation's ([`clock_ms`]), and so is the wall
//!   clock of batch timestamps and ids ([`unix_time`]); everything else
//!   already reads tokio's clock, which the simulation drives;
//! - a broker dropped without being closed was crashed (turmoil drops a
//!   crashed host's tasks): it leaves its files as SIGKILL would.
//!
//! A thread that has not [`enter`]ed a simulation (every thread of a real
//! broker) sees none of this: [`active`] is one thread-local read.
//!
//! A checker that never fails proves nothing, so a simulation can also ask
//! for a deliberate bug ([`Sabotage`], in builds with the `fault-injection`
//! feature only) and show that its checks catch it.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// The simulation's clock: time since it started, if the caller is inside
/// one of its hosts.
pub type Clock = fn() -> Option<Duration>;

struct Simulation {
    /// SplitMix64 state: small, fast, and good enough for timeouts and
    /// ids (nothing here needs a cryptographic generator).
    rng: Cell<u64>,
    clock: Clock,
    #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
    sabotage: Option<Sabotage>,
}

/// A deliberate bug a simulation can plant in its brokers, to show that
/// its checks would catch the real thing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sabotage {
    /// `acks=all` is answered as soon as the leader has stored the batch,
    /// as if it were `acks=leader`: a leader that dies or is cut off takes
    /// acknowledged messages with it.
    AckBeforeReplicated,
    /// A returning replica whose log left the leader's ignores the
    /// leader's word on where the logs part and keeps its records: it
    /// never catches up, its copy stays different, and the partition is
    /// left one replica short for good.
    SkipTruncation,
}

thread_local! {
    static CURRENT: RefCell<Option<Simulation>> = const { RefCell::new(None) };
}

/// While held, this thread runs a simulation; dropping it leaves.
#[must_use = "the simulation ends when the guard is dropped"]
pub struct Entered(());

impl Drop for Entered {
    fn drop(&mut self) {
        CURRENT.with(|c| *c.borrow_mut() = None);
    }
}

/// Makes this thread a simulation's: random numbers from `seed`, time from
/// `clock`, no work sent to other threads.
pub fn enter(seed: u64, clock: Clock) -> Entered {
    enter_sabotaged(seed, clock, None)
}

/// [`enter`], with a deliberate bug planted in every broker of the
/// simulation (it takes effect only in builds with the `fault-injection`
/// feature).
pub fn enter_sabotaged(seed: u64, clock: Clock, sabotage: Option<Sabotage>) -> Entered {
    CURRENT.with(|c| {
        *c.borrow_mut() = Some(Simulation {
            rng: Cell::new(seed),
            clock,
            sabotage,
        })
    });
    Entered(())
}

/// True where the simulation running on this thread planted `bug`. Never
/// outside a simulation, and never in a build without `fault-injection`.
pub fn sabotaged(bug: Sabotage) -> bool {
    #[cfg(feature = "fault-injection")]
    {
        CURRENT.with(|c| c.borrow().as_ref().is_some_and(|s| s.sabotage == Some(bug)))
    }
    #[cfg(not(feature = "fault-injection"))]
    {
        let _ = bug;
        false
    }
}

/// True on a thread that runs a simulation.
pub fn active() -> bool {
    CURRENT.with(|c| c.borrow().is_some())
}

fn splitmix64(state: &Cell<u64>) -> u64 {
    let s = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
    state.set(s);
    let mut z = s;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A random number: from the simulation's seed inside one, else from the
/// operating system's randomness (as std's hash maps draw their keys).
pub fn random_u64() -> u64 {
    if let Some(n) = CURRENT.with(|c| c.borrow().as_ref().map(|s| splitmix64(&s.rng))) {
        return n;
    }
    use std::hash::{BuildHasher, Hasher};
    thread_local! {
        static COUNTER: Cell<u64> = const { Cell::new(0) };
    }
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.with(|c| {
        c.set(c.get().wrapping_add(1));
        c.get()
    }));
    h.finish()
}

/// The simulation's time in milliseconds, inside one (and inside one of
/// its hosts); `None` elsewhere.
pub fn clock_ms() -> Option<u64> {
    CURRENT
        .with(|c| c.borrow().as_ref().map(|s| s.clock))
        .and_then(|clock| clock())
        .map(|d| d.as_millis() as u64)
}

/// When a simulation's wall clock starts: 2027-01-01T00:00:00Z.
const SIMULATED_EPOCH_SECS: u64 = 1_798_761_600;

/// Time since the Unix epoch: the simulation's (a fixed start plus its
/// elapsed time) inside one, the system's elsewhere.
pub fn unix_time() -> Duration {
    match clock_ms() {
        Some(ms) => Duration::from_secs(SIMULATED_EPOCH_SECS) + Duration::from_millis(ms),
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default(),
    }
}

/// Runs `f` where it may block: on tokio's blocking threads, or, in a
/// simulation, on the calling task before this returns. Awaiting the
/// result is the same either way.
pub fn spawn_blocking<F, R>(f: F) -> Blocking<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    if active() {
        Blocking(Inner::Done(Some(f())))
    } else {
        Blocking(Inner::Spawned(tokio::task::spawn_blocking(f)))
    }
}

/// The outcome of [`spawn_blocking`], as a [`tokio::task::JoinHandle`]
/// gives it.
pub struct Blocking<R>(Inner<R>);

enum Inner<R> {
    Spawned(tokio::task::JoinHandle<R>),
    Done(Option<R>),
}

// Nothing in it is ever pinned in place: a JoinHandle is Unpin and a
// finished value is only moved out.
impl<R> Unpin for Blocking<R> {}

impl<R> Future for Blocking<R> {
    type Output = Result<R, tokio::task::JoinError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().0 {
            Inner::Spawned(handle) => Pin::new(handle).poll(cx),
            Inner::Done(value) => match value.take() {
                Some(v) => Poll::Ready(Ok(v)),
                None => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_clock() -> Option<Duration> {
        Some(Duration::from_millis(1234))
    }

    #[test]
    fn a_seed_gives_the_same_numbers_and_leaving_restores_the_real_ones() {
        let first: Vec<u64> = {
            let _sim = enter(7, no_clock);
            assert!(active());
            assert_eq!(clock_ms(), Some(1234));
            assert_eq!(
                unix_time(),
                Duration::from_secs(SIMULATED_EPOCH_SECS) + Duration::from_millis(1234)
            );
            (0..4).map(|_| random_u64()).collect()
        };
        let again: Vec<u64> = {
            let _sim = enter(7, no_clock);
            (0..4).map(|_| random_u64()).collect()
        };
        let other: Vec<u64> = {
            let _sim = enter(8, no_clock);
            (0..4).map(|_| random_u64()).collect()
        };
        assert_eq!(first, again);
        assert_ne!(first, other);
        assert!(!active());
        assert_eq!(clock_ms(), None);
        assert_ne!(random_u64(), random_u64());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn blocking_work_runs_inline_only_in_a_simulation() {
        let main = std::thread::current().id();
        let elsewhere = spawn_blocking(move || std::thread::current().id())
            .await
            .unwrap();
        assert_ne!(elsewhere, main);
        let _sim = enter(1, no_clock);
        let inline = spawn_blocking(move || std::thread::current().id());
        assert_eq!(inline.await.unwrap(), main);
    }
}
