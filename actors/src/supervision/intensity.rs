//! Restart intensity, OTP's rule: at most `restarts_max` restarts within `period`; one more is too many. One type for
//! the generic supervisor and for plugin quarantine (and next, job worker pools), so every window counts the same way:
//! a restart exactly `period` old no longer counts.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// How many restarts within how long are tolerated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Intensity {
    pub restarts_max: u32,
    pub period: Duration,
}

/// The restarts inside the current window of an [`Intensity`].
#[derive(Clone, Debug)]
pub struct RestartWindow {
    intensity: Intensity,
    restarts: VecDeque<Instant>,
}

impl RestartWindow {
    pub fn new(intensity: Intensity) -> RestartWindow {
        RestartWindow { intensity, restarts: VecDeque::new() }
    }

    pub fn intensity(&self) -> Intensity {
        self.intensity
    }

    /// Counts a restart at `now`. `false` when it is one too many: more than `restarts_max` within `period`.
    pub fn record(&mut self, now: Instant) -> bool {
        self.forget_before(now);
        self.restarts.push_back(now);
        self.restarts.len() <= self.intensity.restarts_max as usize
    }

    /// Restarts within the window ending at `now`.
    pub fn recent(&mut self, now: Instant) -> usize {
        self.forget_before(now);
        self.restarts.len()
    }

    pub fn clear(&mut self) {
        self.restarts.clear();
    }

    fn forget_before(&mut self, now: Instant) {
        while self.restarts.front().is_some_and(|at| now.duration_since(*at) >= self.intensity.period) {
            self.restarts.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Against the definition: a restart is too many exactly when more than `restarts_max` restarts (itself
        /// included) happened less than `period` before it.
        #[test]
        fn the_window_matches_the_definition(
            restarts_max in 0u32..5,
            period_ms in 1u64..100,
            gaps in proptest::collection::vec(0u64..60, 1..40),
        ) {
            let start = Instant::now();
            let intensity = Intensity { restarts_max, period: Duration::from_millis(period_ms) };
            let mut window = RestartWindow::new(intensity);
            let mut at = Vec::new();
            let mut now = 0;
            for gap in gaps {
                now += gap;
                at.push(now);
                let within = at.iter().filter(|earlier| now - **earlier < period_ms).count();
                let allowed = window.record(start + Duration::from_millis(now));
                prop_assert_eq!(allowed, within <= restarts_max as usize);
            }
        }
    }
}
