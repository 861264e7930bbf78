//! (Pando patch) Where this crate's randomness comes from: the thread's OS-seeded generator, unless a simulator has
//! seeded this thread ([`seed_thread_entropy`]). Auth challenges, connection ids and ping intervals all draw here, so
//! a simulated cluster on one thread replays the same from the same seed. Never seed a thread that serves real
//! peers: a predictable challenge is no challenge.

use std::cell::Cell;

use rand::Rng;

thread_local! {
    static SEEDED: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Makes this thread's draws follow `seed` (`None` returns them to the OS-seeded generator).
pub fn seed_thread_entropy(seed: Option<u64>) {
    SEEDED.with(|state| state.set(seed));
}

/// The next 64 random bits.
pub(crate) fn next_u64() -> u64 {
    SEEDED.with(|state| match state.get() {
        // splitmix64: every seed, zero included, gives a full-period sequence.
        Some(seed) => {
            let next = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
            state.set(Some(next));
            let mut z = next;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        None => rand::rng().next_u64(),
    })
}

/// A draw in `low..high` (`high > low`).
pub(crate) fn in_range(low: u64, high: u64) -> u64 {
    low + next_u64() % (high - low)
}
