//! openraft's async runtime for Spool: tokio's, except for where its
//! random election timeouts come from.
//!
//! openraft draws each election timeout from its runtime's thread-local
//! generator. tokio's is seeded by the operating system, so a simulated
//! cluster would elect differently on every run of the same seed; this
//! runtime draws from [`crate::simulation::random_u64`] instead, which is
//! the seed's inside a simulation and the operating system's everywhere
//! else.

use std::future::Future;
use std::time::Duration;

use openraft::async_runtime::TokioOneShotSender;
use openraft::{AsyncRuntime, OptionalSend, TokioInstant};

/// tokio, with election timeouts a simulation can replay.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SpoolRuntime;

/// Random numbers for openraft, from [`crate::simulation::random_u64`].
#[derive(Debug, Default)]
pub struct SpoolRng;

impl rand_core::RngCore for SpoolRng {
    fn next_u32(&mut self) -> u32 {
        (crate::simulation::random_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        crate::simulation::random_u64()
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let n = crate::simulation::random_u64().to_le_bytes();
            chunk.copy_from_slice(&n[..chunk.len()]);
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl AsyncRuntime for SpoolRuntime {
    type JoinError = tokio::task::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = tokio::task::JoinHandle<T>;
    type Sleep = tokio::time::Sleep;
    type Instant = TokioInstant;
    type TimeoutError = tokio::time::error::Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = tokio::time::Timeout<T>;
    type ThreadLocalRng = SpoolRng;
    type OneshotSender<T: OptionalSend> = TokioOneShotSender<T>;
    type OneshotReceiver<T: OptionalSend> = tokio::sync::oneshot::Receiver<T>;
    type OneshotReceiverError = tokio::sync::oneshot::error::RecvError;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        tokio::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        tokio::time::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        tokio::time::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        tokio::time::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        tokio::time::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        join_error.is_panic()
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        SpoolRng
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (TokioOneShotSender(tx), rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn election_timeouts_follow_the_simulation_seed() {
        let config = openraft::Config {
            election_timeout_min: 300,
            election_timeout_max: 600,
            ..Default::default()
        };
        let draw = || -> Vec<u64> {
            (0..8)
                .map(|_| config.new_rand_election_timeout::<SpoolRuntime>())
                .collect()
        };
        let clock = || None;
        let a = {
            let _sim = crate::simulation::enter(42, clock);
            draw()
        };
        let b = {
            let _sim = crate::simulation::enter(42, clock);
            draw()
        };
        assert_eq!(a, b);
        assert!(a.iter().all(|t| (300..600).contains(t)));
        assert!(a.iter().any(|t| *t != a[0]), "{a:?}");
    }
}
