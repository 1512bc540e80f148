//! The producer: generates messages and adds them to the stream in pipelined,
//! atomic batches. A batch whose reply is lost is checked before it is written
//! again, so a Redis hiccup neither loses nor duplicates messages.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::RngExt;
use tokio_util::sync::CancellationToken;

use crate::generator::MessageGenerator;
use crate::message::Message;
use crate::settings::ProduceSettings;
use crate::store::{Backoff, Store, StoreError};

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
    let mut generated: u64 = 0;
    let mut written: u64 = 0;
    let mut seq: u64 = 0;
    let mut interrupted = false;
    // The next batch is generated while the previous one is being written, so
    // Redis and the generator work at the same time. Only one write is in
    // flight: batches written concurrently could reach Redis out of order, and
    // the same seed must give the same stream.
    let mut in_flight = tokio::task::JoinSet::new();
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
        if !in_flight.is_empty() {
            written += joined(in_flight.join_next().await)?;
        }
        seq += 1;
        let (store, run_id) = (store.clone(), run_id.clone());
        in_flight.spawn(async move {
            write_once(&store, &run_id, seq, &batch)
                .await
                .map(|()| size)
        });
        generated += size;
    }
    while let Some(done) = in_flight.join_next().await {
        written += joined(Some(done))?;
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

/// The size of a finished batch write, or its error.
fn joined(
    done: Option<Result<Result<u64, StoreError>, tokio::task::JoinError>>,
) -> Result<u64, StoreError> {
    match done {
        Some(Ok(result)) => result,
        Some(Err(join_err)) => Err(StoreError::Reply {
            command: "XADD batch",
            detail: format!("batch writer failed: {join_err}"),
        }),
        None => Ok(0),
    }
}

/// Writes one batch exactly once: after a failure, asks Redis whether the
/// batch landed before writing it again.
async fn write_once(
    store: &Store,
    run_id: &str,
    seq: u64,
    batch: &[Message],
) -> Result<(), StoreError> {
    let mut backoff = Backoff::default();
    loop {
        let err = match store.write_batch(run_id, seq, batch).await {
            Ok(()) => return Ok(()),
            Err(err) => err,
        };
        if !err.is_transient() && !err.needs_prepare() {
            return Err(err);
        }
        let wait = backoff.next_wait();
        tracing::warn!(error = %err, retry_in_ms = wait.as_millis() as u64, "writing a batch failed; retrying");
        tokio::time::sleep(wait).await;
        if store
            .retrying("check whether the batch landed", || {
                store.batch_written(run_id, seq)
            })
            .await?
        {
            return Ok(());
        }
    }
}
