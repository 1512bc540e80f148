//! Alert rules: a failure rate over the last interval above a threshold, no
//! progress for a while although messages wait, the queue's state lost or
//! damaged, Redis's memory full (or allowed to evict), a consumer group
//! holding trimming back, a producer run that died or stopped. An alert is
//! printed when its condition starts and a resolution when it ends, not on
//! every interval.

use std::collections::HashSet;
use std::time::Duration;

use crate::stats::{QueueState, Snapshot};
use crate::store::RunState;

/// Fewest attempts in an interval for its failure rate to mean anything: two
/// attempts with one failure are not a 50% failure rate worth waking anyone.
pub const MIN_ATTEMPTS: u64 = 20;

pub use crate::settings::AlertRules;

/// Which alerts are active, and when progress was last seen.
#[derive(Debug, Clone, Default)]
pub struct AlertState {
    failing: bool,
    stalled: bool,
    last_progress: Duration,
    last_settled: u64,
    unsound: bool,
    memory_full: bool,
    evicting: bool,
    held_back: bool,
    runs_reported: HashSet<String>,
}

/// One alert line: `ALERT ...` when a condition starts, `RESOLVED ...` when
/// it ends, nothing while it holds.
fn edge(
    lines: &mut Vec<String>,
    active: &mut bool,
    now: bool,
    alert: impl FnOnce() -> String,
    resolved: &str,
) {
    if now && !*active {
        lines.push(format!("ALERT {}", alert()));
    } else if !now && *active {
        lines.push(format!("RESOLVED {resolved}"));
    }
    *active = now;
}

