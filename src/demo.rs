//! The demo: a whole simulation in one process — producer, the scenario's
//! senders and the monitor — until every message is sent or dead, then a final
//! report checked by the audit.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::audit::{self, AuditReport};
use crate::monitor::{self, MonitorError, MonitorOutcome, Sink};
use crate::produce;
use crate::send::{self, SendError, SendSummary};
use crate::settings::DemoSettings;
use crate::store::{Store, StoreError};

/// Why a demo failed.
#[derive(Debug, Error)]
pub enum DemoError {
    /// Redis failed in a way retrying cannot fix.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A sender failed.
    #[error("sender failed: {0}")]
    Send(#[from] SendError),
    /// The monitor failed.
    #[error(transparent)]
    Monitor(#[from] MonitorError),
    /// The producer failed.
    #[error(transparent)]
    Produce(#[from] crate::produce::ProduceError),
}

impl DemoError {
    /// The Redis error behind this one, if any (to tell lost or damaged
    /// queue state apart).
    pub fn store_error(&self) -> Option<&StoreError> {
        match self {
            Self::Store(err) => Some(err),
            Self::Send(err) => err.store_error(),
            Self::Monitor(err) => err.store_error(),
            Self::Produce(err) => err.store_error(),
        }
    }
}

/// What a demo did.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// Whether the run finished (false when stopped by a signal).
    pub finished: bool,
    /// Wall time.
    pub elapsed: Duration,
    /// From the start until the monitor saw every message settled on every
    /// channel (the senders and the producer start together).
    pub settled: Duration,
    /// Each sender's name and what it did.
    pub senders: Vec<(String, SendSummary)>,
    /// The audit at the end.
    pub audit: AuditReport,
}

impl DemoReport {
    /// The final report as text.
    pub fn to_text(&self) -> String {
        let c = &self.audit.counters;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n{} in {:.1}s (settled after {:.1}s): produced {}, sent {}, dead {}, failed \
             attempts {}, duplicates {}{}",
            if self.finished { "finished" } else { "stopped" },
            self.elapsed.as_secs_f64(),
            self.settled.as_secs_f64(),
            self.audit.produced,
            c.sent,
            c.dead,
            c.failed,
            c.duplicates,
            c.avg_send_ms()
                .map(|ms| format!(", average send {ms:.1} ms"))
                .unwrap_or_default()
        );
        for (name, channel) in &self.audit.channels {
            let c = &channel.counters;
            let _ = writeln!(
                out,
                "channel {name}: sent {}, dead {} (expired {}), skipped {}, failed attempts {}, \
                 deferred {}",
                c.sent, c.dead, c.dead_expired, c.skipped, c.failed, c.deferred
            );
        }
        let width = self
            .senders
            .iter()
            .map(|(n, _)| n.len())
            .max()
            .unwrap_or(6)
            .max(6);
        let _ = writeln!(
            out,
            "{:<width$}  {:>9}  {:>9}  {:>6}  {:>10}",
            "sender", "sent", "failed", "dead", "reclaimed"
        );
        for (name, s) in &self.senders {
            let _ = writeln!(
                out,
                "{:<width$}  {:>9}  {:>9}  {:>6}  {:>10}",
                name, s.flushed.sent, s.flushed.failed, s.flushed.dead, s.dispatched.reclaimed
            );
        }
        let _ = writeln!(
            out,
            "audit: {}",
            if self.audit.is_consistent() {
                "consistent (every message is sent, dead or pending, each counted once)".to_owned()
            } else {
                format!("INCONSISTENT: {}", self.audit.problems.join("; "))
            }
        );
        out
    }
}

/// Runs `settings` against `store` (prepared), reporting progress to `sink`.
pub async fn run(
    store: &Store,
    settings: &DemoSettings,
    mut sink: Sink<'_>,
    shutdown: &CancellationToken,
) -> Result<DemoReport, DemoError> {
    let started = Instant::now();
    if !settings.description.is_empty() {
        let _ = sink.line(&format!("scenario: {}", settings.description));
    }
    let senders_stop = shutdown.child_token();
    let senders: Vec<_> = settings
        .senders
        .iter()
        .map(|sender| {
            (
                sender.name.clone(),
                tokio::spawn(send::run(
                    store.clone(),
                    sender.clone(),
                    senders_stop.clone(),
                )),
            )
        })
        .collect();
    let produced = produce::run(store, &settings.produce, shutdown).await?;
    let _ = sink.line(&format!(
        "produced {} messages in {:.2}s ({:.0} msg/s)",
        produced.count,
        produced.elapsed.as_secs_f64(),
        produced.rate_per_s()
    ));
    let outcome = monitor::run(store, &settings.monitor, sink, shutdown).await;
    let settled = started.elapsed();
    senders_stop.cancel();
    let mut summaries = Vec::with_capacity(senders.len());
    for (name, handle) in senders {
        match handle.await {
            Ok(result) => summaries.push((name, result?)),
            Err(join_err) => {
                tracing::error!(sender = name, error = %join_err, "sender task failed")
            }
        }
    }
    let finished = matches!(outcome?, MonitorOutcome::Done(_));
    let audit = audit::run(store, audit::DEFAULT_PAGE).await?;
    Ok(DemoReport {
        finished,
        elapsed: started.elapsed(),
        settled,
        senders: summaries,
        audit,
    })
}
