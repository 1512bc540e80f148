//! Writes send results in batches (group commit): while a batch is being
//! written, the next one gathers, and up to two report calls are in flight.
//! Every result holds its hold slot until it is written, so unwritten results
//! can never pile up beyond the sender's bound, and nothing is released before
//! Redis has it.
//!
//! The same task renews the leases of in-flight messages, so a renewal can
//! never race with the write that sets a failed message's retry backoff.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::fatal::Fatal;
use super::in_flight::{Finished, InFlight, PendingWrite, Reports};
use super::summary::Progress;
use crate::store::{
    PendingReply, PreparedReport, ReportConnection, ReportItem, ReportReply, Retry, Sender,
    StoreError,
};

/// Lease renewals per third of a lease.
const RENEWALS_PER_THIRD_LEASE: u32 = 2;

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
    /// Adds what another partition's writer counted.
    pub(super) fn merge(&mut self, other: &Self) {
        self.sent += other.sent;
        self.duplicates += other.duplicates;
        self.failed += other.failed;
        self.dead += other.dead;
        self.unwritten += other.unwritten;
        self.end_to_end.merge(&other.end_to_end);
    }

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
    pub store: Sender,
    pub consumer: String,
    pub max_attempts: u32,
    /// Idle time given to a failed message: lease − backoff.
    pub retry_idle: Duration,
    pub lease: Duration,
    /// The sender's send slots, which size its report batches.
    pub concurrency: usize,
    pub token: String,
    pub in_flight: InFlight,
    /// Where lost or damaged queue state is raised.
    pub fatal: Fatal,
    /// True while results cannot be written: the dispatcher reads no new work.
    pub writes_blocked: watch::Sender<bool>,
    /// Where what the written results counted is added up as it comes.
    pub progress: Arc<Progress>,
}

/// When the leases of the messages in flight are renewed, and how a failed
/// renewal is retried: at the next tick.
struct Renewal {
    tick: tokio::time::Interval,
    retry: Retry<'static>,
}

impl Renewal {
    fn every(period: Duration) -> Self {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            tick,
            retry: Retry::new("renew message leases")
                .until_done()
                .every(period),
        }
    }
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
        let mut renewal = Renewal::every(self.lease / RENEWALS_PER_THIRD_LEASE / 3);
        // A connection of its own: its reports reach Redis without waiting
        // for a pooled connection's health check, several at once.
        let mut conn: Option<ReportConnection> = None;
        let mut reports = Reports::new(self.concurrency);
        loop {
            reports.gather(&mut results);
            if reports.worth_writing() {
                self.start_write(&mut reports, &mut conn).await;
                continue;
            }
            if reports.is_done() {
                break;
            }
            let due_at = reports.due_at();
            let settled = tokio::select! {
                () = give_up.cancelled() => false,
                reply = reports.oldest_reply(), if reports.has_writes() => {
                    let write = reports.pop_oldest().expect("checked");
                    self.finish(write, reply, &mut conn, &mut totals, &give_up).await
                }
                next = results.recv(), if reports.can_take() => {
                    reports.take(next);
                    true
                }
                () = async {
                    match due_at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => true,
                _ = renewal.tick.tick() => {
                    let settled = self.settle_all(&mut reports, &mut conn, &mut totals, &give_up).await;
                    if settled {
                        self.renew(&mut renewal.retry).await;
                    }
                    settled
                }
            };
            if !settled {
                totals.unwritten += reports.unwritten();
                break;
            }
        }
        // Whatever is still queued was never written.
        while let Ok(_finished) = results.try_recv() {
            totals.unwritten += 1;
        }
        totals
    }

    /// Puts the gathered results on the wire as one report call.
    async fn start_write(&self, reports: &mut Reports, conn: &mut Option<ReportConnection>) {
        let seq = reports.next_seq();
        let report = self.store.prepare_report(
            &self.consumer,
            self.max_attempts,
            self.retry_idle,
            &self.token,
            seq,
            &reports.batch,
        );
        let reply = match self.connection(conn).await {
            Ok(conn) => conn.send(&report),
            // Takes the retry path of a failed write.
            Err(err) => PendingReply::failed(err),
        };
        reports.push_write(report, reply);
    }

    /// Waits for every write on the wire to be written, oldest first, before
    /// a lease renewal: a renewal landing after the write that set a failed
    /// message's retry backoff would undo it. False if `give_up` fired first.
    async fn settle_all(
        &self,
        reports: &mut Reports,
        conn: &mut Option<ReportConnection>,
        totals: &mut FlushTotals,
        give_up: &CancellationToken,
    ) -> bool {
        while let Some(mut write) = reports.pop_oldest() {
            let reply = (&mut write.reply).await;
            if !self.finish(write, reply, conn, totals, give_up).await {
                return false;
            }
        }
        true
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
        self.progress.wrote(&reply);
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
        let mut retry = Retry::new("write send results").until_done();
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
            let wait = match retry.failed(err) {
                Ok(wait) => wait,
                Err(err) => {
                    self.fatal.raise(err);
                    break None;
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = give_up.cancelled() => break None,
            }
        };
        let _ = self.writes_blocked.send(false);
        written
    }

    /// Renews the leases of the messages in flight; a failure is retried at
    /// the next tick.
    async fn renew(&self, retry: &mut Retry<'_>) {
        // Renewals come every sixth of a lease and reach the leases at least
        // that old: a message taken just after one is renewed by the next
        // but one, a third of a lease old at most, as when every lease was
        // renewed every third (so a sender with a lease a third shorter
        // never takes live work), while a message settled within a sixth of
        // a lease, nearly all of them, is never renewed.
        let ids = self
            .in_flight
            .older_than(self.lease / RENEWALS_PER_THIRD_LEASE / 3);
        if ids.is_empty() {
            return;
        }
        let at = tokio::time::Instant::now();
        match self.store.renew(&self.consumer, &ids).await {
            Ok(lost) => {
                self.in_flight.renewed(&ids, at);
                retry.succeeded();
                if !lost.is_empty() {
                    tracing::warn!(
                        count = lost.len(),
                        "in-flight messages were settled or reclaimed elsewhere"
                    );
                }
            }
            // Lost or damaged state is left for the report calls to raise.
            Err(err) => {
                if let Err(err) = retry.failed(err) {
                    tracing::warn!(error = %err, "could not renew message leases");
                }
            }
        }
    }
}
