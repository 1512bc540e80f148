//! The dispatcher: reads and claims messages (first the sender's own pending
//! work, then stale work of others and new messages), checks each, draws its
//! attempt and hands it to the gateway, which sends it when a send slot frees.
//!
//! Messages are read ahead: a read needs only hold slots, and its messages
//! wait in the gateway's ready queue. So a send slot that frees starts the
//! next message at once instead of waiting for a read's round trip and parse
//! (that wait took about a quarter of each 20 ms cycle at full load). Reads
//! go out for the send slots that are free or about to free, as the gateway's
//! [`Load`](super::gateway::Load) tells.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::flush::{Finished, InFlight};
use super::gateway::{Inlet, Ready};
use super::simulate::Simulator;
use crate::settings::SendSettings;
use crate::store::{
    Backoff, Outcome, PendingReply, ReadConnection, ReportItem, Store, StoreError, StreamEntry,
};

/// Longest a read blocks, so the loop checks for work to reclaim and for
/// shutdown at least this often.
const MAX_BLOCK: Duration = Duration::from_secs(1);
/// Reads out at once on the reader connection: while the sender takes in one
/// reply, Redis already works on the next read.
const READS_IN_FLIGHT: usize = 2;
/// Bounds on how often stale pending entries are looked for.
const MIN_RECLAIM_EVERY: Duration = Duration::from_millis(20);

/// Counts of how messages came to this sender.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DispatchTotals {
    /// New messages read.
    pub read: u64,
    /// Own pending messages recovered at start.
    pub recovered: u64,
    /// Stale messages taken over from others (or failed ones retried).
    pub reclaimed: u64,
    /// Entries dead-lettered while claiming.
    pub dead_on_claim: u64,
}

/// A read sent to Redis and the hold slots its messages will take.
struct PendingRead {
    hold: OwnedSemaphorePermit,
    reply: PendingReply<Vec<StreamEntry>>,
}

/// The dispatcher's state.
pub(super) struct Dispatcher {
    pub store: Store,
    pub settings: SendSettings,
    pub simulator: Simulator,
    /// One per message held, from its read until its result is written.
    pub hold_slots: Arc<Semaphore>,
    pub in_flight: InFlight,
    /// Results of messages that need no send (no delay, or malformed).
    pub results: mpsc::UnboundedSender<Finished>,
    /// Messages to send go to the gateway.
    pub gateway: Inlet,
    pub totals: DispatchTotals,
    /// True while the writer cannot write results: no new work is read.
    pub writes_blocked: watch::Receiver<bool>,
}

