//! The monitor: every interval, a snapshot of the queue rendered as a text line
//! or a JSON line to the writer it is given (stdout in the binary, a buffer in
//! tests). A refresh is one Function call: it never scans the stream.

use std::io::Write;
use std::time::{Duration, Instant};

use serde::Serialize;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::settings::MonitorSettings;
use crate::stats::Snapshot;
use crate::store::{Store, StoreError};

/// Why the monitor stopped with an error.
#[derive(Debug, Error)]
pub enum MonitorError {
    /// Redis failed in a way retrying cannot fix.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The output could not be written (e.g. a closed pipe).
    #[error("cannot write the report: {0}")]
    Output(#[from] std::io::Error),
}

/// How the monitor ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MonitorOutcome {
    /// `--until-done` and everything is settled.
    Done(Snapshot),
    /// Stopped by shutdown; the last snapshot, if any was read.
    Stopped(Option<Snapshot>),
}

/// One report line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Entries ever added to the stream.
    pub produced: u64,
    /// Messages sent, each counted once.
    pub sent: u64,
    /// Failed send attempts.
    pub failed: u64,
    /// Messages in the dead stream.
    pub dead: u64,
    /// Messages delivered and not yet settled.
    pub pending: u64,
    /// Entries not delivered yet (`null` when Redis cannot tell).
    pub lag: Option<u64>,
    /// Redeliveries of already settled messages.
    pub duplicates: u64,
    /// Send attempts of any outcome.
    pub attempts: u64,
    /// Mean simulated send time per attempt, in milliseconds.
    pub avg_send_ms: Option<f64>,
    /// Messages settled (sent or dead) per second over the last interval.
    pub rate_per_s: f64,
    /// Seconds since the monitor started.
    pub elapsed_s: f64,
    /// Whether all the work is done.
    pub done: bool,
}

impl Report {
    /// The report for `now`, with the rate measured against `previous`.
    pub fn new(now: &Snapshot, previous: Option<(&Snapshot, Duration)>, elapsed: Duration) -> Self {
        let rate_per_s = match previous {
            Some((before, dt)) if !dt.is_zero() => {
                now.settled().saturating_sub(before.settled()) as f64 / dt.as_secs_f64()
            }
            _ => 0.0,
        };
        Self {
            produced: now.produced,
            sent: now.sent,
            failed: now.failed,
            dead: now.dead,
            pending: now.pending,
            lag: now.lag,
            duplicates: now.duplicates,
            attempts: now.attempts,
            avg_send_ms: now.avg_send_ms().map(|ms| (ms * 1000.0).round() / 1000.0),
            rate_per_s: (rate_per_s * 10.0).round() / 10.0,
            elapsed_s: (elapsed.as_secs_f64() * 10.0).round() / 10.0,
            done: now.is_done(),
        }
    }

    /// One human-readable line.
    pub fn to_text(&self) -> String {
        let avg = self
            .avg_send_ms
            .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1} ms"));
        let lag = self
            .lag
            .map_or_else(|| "unknown".to_owned(), |lag| lag.to_string());
        format!(
            "[{:>7.1}s] produced {} | sent {} | failed {} | dead {} | pending {} | queued {} | duplicates {} | \
             avg {}/msg | {:.1} msg/s{}",
            self.elapsed_s,
            self.produced,
            self.sent,
            self.failed,
            self.dead,
            self.pending,
            lag,
            self.duplicates,
            avg,
            self.rate_per_s,
            if self.done { " | done" } else { "" }
        )
    }
}

/// Prints a report every interval until shutdown, or until done with
/// `until_done`. Redis outages are retried and logged; the monitor never exits
/// because of one.
pub async fn run(
    store: &Store,
    settings: &MonitorSettings,
    out: &mut (dyn Write + Send),
    shutdown: &CancellationToken,
) -> Result<MonitorOutcome, MonitorError> {
    let started = Instant::now();
    let mut previous: Option<(Snapshot, Instant)> = None;
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return Ok(MonitorOutcome::Stopped(previous.map(|(s, _)| s))),
        }
        let read = store.retrying("read the queue's figures", || Snapshot::read(store));
        let snapshot = tokio::select! {
            snapshot = read => snapshot?,
            () = shutdown.cancelled() => return Ok(MonitorOutcome::Stopped(previous.map(|(s, _)| s))),
        };
        let now = Instant::now();
        let report = Report::new(
            &snapshot,
            previous
                .as_ref()
                .map(|(s, at)| (s, now.duration_since(*at))),
            now.duration_since(started),
        );
        if settings.json {
            serde_json::to_writer(&mut *out, &report).map_err(std::io::Error::from)?;
            writeln!(out)?;
        } else {
            writeln!(out, "{}", report.to_text())?;
        }
        out.flush()?;
        if settings.until_done && report.done {
            return Ok(MonitorOutcome::Done(snapshot));
        }
        previous = Some((snapshot, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_text() {
        let before = Snapshot {
            sent: 100,
            ..Snapshot::default()
        };
        let now = Snapshot {
            produced: 1000,
            sent: 300,
            dead: 10,
            attempts: 400,
            send_time_us: 80_000_000,
            ..Snapshot::default()
        };
        let report = Report::new(
            &now,
            Some((&before, Duration::from_secs(2))),
            Duration::from_secs(4),
        );
        assert_eq!(report.rate_per_s, 105.0);
        assert_eq!(report.avg_send_ms, Some(200.0));
        let text = report.to_text();
        assert!(
            text.contains("sent 300") && text.contains("avg 200.0 ms/msg"),
            "{text}"
        );
        let json = serde_json::to_value(&report).expect("serializes");
        assert_eq!(json["avg_send_ms"], 200.0);
    }
}
