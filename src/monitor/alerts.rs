//! Alert rules: a failure rate over the last interval above a threshold, and
//! no progress for a while although messages wait. An alert is printed when
//! its condition starts and a resolution when it ends, not on every interval.

use std::time::Duration;

use crate::stats::Snapshot;

/// Fewest attempts in an interval for its failure rate to mean anything: two
/// attempts with one failure are not a 50% failure rate worth waking anyone.
pub const MIN_ATTEMPTS: u64 = 20;

/// What to alert on; `None` turns a rule off.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AlertRules {
    /// Alert when failed / attempts over the last interval exceeds this.
    pub failure_rate: Option<f64>,
    /// Alert when nothing was settled for this long while messages wait.
    pub stalled_after: Option<Duration>,
}

/// Which alerts are active, and when progress was last seen.
#[derive(Debug, Clone, Default)]
pub struct AlertState {
    failing: bool,
    stalled: bool,
    last_progress: Duration,
    last_settled: u64,
}

impl AlertState {
    /// Compares `now` with `before` (taken `interval` earlier; `elapsed` since
    /// the monitor started) and returns the alert and resolution lines to print.
    pub fn check(
        &mut self,
        rules: &AlertRules,
        before: &Snapshot,
        now: &Snapshot,
        interval: Duration,
        elapsed: Duration,
    ) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(threshold) = rules.failure_rate {
            let attempts = now.attempts.saturating_sub(before.attempts);
            if attempts >= MIN_ATTEMPTS {
                let rate = now.failed.saturating_sub(before.failed) as f64 / attempts as f64;
                let failing = rate > threshold;
                if failing && !self.failing {
                    lines.push(format!(
                        "ALERT failure rate {:.1}% over the last {:.1}s is above {:.1}%",
                        rate * 100.0,
                        interval.as_secs_f64(),
                        threshold * 100.0
                    ));
                } else if !failing && self.failing {
                    lines.push(format!(
                        "RESOLVED failure rate back to {:.1}%",
                        rate * 100.0
                    ));
                }
                self.failing = failing;
            }
        }
        if now.settled() > self.last_settled {
            self.last_settled = now.settled();
            self.last_progress = elapsed;
        }
        if let Some(after) = rules.stalled_after {
            let waiting = now.pending + now.lag.unwrap_or(0);
            let still = elapsed.saturating_sub(self.last_progress);
            let stalled = waiting > 0 && still >= after;
            if stalled && !self.stalled {
                lines.push(format!(
                    "ALERT stalled: no message settled for {:.0}s while {waiting} wait",
                    still.as_secs_f64()
                ));
            } else if !stalled && self.stalled {
                lines.push("RESOLVED progress again".to_owned());
            }
            self.stalled = stalled;
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(attempts: u64, failed: u64, sent: u64, pending: u64) -> Snapshot {
        Snapshot {
            attempts,
            failed,
            sent,
            pending,
            lag: Some(0),
            ..Snapshot::default()
        }
    }

    #[test]
    fn failure_rate_alerts_once_then_resolves() {
        let rules = AlertRules {
            failure_rate: Some(0.2),
            stalled_after: None,
        };
        let mut state = AlertState::default();
        let s = Duration::from_secs(1);
        assert!(
            state
                .check(&rules, &snap(0, 0, 0, 5), &snap(100, 10, 90, 5), s, s)
                .is_empty()
        );
        let alert = state.check(
            &rules,
            &snap(100, 10, 90, 5),
            &snap(200, 50, 150, 5),
            s,
            2 * s,
        );
        assert_eq!(
            alert,
            ["ALERT failure rate 40.0% over the last 1.0s is above 20.0%"]
        );
        assert!(
            state
                .check(
                    &rules,
                    &snap(200, 50, 150, 5),
                    &snap(300, 90, 210, 5),
                    s,
                    3 * s
                )
                .is_empty()
        );
        let resolved = state.check(
            &rules,
            &snap(300, 90, 210, 5),
            &snap(400, 95, 305, 5),
            s,
            4 * s,
        );
        assert_eq!(resolved, ["RESOLVED failure rate back to 5.0%"]);
    }

    #[test]
    fn stalled_progress_alerts_only_while_messages_wait() {
        let rules = AlertRules {
            failure_rate: None,
            stalled_after: Some(Duration::from_secs(3)),
        };
        let mut state = AlertState::default();
        let s = Duration::from_secs(1);
        let stuck = snap(10, 0, 10, 4);
        assert!(state.check(&rules, &stuck, &stuck, s, s).is_empty());
        assert!(state.check(&rules, &stuck, &stuck, s, 2 * s).is_empty());
        let alert = state.check(&rules, &stuck, &stuck, s, 4 * s);
        assert_eq!(
            alert,
            ["ALERT stalled: no message settled for 3s while 4 wait"]
        );
        let moving = snap(11, 0, 11, 3);
        assert_eq!(
            state.check(&rules, &stuck, &moving, s, 5 * s),
            ["RESOLVED progress again"]
        );
        // Nothing waiting: idle, not stalled.
        let mut idle = AlertState::default();
        let empty = snap(0, 0, 0, 0);
        assert!(idle.check(&rules, &empty, &empty, s, 10 * s).is_empty());
    }
}
