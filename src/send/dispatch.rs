//! The dispatcher: takes messages into free concurrency slots (first the
//! sender's own pending work, then stale work of others and new messages) and
//! starts a simulated send for each.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::flush::{Finished, InFlight};
use super::simulate::Simulator;
use crate::message::MessageRef;
use crate::settings::SendSettings;
use crate::store::{Backoff, Outcome, Queued, ReportItem, Store, StoreError, StreamEntry};

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

/// A read sent to Redis and the slots its messages will take.
struct PendingRead {
    slots: Slots,
    reply: Queued<Vec<StreamEntry>>,
}

/// Free capacity taken for a read or claim: as many send slots as hold slots.
struct Slots {
    send: OwnedSemaphorePermit,
    hold: OwnedSemaphorePermit,
}

impl Slots {
    /// How many messages these slots can take.
    fn count(&self) -> usize {
        self.send.num_permits().min(self.hold.num_permits())
    }

    /// At most `n` of these slots, split off; the rest are freed.
    fn take(mut self, n: usize) -> Self {
        let n = n.min(self.count());
        match (self.send.split(n), self.hold.split(n)) {
            (Some(send), Some(hold)) => Self { send, hold },
            // Never happens: both hold at least `n`.
            _ => self,
        }
    }

    /// Adds `other`'s slots to these.
    fn merge(&mut self, other: Self) {
        self.send.merge(other.send);
        self.hold.merge(other.hold);
    }

    /// A send slot and a hold slot for one message.
    fn take_one(&mut self) -> Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
        Some((self.send.split(1)?, self.hold.split(1)?))
    }
}

/// The dispatcher's state.
pub(super) struct Dispatcher {
    pub store: Store,
    pub settings: SendSettings,
    pub simulator: Simulator,
    /// One per simulated send in progress: the concurrency.
    pub send_slots: Arc<Semaphore>,
    /// One per message held, from its read until its result is written.
    pub hold_slots: Arc<Semaphore>,
    pub in_flight: InFlight,
    pub results: mpsc::UnboundedSender<Finished>,
    pub sends: TaskTracker,
    pub abort_sends: CancellationToken,
    pub totals: DispatchTotals,
}

