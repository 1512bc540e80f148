//! The producer: generates messages and adds them to the stream in pipelined,
//! atomic batches. A batch whose reply is lost is sent again; Redis adds each
//! batch once (`sms_produce`), so a Redis hiccup neither loses nor duplicates
//! messages.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::RngExt;
use redis::aio::MultiplexedConnection;
use tokio_util::sync::CancellationToken;

use crate::generator::MessageGenerator;
use crate::message::Message;
use crate::settings::ProduceSettings;
use crate::store::{BatchWrite, PreparedBatch, Queued, Store, StoreError};

/// Batches written at once. Enough to keep Redis busy while the producer
/// generates and encodes the next one; more only adds memory.
const WRITES_IN_FLIGHT: usize = 4;

/// What a producer run did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProduceSummary {
    /// Messages written.
    pub count: u64,
    /// Time taken.
    pub elapsed: Duration,
    /// Whether shutdown stopped the run early.
    pub interrupted: bool,
}

impl ProduceSummary {
    /// Messages per second.
    pub fn rate_per_s(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Produces `settings.count` messages, stopping early (between batches) if
/// `shutdown` fires. Expects [`Store::prepare`] to have run.
pub async fn run(
    store: &Store,
    settings: &ProduceSettings,
    shutdown: &CancellationToken,
) -> Result<ProduceSummary, StoreError> {
    let started = Instant::now();
    let run_id = format!("{:016x}", rand::rng().random::<u64>());
    let mut generator = match settings.seed {
        Some(seed) => MessageGenerator::seeded(seed),
        None => MessageGenerator::from_entropy(),
    };
    store
        .retrying("record the producer start", || {
            store.add_to_stat("producer_runs_started", 1)
        })
        .await?;
    let mut conn = store
        .retrying("connect the producer", || {
            store.dedicated_connection(Duration::ZERO)
        })
        .await?;
    let mut generated: u64 = 0;
    let mut written: u64 = 0;
    let mut seq: u64 = 0;
    let mut interrupted = false;
    // Several batches are on the wire at once, on one connection, so Redis
    // never waits for the producer; the next batch is generated meanwhile.
    // They are queued in order and one connection keeps that order, so the
    // same seed gives the same stream.
    let mut in_flight: VecDeque<Write> = VecDeque::with_capacity(WRITES_IN_FLIGHT);
    while generated < settings.count {
        if shutdown.is_cancelled() {
            interrupted = true;
            break;
        }
        let size = (settings.count - generated).min(settings.batch as u64);
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let batch: Vec<Message> = (0..size).map(|_| generator.next_message(now_ms)).collect();
        seq += 1;
        let prepared = store.prepare_batch(&run_id, seq, &batch);
        drop(batch);
        in_flight.push_back(Write::start(store, &conn, prepared).await);
        generated += size;
        while in_flight.len() >= WRITES_IN_FLIGHT {
            if let Some(write) = in_flight.pop_front() {
                written += write.finish(store, &mut conn).await?;
            }
        }
    }
    while let Some(write) = in_flight.pop_front() {
        written += write.finish(store, &mut conn).await?;
    }
    // Recorded on a clean stop too: this run will add nothing more.
    store
        .retrying("record the producer finish", || {
            store.add_to_stat("producer_runs_finished", 1)
        })
        .await?;
    Ok(ProduceSummary {
        count: written,
        elapsed: started.elapsed(),
        interrupted,
    })
}

/// One batch on the wire.
struct Write {
    batch: PreparedBatch,
    reply: Queued<BatchWrite>,
}

impl Write {
    /// Queues `batch` on `conn` now, before any batch started after it.
    async fn start(store: &Store, conn: &MultiplexedConnection, batch: PreparedBatch) -> Self {
        let reply = Queued::start(store.send_batch(conn, &batch)).await;
        Self { batch, reply }
    }

    /// Waits for the reply; after a failure, sends the batch again until
    /// Redis has it and opens a fresh connection for the batches that follow.
    /// Returns its size.
    async fn finish(
        self,
        store: &Store,
        conn: &mut MultiplexedConnection,
    ) -> Result<u64, StoreError> {
        if let Err(err) = self.reply.reply().await {
            retry(store, &self.batch, err).await?;
            *conn = store
                .retrying("reconnect the producer", || {
                    store.dedicated_connection(Duration::ZERO)
                })
                .await?;
        }
        Ok(self.batch.len() as u64)
    }
}

/// Sends a batch whose write failed with `err` again until Redis has it. The
/// first try may still be queued in Redis behind the timed-out reply and land
/// later; `sms_produce` then finds the batch marked and adds nothing. A batch
/// retried here may land after batches sent later, if those succeeded where it
/// failed.
async fn retry(store: &Store, batch: &PreparedBatch, err: StoreError) -> Result<(), StoreError> {
    if !err.is_transient() && !err.needs_prepare() {
        return Err(err);
    }
    tracing::warn!(error = %err, seq = batch.seq(), "writing a batch failed; sending it again");
    let outcome = store
        .retrying("write a batch again", || store.rewrite_batch(batch))
        .await?;
    if outcome == BatchWrite::AlreadyWritten {
        tracing::info!(
            seq = batch.seq(),
            "the batch had landed before the failure; not added again"
        );
    }
    Ok(())
}
