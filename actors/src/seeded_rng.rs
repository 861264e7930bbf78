//! The simulation's one kind of generator (xorshift64*): small, fast, and a pure function of its seed, for the
//! simulated network, disks, openraft's jitter ([`crate::raft::runtime`]) and the simulator's workload.

/// Advances a xorshift64* state (nonzero) and answers the next number.
pub fn xorshift64star(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// Spreads a seed over the state's bits (and keeps it nonzero), so nearby seeds start far apart.
pub fn mix_seed(seed: u64) -> u64 {
    seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1
}

#[derive(Clone, Debug)]
pub struct SeededRng(u64);

impl SeededRng {
    /// A generator for `seed`, mixed ([`mix_seed`]).
    pub fn new(seed: u64) -> SeededRng {
        SeededRng(mix_seed(seed))
    }

    /// A generator starting from `state` as it is (0 becomes 1: xorshift needs a nonzero state).
    pub fn from_state(state: u64) -> SeededRng {
        SeededRng(state.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        xorshift64star(&mut self.0)
    }

    /// A number below `bound` (0 for a bound of 0 or 1).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound.max(1)
    }

    /// True with a chance of `chance` in a thousand (never for 0).
    pub fn per_mille(&mut self, chance: u64) -> bool {
        chance > 0 && self.below(1_000) < chance
    }
}
