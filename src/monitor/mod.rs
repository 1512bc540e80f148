//! The monitor: every interval, a snapshot of the queue rendered as a text line
//! or a JSON line to the writer it is given (stdout in the binary, a buffer in
//! tests), or as a live display on a terminal.
//!
//! - `report`: one report's figures, text and JSON;
//! - `alerts`: failure-rate and stalled-progress alerts;
//! - `live`: the terminal display (progress bar, ETA, per-sender table,
//!   per-partition table).
//!
//! A refresh is one Function call per partition, all at once (plus three per
//! partition for the per-sender rows): it never scans the stream, so its cost
//! does not grow with the number of messages. Every figure, rate and alert
//! is the queue's total; `--by-partition` adds a row per partition.

pub mod alerts;
mod live;
pub mod report;

use std::io::Write;
use std::time::Instant;

use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::settings::MonitorSettings;
use crate::stats::{QueueState, SenderSnapshot, Snapshot};
use crate::store::{Store, StoreError};
use alerts::AlertState;
pub use report::{PartitionRow, Report, SenderRow};

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

impl MonitorError {
    /// The Redis error behind this one, if any (to tell lost or damaged
    /// queue state apart).
    pub fn store_error(&self) -> Option<&StoreError> {
        match self {
            Self::Store(err) => Some(err),
            Self::Output(_) => None,
        }
    }
}

/// How the monitor ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MonitorOutcome {
    /// `--until-done` and everything is settled.
    Done(Snapshot),
    /// Stopped by shutdown; the last snapshot, if any was read.
    Stopped(Option<Snapshot>),
}

/// Where reports go.
pub enum Sink<'a> {
    /// Plain text lines (or JSON lines with `json`) to a writer.
    Writer(&'a mut (dyn Write + Send)),
    /// The live display on the terminal (stdout).
    Terminal,
}

impl Sink<'_> {
    /// Prints one line outside the reports (e.g. a demo's header).
    pub fn line(&mut self, text: &str) -> std::io::Result<()> {
        match self {
            Self::Writer(out) => writeln!(out, "{text}"),
            Self::Terminal => writeln!(std::io::stdout(), "{text}"),
        }
    }
}

/// How often `until_done` looks whether the work is done between two
/// reports: one Function call per partition, so that the end is seen (and
/// reported) within this, not up to a whole interval late.
const DONE_LOOK_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Prints a report every interval until shutdown, or until done with
/// `until_done` (then with one last report as soon as it is done). Redis outages are retried and logged; the monitor never exits
/// because of one. Lost or damaged queue state is an alert; with
/// `until_done` the monitor then ends with that error (the work can never be
/// done). Nothing is written to Redis.
pub async fn run(
    store: &Store,
    settings: &MonitorSettings,
    mut sink: Sink<'_>,
    shutdown: &CancellationToken,
) -> Result<MonitorOutcome, MonitorError> {
    let started = Instant::now();
    let mut live = matches!(sink, Sink::Terminal).then(|| live::Live::new(settings.by_partition));
    // Per-sender rows cost two more round trips; only the displays that show them pay.
    // Plain lines show no sender rows, but they name open breakers, which
    // only the senders' hashes hold.
    let per_sender = true;
    let mut previous: Option<(Snapshot, Instant)> = None;
    // The queue as it is now: partitions and channels added while the
    // monitor runs are counted from the next look, so `until_done` never
    // ends while they still have work.
    let mut watched = store.clone();
    let mut previous_senders = report::SentBySender::new();
    let mut alerts = AlertState::default();
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut look = tokio::time::interval(DONE_LOOK_EVERY.min(settings.interval));
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let outcome = loop {
        let report_due = tokio::select! {
            _ = tick.tick() => true,
            _ = look.tick(), if settings.until_done => false,
            () = shutdown.cancelled() => break MonitorOutcome::Stopped(previous.map(|(s, _)| s)),
        };
        if !report_due {
            let look = store.retrying("read the queue's figures", || async {
                let now = watched.watched().await?;
                Ok((Snapshot::read(&now).await?, now))
            });
            let snapshot;
            (snapshot, watched) = tokio::select! {
                read = look => read?,
                () = shutdown.cancelled() => break MonitorOutcome::Stopped(previous.map(|(s, _)| s)),
            };
            if snapshot.state == QueueState::Sound && !snapshot.is_done() {
                continue;
            }
        }
        let read = store.retrying("read the queue's figures", || async {
            let now = watched.watched().await?;
            let snapshot = Snapshot::read(&now).await?;
            let senders = if per_sender {
                SenderSnapshot::read_every_channel(&now).await?
            } else {
                Vec::new()
            };
            Ok((snapshot, senders, now))
        });
        let (snapshot, senders);
        (snapshot, senders, watched) = tokio::select! {
            read = read => read?,
            () = shutdown.cancelled() => break MonitorOutcome::Stopped(previous.map(|(s, _)| s)),
        };
        let now = Instant::now();
        let elapsed = now.duration_since(started);
        let since = previous
            .as_ref()
            .map(|(s, at)| (s, now.duration_since(*at)));
        let mut report = Report::new(&snapshot, since, elapsed).with_senders(
            &senders,
            &previous_senders,
            since.map(|(_, dt)| dt),
        );
        report.alerts = alerts.check(&settings.alerts, since, &snapshot, elapsed);
        if previous.is_none()
            && !settings.json
            && live.is_none()
            && let Sink::Writer(out) = &mut sink
        {
            writeln!(out, "{}", queue_line(store, &snapshot))?;
        }
        match (&mut sink, &mut live) {
            (_, Some(live)) => live.show(&report),
            (Sink::Writer(out), None) if settings.json => {
                serde_json::to_writer(&mut **out, &report).map_err(std::io::Error::from)?;
                writeln!(out)?;
                out.flush()?;
            }
            (Sink::Writer(out), None) => {
                for alert in &report.alerts {
                    writeln!(out, "{alert}")?;
                }
                writeln!(out, "{}", report.to_text())?;
                if settings.by_partition {
                    for row in &report.partitions {
                        writeln!(out, "{}", row.to_text())?;
                    }
                }
                out.flush()?;
            }
            (Sink::Terminal, None) => {}
        }
        previous_senders = report::sent_by_sender(&senders);
        if settings.until_done && snapshot.state != QueueState::Sound {
            if let Some(live) = live {
                live.finish();
            }
            let detail = snapshot.state_detail;
            return Err(MonitorError::Store(if snapshot.state.is_lost() {
                StoreError::Lost(detail)
            } else {
                StoreError::Damaged(detail)
            }));
        }
        if settings.until_done && report.done {
            break MonitorOutcome::Done(snapshot);
        }
        previous = Some((snapshot, now));
    };
    if let Some(live) = live {
        live.finish();
    }
    Ok(outcome)
}

/// The line naming the queue and its retention, printed once at the start.
fn queue_line(store: &Store, snapshot: &Snapshot) -> String {
    let kept = |retention: Option<crate::store::Retention>| {
        retention.map_or_else(|| "-".to_owned(), |r| r.to_string())
    };
    let partitions = match store.partition_count() {
        1 => String::new(),
        count => format!(" in {count} partitions"),
    };
    format!(
        "queue '{}'{partitions} at {} (epoch {}): settled messages kept {}, dead letters kept {}",
        store.keys().messages(),
        store.url(),
        if snapshot.epoch.is_empty() {
            "-"
        } else {
            &snapshot.epoch
        },
        kept(snapshot.retention),
        kept(snapshot.dead_retention)
    )
}