impl Dispatcher {
    /// Runs until `stop` fires. Only non-transient Redis errors end it early.
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
        let mut reader: Option<MultiplexedConnection> = None;
        let mut read_backoff = Backoff::default();
        let mut reads: VecDeque<PendingRead> = VecDeque::with_capacity(READS_IN_FLIGHT);
        loop {
            if stop.is_cancelled() {
                // Entries of reads already sent are this sender's now: send
                // them with the rest of the in-flight work.
                while let Some(read) = reads.pop_front() {
                    self.finish_read(read, &mut reader, &mut read_backoff, stop)
                        .await?;
                }
                return Ok(());
            }
            // Wait for a free slot only when no read is out: otherwise its
            // reply comes first.
            let free = if reads.is_empty() {
                self.free_slots(stop).await
            } else {
                self.try_free_slots()
            };
            if let Some(mut slots) = free {
                if Instant::now() >= next_reclaim {
                    let wanted = slots.count();
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
                    if reply.cursor.is_none() {
                        next_reclaim = Instant::now() + reclaim_every;
                    }
                    reclaim_cursor = reply.cursor;
                    self.totals.dead_on_claim += reply.dead;
                    self.totals.reclaimed += reply.claimed.len() as u64;
                    if !reply.claimed.is_empty() {
                        tracing::debug!(count = reply.claimed.len(), "reclaimed stale messages");
                    }
                    for claimed in reply.claimed {
                        self.dispatch(claimed.entry, &mut slots);
                    }
                }
                if slots.count() > 0 && reads.len() < READS_IN_FLIGHT {
                    let block = next_reclaim
                        .saturating_duration_since(Instant::now())
                        .clamp(Duration::from_millis(1), MAX_BLOCK);
                    let slots = slots.take(per_read);
                    if let Some(read) = self
                        .start_read(slots, block, &mut reader, &mut read_backoff, stop)
                        .await?
                    {
                        reads.push_back(read);
                    }
                    // Another read may go out before the oldest is awaited.
                    continue;
                }
            }
            if let Some(read) = reads.pop_front() {
                self.finish_read(read, &mut reader, &mut read_backoff, stop)
                    .await?;
            }
        }
    }

    /// Sends a read for as many new messages as `slots` can take, waiting up to
    /// `block` for the first, on the reader connection (opened if needed).
    /// `None` if the connection could not be opened (after backing off).
    async fn start_read(
        &self,
        slots: Slots,
        block: Duration,
        reader: &mut Option<MultiplexedConnection>,
        backoff: &mut Backoff,
        stop: &CancellationToken,
    ) -> Result<Option<PendingRead>, StoreError> {
        let conn = match reader {
            Some(conn) => conn,
            None => match self.store.dedicated_connection(MAX_BLOCK).await {
                Ok(conn) => reader.insert(conn),
                Err(err) => {
                    self.wait_after_read_error(err, backoff, stop).await?;
                    return Ok(None);
                }
            },
        };
        let reply = Queued::start(self.store.read_new(
            conn,
            &self.settings.name,
            slots.count(),
            block.as_millis() as u64,
        ))
        .await;
        Ok(Some(PendingRead { slots, reply }))
    }

    /// Waits for a read's reply and starts its messages; after an error, drops
    /// the connection (it may be broken) and backs off.
    async fn finish_read(
        &mut self,
        read: PendingRead,
        reader: &mut Option<MultiplexedConnection>,
        backoff: &mut Backoff,
        stop: &CancellationToken,
    ) -> Result<(), StoreError> {
        let PendingRead { mut slots, reply } = read;
        match reply.reply().await {
            Ok(entries) => {
                *backoff = Backoff::default();
                self.totals.read += entries.len() as u64;
                for entry in entries {
                    self.dispatch(entry, &mut slots);
                }
                Ok(())
            }
            Err(err) => {
                *reader = None;
                self.wait_after_read_error(err, backoff, stop).await
            }
        }
    }

    /// Finishes the messages left pending under this sender's name by an
    /// earlier process of the same name, before reading new ones. Returns false
    /// if `stop` fired.
    async fn recover_own(&mut self, stop: &CancellationToken) -> Result<bool, StoreError> {
        let mut cursor: Option<String> = None;
        loop {
            let Some(mut slots) = self.free_slots(stop).await else {
                return Ok(false);
            };
            let wanted = slots.count();
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
                self.dispatch(claimed.entry, &mut slots);
            }
            match reply.cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(true),
            }
        }
    }

    /// Waits for at least one free slot, then takes every free one.
    async fn free_slots(&self, stop: &CancellationToken) -> Option<Slots> {
        let mut slots = tokio::select! {
            pair = async {
                let send = Arc::clone(&self.send_slots).acquire_owned().await;
                let hold = Arc::clone(&self.hold_slots).acquire_owned().await;
                (send, hold)
            } => match pair {
                (Ok(send), Ok(hold)) => Slots { send, hold },
                _ => return None,
            },
            () = stop.cancelled() => return None,
        };
        if let Some(more) = self.try_free_slots() {
            slots.merge(more);
        }
        Some(slots)
    }

    /// Takes every free slot without waiting; `None` if none is free. Only
    /// this task takes slots, so what is free now stays free.
    fn try_free_slots(&self) -> Option<Slots> {
        let free = self
            .send_slots
            .available_permits()
            .min(self.hold_slots.available_permits()) as u32;
        if free == 0 {
            return None;
        }
        let send = Arc::clone(&self.send_slots)
            .try_acquire_many_owned(free)
            .ok()?;
        let hold = Arc::clone(&self.hold_slots)
            .try_acquire_many_owned(free)
            .ok()?;
        Some(Slots { send, hold })
    }

    /// Starts one message in one of `slots`.
    fn dispatch(&mut self, entry: StreamEntry, slots: &mut Slots) {
        let Some((send_slot, hold_slot)) = slots.take_one() else {
            // Never happens: each read or claim asks for at most as many
            // entries as there are slots. Leaving the entry pending is safe.
            tracing::warn!(
                id = entry.id,
                "no free slot for a message; it stays pending"
            );
            return;
        };
        self.in_flight.insert(&entry.id);
        let id = entry.id;
        if let Err(err) = MessageRef::from_fields(&entry.fields) {
            tracing::warn!(id, error = %err, "malformed entry; moving it to the dead stream");
            let item = ReportItem {
                id,
                outcome: Outcome::Malformed,
                send_time_us: 0,
            };
            let _ = self.results.send(Finished { item, hold_slot });
            return;
        }
        let attempt = self.simulator.next_attempt();
        let outcome = if attempt.fails {
            Outcome::Failed
        } else {
            Outcome::Sent
        };
        if attempt.delay.is_zero() {
            let item = ReportItem {
                id,
                outcome,
                send_time_us: 0,
            };
            let _ = self.results.send(Finished { item, hold_slot });
            return;
        }
        let results = self.results.clone();
        let abort = self.abort_sends.clone();
        self.sends.spawn(async move {
            let started = Instant::now();
            tokio::select! {
                () = tokio::time::sleep(attempt.delay) => {}
                // Past the shutdown deadline: drop it; it stays pending and is
                // delivered again (to a restart of this name, or to another sender).
                () = abort.cancelled() => return,
            }
            let item = ReportItem {
                id,
                outcome,
                send_time_us: started.elapsed().as_micros() as u64,
            };
            // The send is over: its slot takes the next message while the
            // result waits to be written.
            drop(send_slot);
            let _ = results.send(Finished { item, hold_slot });
        });
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

    async fn wait_after_read_error(
        &self,
        err: StoreError,
        backoff: &mut Backoff,
        stop: &CancellationToken,
    ) -> Result<(), StoreError> {
        if err.needs_prepare() {
            tracing::warn!(error = %err, "stream or group missing; applying migrations");
            if let Err(prepare_err) = self.store.prepare().await {
                tracing::warn!(error = %prepare_err, "could not apply migrations");
            }
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
