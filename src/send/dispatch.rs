//! The dispatcher: takes messages into free concurrency slots (first the
//! sender's own pending work, then stale work of others and new messages) and
//! starts a simulated send for each.

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
use crate::store::{Backoff, Outcome, ReportItem, Store, StoreError, StreamEntry};

/// Longest a read blocks, so the loop checks for work to reclaim and for
/// shutdown at least this often.
const MAX_BLOCK: Duration = Duration::from_secs(1);
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

/// The dispatcher's state.
pub(super) struct Dispatcher {
    pub store: Store,
    pub settings: SendSettings,
    pub simulator: Simulator,
    pub permits: Arc<Semaphore>,
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
        let mut next_reclaim = Instant::now();
        let mut reclaim_cursor: Option<String> = None;
        let mut reader: Option<MultiplexedConnection> = None;
        let mut read_backoff = Backoff::default();
        loop {
            let Some(mut slots) = self.free_slots(stop).await else {
                return Ok(());
            };
            if Instant::now() >= next_reclaim {
                let wanted = slots.num_permits();
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
                    return Ok(());
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
                if slots.num_permits() == 0 {
                    continue;
                }
            }
            let block = next_reclaim
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(1), MAX_BLOCK);
            let conn = match reader.as_mut() {
                Some(conn) => conn,
                None => match self.store.dedicated_connection(MAX_BLOCK).await {
                    Ok(conn) => reader.insert(conn),
                    Err(err) => {
                        self.wait_after_read_error(err, &mut read_backoff, stop)
                            .await?;
                        continue;
                    }
                },
            };
            let count = slots.num_permits();
            match self
                .store
                .read_new(conn, &self.settings.name, count, block.as_millis() as u64)
                .await
            {
                Ok(entries) => {
                    read_backoff = Backoff::default();
                    self.totals.read += entries.len() as u64;
                    for entry in entries {
                        self.dispatch(entry, &mut slots);
                    }
                }
                Err(err) => {
                    // The connection may be broken: open a fresh one next time.
                    reader = None;
                    self.wait_after_read_error(err, &mut read_backoff, stop)
                        .await?;
                }
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
            let wanted = slots.num_permits();
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
    async fn free_slots(&self, stop: &CancellationToken) -> Option<OwnedSemaphorePermit> {
        let mut slots = tokio::select! {
            permit = Arc::clone(&self.permits).acquire_owned() => permit.ok()?,
            () = stop.cancelled() => return None,
        };
        let more = self.permits.available_permits();
        if more > 0 {
            if let Ok(extra) = Arc::clone(&self.permits).try_acquire_many_owned(more as u32) {
                slots.merge(extra);
            }
        }
        Some(slots)
    }

    /// Starts one message in one of `slots`.
    fn dispatch(&mut self, entry: StreamEntry, slots: &mut OwnedSemaphorePermit) {
        let Some(permit) = slots.split(1) else {
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
            let _ = self.results.send(Finished { item, permit });
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
            let _ = self.results.send(Finished { item, permit });
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
            let _ = results.send(Finished { item, permit });
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