impl Dispatcher {
    /// Runs until `stop` fires. Only non-transient Redis errors end it early.
    /// Messages already read stay with the gateway, which sends them until
    /// the shutdown deadline.
    pub(super) async fn run(&mut self, stop: &CancellationToken) -> Result<(), StoreError> {
        if !self.recover_own(stop).await? {
            return Ok(());
        }
        let reclaim_every = (self.settings.retry_backoff / 2).clamp(MIN_RECLAIM_EVERY, MAX_BLOCK);
        // Each read takes at most its share of the concurrency, so that the
        // slots its messages free start the next read while one is still out.
        let per_read = self.settings.concurrency.div_ceil(READS_IN_FLIGHT);
        let mut next_reclaim = Instant::now();
        let mut reclaim_cursor: Option<String> = None;
        let mut reader: Option<ReadConnection> = None;
        let mut read_backoff = Backoff::default();
        let mut reads: VecDeque<PendingRead> = VecDeque::with_capacity(READS_IN_FLIGHT);
        loop {
            if stop.is_cancelled() {
                // Entries of reads already sent are this sender's now: they
                // go to the gateway, sent until the shutdown deadline.
                while let Some(read) = reads.pop_front() {
                    let reply = read.reply.await;
                    self.take_read(read.hold, reply, &mut reader, &mut read_backoff, stop)
                        .await?;
                }
                return Ok(());
            }
            if *self.writes_blocked.borrow() {
                // Results cannot be written (Redis away or full): taking more
                // work would only add to what waits.
                tokio::select! {
                    () = stop.cancelled() => {}
                    _ = self.writes_blocked.changed() => {}
                }
                continue;
            }
            let budget = self.read_budget(&reads);
            if budget > 0
                && Instant::now() >= next_reclaim
                && let Some(mut hold) = self.try_free_hold(budget)
            {
                let wanted = hold.num_permits();
                let Some(reply) = self
                    .until_stopped(
                        stop,
                        self.store.retrying("reclaim stale messages", || {
                            self.store.claim(
                                &self.settings.name,
                                self.settings.lease,
                                reclaim_cursor.as_deref(),
                                wanted,
                                self.settings.max_attempts,
                                None,
                            )
                        }),
                    )
                    .await?
                else {
                    continue;
                };
                // A pass over the pending list goes on a bounded slice per
                // call; between slices that found nothing it pauses, so a
                // long list is walked without hammering Redis.
                if reply.cursor.is_none() {
                    next_reclaim = Instant::now() + reclaim_every;
                } else if reply.claimed.is_empty() && reply.dead == 0 {
                    next_reclaim = Instant::now() + MIN_RECLAIM_EVERY;
                }
                reclaim_cursor = reply.cursor;
                self.totals.dead_on_claim += reply.dead;
                self.totals.reclaimed += reply.claimed.len() as u64;
                if !reply.claimed.is_empty() {
                    tracing::debug!(count = reply.claimed.len(), "reclaimed stale messages");
                }
                for claimed in reply.claimed {
                    self.read_ahead(claimed.entry, &mut hold);
                }
                continue;
            }
            if budget > 0
                && reads.len() < READS_IN_FLIGHT
                && let Some(hold) = self.try_free_hold(budget.min(per_read))
            {
                let block = next_reclaim
                    .saturating_duration_since(Instant::now())
                    .clamp(Duration::from_millis(1), MAX_BLOCK);
                if let Some(read) = self
                    .start_read(hold, block, &mut reader, &mut read_backoff, stop)
                    .await?
                {
                    reads.push_back(read);
                }
                // Another read may go out before the oldest is awaited.
                continue;
            }
            // Nothing can go out without waiting. Wait for the oldest read's
            // reply, or, when another read could go out, for what it lacks: a
            // hold slot, or sends that end (or come within the read-ahead
            // horizon).
            let could_read = reads.len() < READS_IN_FLIGHT;
            let wants_hold = could_read && budget > 0;
            let wants_ends = could_read && budget == 0;
            tokio::select! {
                () = stop.cancelled() => {}
                reply = async {
                    match reads.front_mut() {
                        Some(read) => (&mut read.reply).await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Some(read) = reads.pop_front() {
                        self.take_read(read.hold, reply, &mut reader, &mut read_backoff, stop)
                            .await?;
                    }
                }
                // Freed again at once: the loop takes it with the others free.
                _hold = Arc::clone(&self.hold_slots).acquire_owned(), if wants_hold => {}
                () = self.gateway.load.changed.notified(), if wants_ends => {}
            }
        }
    }

    /// How many more messages to read or claim now: one per send slot free
    /// or about to free (its send ends within the read-ahead horizon), less
    /// those already waiting for one or asked for by reads on the wire.
    fn read_budget(&self, reads: &VecDeque<PendingRead>) -> usize {
        let asked: usize = reads.iter().map(|r| r.hold.num_permits()).sum();
        self.gateway
            .load
            .wanted(self.settings.concurrency)
            .saturating_sub(asked)
    }

    /// Sends a read for as many new messages as `hold` can take, waiting up to
    /// `block` for the first, on the reader connection (opened if needed).
    /// `None` if the connection could not be opened (after backing off).
    async fn start_read(
        &self,
        hold: OwnedSemaphorePermit,
        block: Duration,
        reader: &mut Option<ReadConnection>,
        backoff: &mut Backoff,
        stop: &CancellationToken,
    ) -> Result<Option<PendingRead>, StoreError> {
        let conn = match reader {
            Some(conn) => conn,
            None => match self.store.read_connection(MAX_BLOCK).await {
                Ok(conn) => reader.insert(conn),
                Err(err) => {
                    self.wait_after_read_error(err, backoff, stop).await?;
                    return Ok(None);
                }
            },
        };
        let reply = self.store.read_new(
            conn,
            &self.settings.name,
            hold.num_permits(),
            block.as_millis() as u64,
        );
        Ok(Some(PendingRead { hold, reply }))
    }

    /// Takes a read's reply: its messages join the ready queue. After an
    /// error, drops the connection (it may be broken) and backs off.
    async fn take_read(
        &mut self,
        mut hold: OwnedSemaphorePermit,
        reply: Result<Vec<StreamEntry>, StoreError>,
        reader: &mut Option<ReadConnection>,
        backoff: &mut Backoff,
        stop: &CancellationToken,
    ) -> Result<(), StoreError> {
        match reply {
            Ok(entries) => {
                *backoff = Backoff::default();
                self.totals.read += entries.len() as u64;
                for entry in entries {
                    self.read_ahead(entry, &mut hold);
                }
                Ok(())
            }
            Err(err) => {
                *reader = None;
                self.wait_after_read_error(err, backoff, stop).await
            }
        }
    }

    /// Takes a message that was read or claimed, with one of `hold`'s slots:
    /// checks it and draws its attempt now, so that starting it when a send
    /// slot frees costs next to nothing. A malformed message, or one whose
    /// send takes no time, has its result at once; the others wait in the
    /// ready queue.
    fn read_ahead(&mut self, entry: StreamEntry, hold: &mut OwnedSemaphorePermit) {
        let Some(hold) = hold.split(1) else {
            // Never happens: each read or claim asks for at most as many
            // entries as there are slots. Leaving the entry pending is safe.
            tracing::warn!(
                id = entry.id,
                "no free slot for a message; it stays pending"
            );
            return;
        };
        // Its lease is renewed from now on, until its result is written.
        self.in_flight.insert(&entry.id);
        let checked = entry.message().map(|_| ());
        let id = entry.id;
        if let Err(err) = checked {
            tracing::warn!(id, error = %err, "malformed entry; moving it to the dead stream");
            self.finish_now(id, Outcome::Malformed, hold);
            return;
        }
        let attempt = self.simulator.next_attempt();
        if attempt.delay.is_zero() {
            self.finish_now(id, attempt.outcome(), hold);
            return;
        }
        self.gateway.hand_over(Ready {
            id,
            attempt,
            hold_slot: hold,
        });
    }

    /// Hands the result of a message that needs no send to the writer.
    fn finish_now(&self, id: String, outcome: Outcome, hold_slot: OwnedSemaphorePermit) {
        let item = ReportItem {
            id,
            outcome,
            send_time_us: 0,
        };
        let _ = self.results.send(Finished { item, hold_slot });
    }

    /// Finishes the messages left pending under this sender's name by an
    /// earlier process of the same name, before reading new ones. Returns false
    /// if `stop` fired.
    async fn recover_own(&mut self, stop: &CancellationToken) -> Result<bool, StoreError> {
        let mut cursor: Option<String> = None;
        loop {
            let Some(mut hold) = self.free_to_recover(stop).await else {
                return Ok(false);
            };
            let wanted = hold.num_permits();
            let name = self.settings.name.clone();
            let Some(reply) = self
                .until_stopped(
                    stop,
                    self.store.retrying("recover own pending messages", || {
                        self.store.claim(
                            &name,
                            Duration::ZERO,
                            cursor.as_deref(),
                            wanted,
                            self.settings.max_attempts,
                            Some(&name),
                        )
                    }),
                )
                .await?
            else {
                return Ok(false);
            };
            self.totals.dead_on_claim += reply.dead;
            self.totals.recovered += reply.claimed.len() as u64;
            if !reply.claimed.is_empty() {
                tracing::info!(
                    count = reply.claimed.len(),
                    "resuming messages left pending under this name"
                );
            }
            for claimed in reply.claimed {
                self.read_ahead(claimed.entry, &mut hold);
            }
            match reply.cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(true),
            }
        }
    }

