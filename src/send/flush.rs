//! Writes send results in batches (group commit): while a batch is being
//! written, the next one gathers, and up to two report calls are in flight.
//! Every result holds its hold slot until it is written, so unwritten results
//! can never pile up beyond the sender's bound, and nothing is released before
//! Redis has it.
//!
//! The same task renews the leases of in-flight messages, so a renewal can
//! never race with the write that sets a failed message's retry backoff.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::fatal::Fatal;
use crate::store::{
    FailureLog, PendingReply, PreparedReport, ReportConnection, ReportItem, ReportReply, Store,
    StoreError,
};

/// Most results in one report call.
const MAX_BATCH: usize = 2_000;
/// Report calls in flight at once: while Redis applies one batch, the next
/// is encoded and sent.
const REPORTS_IN_FLIGHT: usize = 2;
/// Fewest results a report call needs to go out while another is in flight.
const MIN_PIPELINED_BATCH: usize = 64;

/// A finished attempt waiting to be written.
#[derive(Debug)]
pub(super) struct Finished {
    /// The result.
    pub item: ReportItem,
    /// The hold slot it occupies until written; dropping it frees the slot.
    pub hold_slot: OwnedSemaphorePermit,
}

/// Ids of the messages this sender holds: read or claimed, not yet written.
#[derive(Debug, Clone, Default)]
pub(super) struct InFlight(Arc<Mutex<HashSet<String>>>);

impl InFlight {
    pub(super) fn insert(&self, id: &str) {
        self.lock().insert(id.to_owned());
    }

    pub(super) fn remove_all<'a>(&self, ids: impl Iterator<Item = &'a str>) {
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
    /// Where lost or damaged queue state is raised.
    pub fatal: Fatal,
    /// True while results cannot be written: the dispatcher reads no new work.
    pub writes_blocked: watch::Sender<bool>,
}

/// A batch of results whose report call is on the wire.
struct PendingWrite {
    items: Vec<ReportItem>,
    /// The hold slots of its results: only held, and freed when the write
    /// is dropped, once Redis has it.
    _slots: Vec<OwnedSemaphorePermit>,
    report: PreparedReport,
    reply: PendingReply<ReportReply>,
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
        // A connection of its own: its reports reach Redis without waiting
        // for a pooled connection's health check, several at once.
        let mut conn: Option<ReportConnection> = None;
        let mut writes: VecDeque<PendingWrite> = VecDeque::with_capacity(REPORTS_IN_FLIGHT);
        // Results and the slots they hold, kept apart so the results can be
        // encoded as they are, without a copy.
        let mut batch: Vec<ReportItem> = Vec::new();
        let mut slots: Vec<OwnedSemaphorePermit> = Vec::new();
        let mut open = true;
        loop {
            while open && batch.len() < MAX_BATCH {
                match results.try_recv() {
                    Ok(finished) => {
                        batch.push(finished.item);
                        slots.push(finished.hold_slot);
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => open = false,
                }
            }
            // A write joins one in flight only with enough results to be worth
            // its own call; otherwise the results wait for the next one.
            let worth_writing = match writes.len() {
                0 => !batch.is_empty(),
                n => n < REPORTS_IN_FLIGHT && batch.len() >= MIN_PIPELINED_BATCH,
            };
            if worth_writing {
                seq += 1;
                let report = self.store.prepare_report(
                    &self.consumer,
                    self.max_attempts,
                    self.retry_idle,
                    &self.token,
                    seq,
                    &batch,
                );
                let reply = match self.connection(&mut conn).await {
                    Ok(conn) => conn.send(&report),
                    // Takes the retry path of a failed write.
                    Err(err) => PendingReply::failed(err),
                };
                writes.push_back(PendingWrite {
                    items: std::mem::take(&mut batch),
                    _slots: std::mem::take(&mut slots),
                    report,
                    reply,
                });
                continue;
            }
            if !open && batch.is_empty() && writes.is_empty() {
                break;
            }
            let settled = tokio::select! {
                () = give_up.cancelled() => false,
                reply = async { (&mut writes.front_mut().expect("checked").reply).await },
                    if !writes.is_empty() =>
                {
                    let write = writes.pop_front().expect("checked");
                    self.finish(write, reply, &mut conn, &mut totals, &give_up).await
                }
                next = results.recv(), if open && batch.len() < MAX_BATCH => {
                    match next {
                        Some(finished) => {
                            batch.push(finished.item);
                            slots.push(finished.hold_slot);
                        }
                        None => open = false,
                    }
                    true
                }
                _ = renew.tick() => {
                    // Writes first: a renewal landing after the write that
                    // set a failed message's retry backoff would undo it.
                    let mut settled = true;
                    while settled {
                        let Some(mut write) = writes.pop_front() else {
                            break;
                        };
                        let reply = (&mut write.reply).await;
                        settled = self.finish(write, reply, &mut conn, &mut totals, &give_up).await;
                    }
                    if settled {
                        self.renew().await;
                    }
                    settled
                }
            };
            if !settled {
                totals.unwritten +=
                    batch.len() as u64 + writes.iter().map(|w| w.items.len() as u64).sum::<u64>();
                break;
            }
        }
        // Whatever is still queued was never written.
        while let Ok(_finished) = results.try_recv() {
            totals.unwritten += 1;
        }
        totals
    }

