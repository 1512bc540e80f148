//! Writes send results in batches (group commit): while one batch is being
//! written, the next one gathers. Every result holds its concurrency permit
//! until it is written, so unwritten results can never pile up beyond the
//! concurrency, and nothing is released before Redis has it.
//!
//! The same task renews the leases of in-flight messages, so a renewal can
//! never race with the write that sets a failed message's retry backoff.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;

use crate::store::{ReportItem, ReportReply, Store};

/// Most results in one report call.
const MAX_BATCH: usize = 2_000;

/// A finished attempt waiting to be written.
#[derive(Debug)]
pub(super) struct Finished {
    /// The result.
    pub item: ReportItem,
    /// The concurrency slot it occupies until written; dropping it frees the slot.
    pub permit: OwnedSemaphorePermit,
}

/// Ids of the messages this sender holds: read or claimed, not yet written.
#[derive(Debug, Clone, Default)]
pub(super) struct InFlight(Arc<Mutex<HashSet<String>>>);

impl InFlight {
    pub(super) fn insert(&self, id: &str) {
        self.lock().insert(id.to_owned());
    }

    fn remove_all<'a>(&self, ids: impl Iterator<Item = &'a str>) {
        let mut set = self.lock();
        for id in ids {
            set.remove(id);
        }
    }

    fn snapshot(&self) -> Vec<String> {
        self.lock().iter().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        // A panic while holding this lock leaves a valid set behind.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Totals of what this sender's reports counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushTotals {
    /// Messages acknowledged for the first time.
    pub sent: u64,
    /// Duplicate deliveries.
    pub duplicates: u64,
    /// Failed attempts.
    pub failed: u64,
    /// Messages dead-lettered.
    pub dead: u64,
    /// Results that could not be written before giving up at shutdown; their
    /// messages stay pending and will be delivered again.
    pub unwritten: u64,
    /// Time from a message's XADD (its id's milliseconds) to the write of its
    /// result, by histogram bucket: the end-to-end latency, measured in-process.
    pub end_to_end: crate::latency::Histogram,
}

impl FlushTotals {
    fn add(&mut self, reply: ReportReply) {
        self.sent += reply.sent;
        self.duplicates += reply.duplicates;
        self.failed += reply.failed;
        self.dead += reply.dead;
    }
}

/// Adds each item's produce-to-written time to `histogram`. A stream id starts
/// with the milliseconds of its XADD, so this needs no extra round trip.
fn record_end_to_end(histogram: &mut crate::latency::Histogram, items: &[ReportItem]) {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    for item in items {
        let produced_ms = item
            .id
            .split('-')
            .next()
            .and_then(|ms| ms.parse::<u64>().ok());
        if let Some(produced_ms) = produced_ms {
            histogram.record_us(now_ms.saturating_sub(produced_ms) * 1000);
        }
    }
}

/// The flushing task's fixed inputs.
pub(super) struct Flusher {
    pub store: Store,
    pub consumer: String,
    pub max_attempts: u32,
    /// Idle time given to a failed message: lease − backoff.
    pub retry_idle: Duration,
    pub lease: Duration,
    pub token: String,
    pub in_flight: InFlight,
}

impl Flusher {
    /// Runs until every sender of `results` is gone and all is written, or
    /// until `give_up` fires (shutdown deadline passed with Redis unreachable).
    pub(super) async fn run(
        self,
        mut results: mpsc::UnboundedReceiver<Finished>,
        give_up: CancellationToken,
    ) -> FlushTotals {
        let mut totals = FlushTotals::default();
        let mut seq: u64 = 0;
        let mut renew = tokio::time::interval(self.lease / 3);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Results and the slots they hold, kept apart so the results can be
        // passed to the write as they are, without a copy.
        let mut batch: Vec<ReportItem> = Vec::new();
        let mut slots: Vec<OwnedSemaphorePermit> = Vec::new();
        loop {
            if batch.is_empty() {
                tokio::select! {
                    next = results.recv() => match next {
                        Some(finished) => {
                            batch.push(finished.item);
                            slots.push(finished.permit);
                        }
                        None => break,
                    },
                    _ = renew.tick() => {
                        self.renew().await;
                        continue;
                    }
                }
            }
            while batch.len() < MAX_BATCH {
                match results.try_recv() {
                    Ok(finished) => {
                        batch.push(finished.item);
                        slots.push(finished.permit);
                    }
                    Err(_) => break,
                }
            }
            seq += 1;
            let items = &batch;
            let write = self.store.retrying("write send results", || {
                self.store.report(
                    &self.consumer,
                    self.max_attempts,
                    self.retry_idle,
                    &self.token,
                    seq,
                    items,
                )
            });
            let written = tokio::select! {
                written = write => written,
                () = give_up.cancelled() => {
                    totals.unwritten += batch.len() as u64;
                    break;
                }
            };
            match written {
                Ok(reply) => {
                    totals.add(reply);
                    record_end_to_end(&mut totals.end_to_end, items);
                    self.in_flight
                        .remove_all(items.iter().map(|i| i.id.as_str()));
                    batch.clear();
                    // Dropping the permits frees the slots for new messages.
                    slots.clear();
                }
                Err(err) => {
                    // Not transient (a bug or a changed schema): keep the results
                    // and their slots, and try again rather than lose them.
                    tracing::error!(error = %err, results = batch.len(), "cannot write send results; will retry");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = give_up.cancelled() => {
                            totals.unwritten += batch.len() as u64;
                            break;
                        }
                    }
                }
            }
        }
        // Whatever is still queued was never written.
        while let Ok(_finished) = results.try_recv() {
            totals.unwritten += 1;
        }
        totals
    }

    async fn renew(&self) {
        let ids = self.in_flight.snapshot();
        if ids.is_empty() {
            return;
        }
        match self.store.renew(&self.consumer, &ids).await {
            Ok(lost) if !lost.is_empty() => {
                tracing::warn!(
                    count = lost.len(),
                    "in-flight messages were settled or reclaimed elsewhere"
                )
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "could not renew message leases; will retry"),
        }
    }
}