    /// Waits until recovered messages would start at once (the gateway has
    /// a free send slot) and a hold slot is free, then takes a hold slot for
    /// each message that can start now.
    async fn free_to_recover(&self, stop: &CancellationToken) -> Option<OwnedSemaphorePermit> {
        loop {
            let free = self.gateway.load.free_slots(self.settings.concurrency);
            if let Some(hold) = self.try_free_hold(free) {
                return Some(hold);
            }
            tokio::select! {
                () = stop.cancelled() => return None,
                () = self.gateway.load.changed.notified(), if free == 0 => {}
                // Freed again at once: the loop takes it with the others free.
                hold = Arc::clone(&self.hold_slots).acquire_owned(), if free > 0 => {
                    drop(hold.ok()?);
                }
            }
        }
    }

    /// Takes up to `most` free hold slots without waiting; `None` if none is
    /// free. Only this task takes slots, so what is free now stays free.
    fn try_free_hold(&self, most: usize) -> Option<OwnedSemaphorePermit> {
        let free = self.hold_slots.available_permits().min(most) as u32;
        if free == 0 {
            return None;
        }
        Arc::clone(&self.hold_slots)
            .try_acquire_many_owned(free)
            .ok()
    }

    /// Races `work` against `stop`: `None` if stopped first.
    async fn until_stopped<T>(
        &self,
        stop: &CancellationToken,
        work: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<Option<T>, StoreError> {
        tokio::select! {
            result = work => result.map(Some),
            () = stop.cancelled() => Ok(None),
        }
    }

    /// After a failed read: a missing stream or group is diagnosed (lost
    /// or damaged queue state ends the sender; nothing is re-created), other
    /// lasting errors end it too; transient ones are waited out.
    async fn wait_after_read_error(
        &self,
        err: StoreError,
        backoff: &mut Backoff,
        stop: &CancellationToken,
    ) -> Result<(), StoreError> {
        if err.is_no_group() {
            self.store.diagnose().await?;
        } else if !err.is_transient() {
            return Err(err);
        }
        let wait = backoff.next_wait();
        tracing::warn!(error = %err, retry_in_ms = wait.as_millis() as u64, "reading messages failed; retrying");
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => {}
        }
        Ok(())
    }
}
