//! How a node tells the time of day: the wall clock, or in simulation tokio's (paused) clock counted from a fixed
//! epoch, so a simulated cluster's log stamps, lease deadlines and token expiry are a function of the seed alone.
//! Intervals (timeouts, tick spacing) use `tokio::time` everywhere, which the simulation pauses and advances.

use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, Debug, Default)]
pub enum Clock {
    /// The system's wall clock.
    #[default]
    Wall,
    /// `epoch_ms` at `start`, advancing with tokio's clock.
    Simulated { epoch_ms: u64, start: tokio::time::Instant },
}

impl Clock {
    /// A simulated clock that reads `epoch_ms` now.
    pub fn simulated(epoch_ms: u64) -> Clock {
        Clock::Simulated { epoch_ms, start: tokio::time::Instant::now() }
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        match self {
            Clock::Wall => {
                SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_millis() as u64).unwrap_or(0)
            }
            Clock::Simulated { epoch_ms, start } => epoch_ms + start.elapsed().as_millis() as u64,
        }
    }
}
