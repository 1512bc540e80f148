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

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::gateway::{Inlet, Ready};
use super::in_flight::{Finished, InFlight, PendingRead, Reads};
use super::recover::Reclaim;
use super::simulate::Simulator;
use super::summary::Progress;
use crate::settings::SendSettings;
use crate::store::{Outcome, ReportItem, Retry, Sender, StoreError, StreamEntry};

/// Longest a read blocks, so the loop checks for work to reclaim and for
/// shutdown at least this often.
pub(super) const MAX_BLOCK: Duration = Duration::from_secs(1);

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

/// The dispatcher's state.
pub(super) struct Dispatcher {
    pub store: Sender,
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
    /// Where the messages taken in are counted as they come.
    pub progress: Arc<Progress>,
}

impl Dispatcher {
    /// Runs until `stop` fires. Only non-transient Redis errors end it early.
    /// Messages already read stay with the gateway, which sends them until
    /// the shutdown deadline.
    pub(super) async fn run(&mut self, stop: &CancellationToken) -> Result<(), StoreError> {
        if !self.recover_own(stop).await? {
            return Ok(());
        }
        let mut reclaim = Reclaim::new(self.settings.retry_backoff);
        let mut reads = Reads::new(self.settings.concurrency);
        loop {
            if stop.is_cancelled() {
                return self.take_all(&mut reads, stop).await;
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
                && reclaim.is_due()
                && let Some(hold) = self.try_free_hold(budget)
            {
                self.reclaim_stale(hold, &mut reclaim, stop).await?;
                continue;
            }
            if budget > 0
                && reads.has_room()
                && let Some(hold) = self.try_free_hold(budget.min(reads.per_read))
            {
                self.start_read(hold, reclaim.read_block(), &mut reads, stop)
                    .await?;
                // Another read may go out before the oldest is awaited.
                continue;
            }
            self.wait_for_work(&mut reads, budget, stop).await?;
        }
    }

    /// Takes the entries of the reads already sent: they are this sender's
    /// now, and go to the gateway, sent until the shutdown deadline.
    async fn take_all(
        &mut self,
        reads: &mut Reads,
        stop: &CancellationToken,
    ) -> Result<(), StoreError> {
        while let Some(read) = reads.pop_oldest() {
            let reply = read.reply.await;
            self.take_read(read.hold, reply, reads, stop).await?;
        }
        Ok(())
    }

    /// Nothing can go out without waiting. Waits for the oldest read's
    /// reply, or, when another read could go out, for what it lacks: a hold
    /// slot, or sends that end (or come within the read-ahead horizon).
    async fn wait_for_work(
        &mut self,
        reads: &mut Reads,
        budget: usize,
        stop: &CancellationToken,
    ) -> Result<(), StoreError> {
        let could_read = reads.has_room();
        let wants_hold = could_read && budget > 0;
        let wants_ends = could_read && budget == 0;
        tokio::select! {
            () = stop.cancelled() => {}
            reply = reads.oldest_reply() => {
                if let Some(read) = reads.pop_oldest() {
                    self.take_read(read.hold, reply, reads, stop).await?;
                }
            }
            // Freed again at once: the loop takes it with the others free.
            _hold = Arc::clone(&self.hold_slots).acquire_owned(), if wants_hold => {}
            () = self.gateway.load.changed.notified(), if wants_ends => {}
        }
        Ok(())
    }

    /// How many more messages to read or claim now: one per send slot free
    /// or about to free (its send ends within the read-ahead horizon), less
    /// those already waiting for one or asked for by reads on the wire.
    fn read_budget(&self, reads: &Reads) -> usize {
        let asked = reads.asked();
        self.gateway
            .load
            .wanted(self.settings.concurrency)
            .saturating_sub(asked)
    }

    /// Sends a read for as many new messages as `hold` can take, waiting up to
    /// `block` for the first, on the reader connection (opened if needed).
    /// Sends nothing if the connection could not be opened (after backing off).
    async fn start_read(
        &self,
        hold: OwnedSemaphorePermit,
        block: Duration,
        reads: &mut Reads,
        stop: &CancellationToken,
    ) -> Result<(), StoreError> {
        let conn = match &mut reads.reader {
            Some(conn) => conn,
            None => match self.store.read_connection(MAX_BLOCK).await {
                Ok(conn) => reads.reader.insert(conn),
                Err(err) => {
                    return self
                        .wait_after_read_error(err, &mut reads.retry, stop)
                        .await;
                }
            },
        };
        let reply = self.store.read_new(
            conn,
            &self.settings.name,
            hold.num_permits(),
            block.as_millis() as u64,
        );
        reads.push(PendingRead { hold, reply });
        Ok(())
    }

    /// Takes a read's reply: its messages join the ready queue. After an
    /// error, drops the connection (it may be broken) and backs off.
    async fn take_read(
        &mut self,
        mut hold: OwnedSemaphorePermit,
        reply: Result<Vec<StreamEntry>, StoreError>,
        reads: &mut Reads,
        stop: &CancellationToken,
    ) -> Result<(), StoreError> {
        match reply {
            Ok(entries) => {
                reads.retry.succeeded();
                self.totals.read += entries.len() as u64;
                self.progress.took(entries.len() as u64);
                for entry in entries {
                    self.read_ahead(entry, &mut hold);
                }
                Ok(())
            }
            Err(err) => {
                reads.reader = None;
                self.wait_after_read_error(err, &mut reads.retry, stop)
                    .await
            }
        }
    }

    /// Takes a message that was read or claimed, with one of `hold`'s slots:
    /// checks it and draws its attempt now, so that starting it when a send
    /// slot frees costs next to nothing. A malformed message, or one whose
    /// send takes no time, has its result at once; the others wait in the
    /// ready queue.
    pub(super) fn read_ahead(&mut self, entry: StreamEntry, hold: &mut OwnedSemaphorePermit) {
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

    /// Takes up to `most` free hold slots without waiting; `None` if none is
    /// free. Only this task takes slots, so what is free now stays free.
    pub(super) fn try_free_hold(&self, most: usize) -> Option<OwnedSemaphorePermit> {
        let free = self.hold_slots.available_permits().min(most) as u32;
        if free == 0 {
            return None;
        }
        Arc::clone(&self.hold_slots)
            .try_acquire_many_owned(free)
            .ok()
    }

    /// Races `work` against `stop`: `None` if stopped first.
    pub(super) async fn until_stopped<T>(
        &self,
        stop: &CancellationToken,
        work: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<Option<T>, StoreError> {
        tokio::select! {
            result = work => result.map(Some),
            () = stop.cancelled() => Ok(None),
        }
    }

    /// After a failed read: waits as the retry policy says, or until `stop`.
    /// Lost or damaged queue state and other lasting errors end the sender
    /// (a missing stream or group is diagnosed, never re-created).
    async fn wait_after_read_error(
        &self,
        err: StoreError,
        retry: &mut Retry<'_>,
        stop: &CancellationToken,
    ) -> Result<(), StoreError> {
        tokio::select! {
            // First, so an error that ends the sender is returned even when
            // `stop` has fired.
            biased;
            waited = self.store.wait_to_retry(retry, err) => waited,
            () = stop.cancelled() => Ok(()),
        }
    }
}