fn megabytes(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

impl AlertState {
    /// Compares `now` with `before` (taken `interval` earlier, if any;
    /// `elapsed` since the monitor started) and returns the alert and
    /// resolution lines to print.
    pub fn check(
        &mut self,
        rules: &AlertRules,
        before: Option<(&Snapshot, Duration)>,
        now: &Snapshot,
        elapsed: Duration,
    ) -> Vec<String> {
        let mut lines = Vec::new();
        let unsound = now.state != QueueState::Sound;
        edge(
            &mut lines,
            &mut self.unsound,
            unsound,
            || {
                let kind = if now.state.is_lost() {
                    "lost"
                } else {
                    "damaged"
                };
                format!("queue state {kind}: {}", now.state_detail)
            },
            "queue state sound again",
        );
        if let (Some(threshold), Some((before, interval))) = (rules.failure_rate, before) {
            self.failure_rate(&mut lines, threshold, before, now, interval);
        }
        if now.settled() > self.last_settled {
            self.last_settled = now.settled();
            self.last_progress = elapsed;
        }
        if let Some(after) = rules.stalled_after {
            let waiting = now.pending + now.lag.unwrap_or(0);
            let still = elapsed.saturating_sub(self.last_progress);
            edge(
                &mut lines,
                &mut self.stalled,
                waiting > 0 && still >= after,
                || {
                    format!(
                        "stalled: no message settled for {:.0}s while {waiting} wait",
                        still.as_secs_f64()
                    )
                },
                "progress again",
            );
        }
        let memory = &now.memory;
        edge(
            &mut lines,
            &mut self.memory_full,
            memory.is_full(),
            || {
                format!(
                    "Redis memory at {:.0}% of maxmemory ({:.1} of {:.1} MiB, policy {}): writes are \
                     refused or soon will be, and senders cannot record results",
                    memory.used as f64 * 100.0 / memory.max.max(1) as f64,
                    megabytes(memory.used),
                    megabytes(memory.max),
                    memory.policy
                )
            },
            "Redis memory below 95% of maxmemory",
        );
        edge(
            &mut lines,
            &mut self.evicting,
            memory.max > 0 && !memory.policy.is_empty() && memory.policy != "noeviction",
            || {
                format!(
                    "Redis maxmemory-policy is {}: at maxmemory Redis may evict queue keys and \
                     lose messages; set it to noeviction",
                    memory.policy
                )
            },
            "Redis maxmemory-policy is noeviction",
        );
        let held = now.held_back(rules.held_back);
        edge(
            &mut lines,
            &mut self.held_back,
            held.is_some(),
            || {
                let (group, age) = held.unwrap_or_default();
                format!(
                    "group '{group}' holds trimming back: the oldest entry it still needs is {} old \
                     (retention {}); {} entries are kept",
                    humantime::format_duration(Duration::from_secs(age / 1000)),
                    now.retention
                        .map_or_else(|| "-".to_owned(), |r| r.to_string()),
                    now.stream_length
                )
            },
            "no group holds trimming back",
        );
        for run in now.unfinished_runs() {
            if self.runs_reported.insert(run.id.clone()) {
                let how = if run.state == RunState::Died {
                    "died"
                } else {
                    "was stopped"
                };
                lines.push(format!(
                    "ALERT producer run {} {how} after {} of {} batches: `sms-alerts produce --resume {}` finishes it",
                    run.id, run.batches_written, run.batches, run.id
                ));
            }
        }
        lines
    }

    fn failure_rate(
        &mut self,
        lines: &mut Vec<String>,
        threshold: f64,
        before: &Snapshot,
        now: &Snapshot,
        interval: Duration,
    ) {
        let attempts = now.attempts.saturating_sub(before.attempts);
        if attempts < MIN_ATTEMPTS {
            return;
        }
        let rate = now.failed.saturating_sub(before.failed) as f64 / attempts as f64;
        edge(
            lines,
            &mut self.failing,
            rate > threshold,
            || {
                format!(
                    "failure rate {:.1}% over the last {:.1}s is above {:.1}%",
                    rate * 100.0,
                    interval.as_secs_f64(),
                    threshold * 100.0
                )
            },
            &format!("failure rate back to {:.1}%", rate * 100.0),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Memory;
    use crate::store::{Retention, RunInfo, RunPlan};

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

    fn rules(failure_rate: Option<f64>, stalled_after: Option<Duration>) -> AlertRules {
        AlertRules {
            failure_rate,
            stalled_after,
            held_back: Duration::from_secs(60),
        }
    }

    #[test]
    fn failure_rate_alerts_once_then_resolves() {
        let rules = rules(Some(0.2), None);
        let mut state = AlertState::default();
        let s = Duration::from_secs(1);
        let mut check = |before: Snapshot, now: Snapshot, at: u32| {
            state.check(&rules, Some((&before, s)), &now, at * s)
        };
        assert!(check(snap(0, 0, 0, 5), snap(100, 10, 90, 5), 1).is_empty());
        assert_eq!(
            check(snap(100, 10, 90, 5), snap(200, 50, 150, 5), 2),
            ["ALERT failure rate 40.0% over the last 1.0s is above 20.0%"]
        );
        assert!(check(snap(200, 50, 150, 5), snap(300, 90, 210, 5), 3).is_empty());
        assert_eq!(
            check(snap(300, 90, 210, 5), snap(400, 95, 305, 5), 4),
            ["RESOLVED failure rate back to 5.0%"]
        );
    }

    #[test]
    fn stalled_progress_alerts_only_while_messages_wait() {
        let rules = rules(None, Some(Duration::from_secs(3)));
        let mut state = AlertState::default();
        let s = Duration::from_secs(1);
        let stuck = snap(10, 0, 10, 4);
        assert!(state.check(&rules, None, &stuck, s).is_empty());
        assert!(state.check(&rules, None, &stuck, 2 * s).is_empty());
        assert_eq!(
            state.check(&rules, None, &stuck, 4 * s),
            ["ALERT stalled: no message settled for 3s while 4 wait"]
        );
        let moving = snap(11, 0, 11, 3);
        assert_eq!(
            state.check(&rules, None, &moving, 5 * s),
            ["RESOLVED progress again"]
        );
        // Nothing waiting: idle, not stalled.
        let mut idle = AlertState::default();
        let empty = snap(0, 0, 0, 0);
        assert!(idle.check(&rules, None, &empty, 10 * s).is_empty());
    }

    #[test]
    fn lost_state_full_memory_held_back_trimming_and_dead_runs_alert() {
        let rules = rules(None, None);
        let mut state = AlertState::default();
        let s = Duration::from_secs(1);
        let mut bad = snap(0, 0, 0, 0);
        bad.state = QueueState::Lost;
        bad.state_detail = "the queue identity {sms:0}:queue is gone".to_owned();
        bad.memory = Memory {
            used: 100 << 20,
            max: 100 << 20,
            policy: "allkeys-lru".to_owned(),
        };
        bad.retention = Some(Retention::Keep(Duration::ZERO));
        bad.floor = Some(("analytics".to_owned(), 3_600_000));
        bad.stream_length = 42;
        bad.open_runs.push(RunInfo {
            id: "r1".to_owned(),
            state: RunState::Died,
            plan: RunPlan {
                count: 10,
                seed: 1,
                batch: 5,
            },
            count: 10,
            batches_written: 1,
            batches: 2,
            started_ms: 0,
        });
        let lines = state.check(&rules, None, &bad, s);
        assert_eq!(lines.len(), 5, "{lines:?}");
        assert_eq!(
            lines[0],
            "ALERT queue state lost: the queue identity {sms:0}:queue is gone"
        );
        assert!(
            lines[1].starts_with("ALERT Redis memory at 100% of maxmemory"),
            "{lines:?}"
        );
        assert!(lines[2].contains("allkeys-lru"), "{lines:?}");
        assert!(
            lines[3].starts_with("ALERT group 'analytics' holds trimming back: the oldest entry it still needs is 1h old"),
            "{lines:?}"
        );
        assert_eq!(
            lines[4],
            "ALERT producer run r1 died after 1 of 2 batches: `sms-alerts produce --resume r1` finishes it"
        );
        assert!(
            state.check(&rules, None, &bad, 2 * s).is_empty(),
            "once each"
        );
        let good = snap(0, 0, 0, 0);
        let resolved = state.check(&rules, None, &good, 3 * s);
        assert_eq!(resolved.len(), 4, "{resolved:?}");
        assert!(resolved.iter().all(|line| line.starts_with("RESOLVED")));
    }
}