    /// The flusher's connection, opened if needed.
    async fn connection<'a>(
        &self,
        conn: &'a mut Option<ReportConnection>,
    ) -> Result<&'a ReportConnection, StoreError> {
        if conn.is_none() {
            *conn = Some(self.store.report_connection().await?);
        }
        Ok(conn.as_ref().expect("just set"))
    }

    /// Counts a write whose reply came, or writes it again after a failure
    /// until it is written. Returns false if `give_up` fired first; the
    /// write's results then count as unwritten.
    async fn finish(
        &self,
        write: PendingWrite,
        reply: Result<ReportReply, StoreError>,
        conn: &mut Option<ReportConnection>,
        totals: &mut FlushTotals,
        give_up: &CancellationToken,
    ) -> bool {
        let reply = match reply {
            Ok(reply) => reply,
            Err(err) => {
                // The connection may be broken: the next write opens another.
                *conn = None;
                tracing::warn!(error = %err, results = write.items.len(), "writing send results failed; retrying");
                match self.write_until_done(&write.report, give_up).await {
                    Some(reply) => reply,
                    None => {
                        totals.unwritten += write.items.len() as u64;
                        return false;
                    }
                }
            }
        };
        totals.add(reply);
        record_end_to_end(&mut totals.end_to_end, &write.items);
        self.in_flight
            .remove_all(write.items.iter().map(|i| i.id.as_str()));
        // Dropping the slots (with `write`) frees them for new messages.
        true
    }

    /// Sends `report` until Redis has it: transient errors (Redis away, or
    /// out of memory) are retried with backoff, others (a bug or a changed
    /// schema) every second, rather than lose the results; meanwhile the
    /// dispatcher reads no new work. Lost or damaged queue state is raised
    /// instead: those results can no longer be written truthfully. `None` if
    /// `give_up` fired first.
    async fn write_until_done(
        &self,
        report: &PreparedReport,
        give_up: &CancellationToken,
    ) -> Option<ReportReply> {
        let _ = self.writes_blocked.send(true);
        let mut log = FailureLog::default();
        let written = loop {
            let attempt = self
                .store
                .retrying("write send results", || self.store.rewrite_report(report));
            let err = tokio::select! {
                written = attempt => match written {
                    Ok(reply) => break Some(reply),
                    Err(err) => err,
                },
                () = give_up.cancelled() => break None,
            };
            if err.is_queue_state() {
                self.fatal.raise(err);
                break None;
            }
            log.failed("write send results", &err, Duration::from_secs(1));
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = give_up.cancelled() => break None,
            }
        };
        let _ = self.writes_blocked.send(false);
        written
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
