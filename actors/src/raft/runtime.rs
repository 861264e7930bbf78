//! openraft's async runtime for Pando: tokio, as openraft's own `TokioRuntime`, except that openraft's randomness
//! (election timeout jitter) comes from a per-thread generator that a simulation seeds ([`seed_thread_rng`]), so a
//! simulated run is a function of its seed. Unseeded (a real node), each thread's generator starts from the process's
//! random hashing keys.

use std::cell::Cell;
use std::future::Future;
use std::hash::BuildHasher;
use std::time::Duration;

use openraft::async_runtime::TokioOneShotSender;
use openraft::{AsyncRuntime, OptionalSend, TokioInstant};

use crate::seeded_rng::{mix_seed, xorshift64star};

thread_local! {
    static RNG_STATE: Cell<u64> = Cell::new(unseeded());
}

fn unseeded() -> u64 {
    std::collections::hash_map::RandomState::new().hash_one(std::thread::current().id()) | 1
}

/// Makes this thread's generators follow `seed`: the one openraft draws from, and ractor_cluster's (auth challenges,
/// connection ids, ping intervals of the actor mesh). Only the simulator calls this: a real node's mesh must draw its
/// challenges from the OS.
pub fn seed_thread_rng(seed: u64) {
    RNG_STATE.with(|state| state.set(mix_seed(seed)));
    ractor_cluster::entropy::seed_thread_entropy(Some(mix_seed(seed ^ 0x6d65_7368)));
}

/// A handle on this thread's generator (xorshift64*).
#[derive(Clone, Copy, Debug, Default)]
pub struct ThreadRng;

impl rand_core_06::RngCore for ThreadRng {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        RNG_STATE.with(|state| {
            let mut current = state.get();
            let next = xorshift64star(&mut current);
            state.set(current);
            next
        })
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        rand_core_06::impls::fill_bytes_via_next(self, dest)
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core_06::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct PandoRuntime;

impl AsyncRuntime for PandoRuntime {
    type JoinError = tokio::task::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = tokio::task::JoinHandle<T>;
    type Sleep = tokio::time::Sleep;
    type Instant = TokioInstant;
    type TimeoutError = tokio::time::error::Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = tokio::time::Timeout<T>;
    type ThreadLocalRng = ThreadRng;
    type OneshotSender<T: OptionalSend> = TokioOneShotSender<T>;
    type OneshotReceiver<T: OptionalSend> = tokio::sync::oneshot::Receiver<T>;
    type OneshotReceiverError = tokio::sync::oneshot::error::RecvError;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        tokio::task::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        tokio::time::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        tokio::time::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(duration: Duration, future: F) -> Self::Timeout<R, F> {
        tokio::time::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(deadline: Self::Instant, future: F) -> Self::Timeout<R, F> {
        tokio::time::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        join_error.is_panic()
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        ThreadRng
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        (TokioOneShotSender(sender), receiver)
    }
}
