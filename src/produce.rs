//! The producer: generates messages and adds them to the stream in pipelined,
//! atomic batches. A batch whose reply is lost is sent again; each batch lands
//! once however often it is sent ([`crate::store::BatchConnection`]), so a
//! Redis hiccup neither loses nor duplicates messages.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::RngExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::generator::MessageGenerator;
use crate::message::Message;
use crate::settings::ProduceSettings;
use crate::store::{
    BatchConnection, BatchWrite, CommittedBatch, PreparedBatch, StartedBatch, Store, StoreError,
};

/// Batches generated ahead of the writer: enough that the next is always
/// ready when the writer turns around, few enough to bound memory.
const GENERATED_AHEAD: usize = 2;

/// Committed batches whose outcome is still to come. The replies come in
/// order, so this only bounds memory; two keep the socket busy.
const COMMITTED_IN_FLIGHT: usize = 2;

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
    let generator = match settings.seed {
        Some(seed) => MessageGenerator::seeded(seed),
        None => MessageGenerator::from_entropy(),
    };
    store
        .retrying("record the producer start", || {
            store.add_to_stat("producer_runs_started", 1)
        })
        .await?;
    let mut writer = Writer::connect(store).await?;
    let (mut batches, generating) = generate(store.clone(), generator, settings, run_id);
    let mut interrupted = false;
    loop {
        if shutdown.is_cancelled() {
            interrupted = true;
            break;
        }
        let Some(prepared) = batches.recv().await else {
            break;
        };
        writer.push(store, prepared).await?;
    }
    // Stops the generator if it is ahead, and lets a panic there surface
    // instead of passing for the end of the run.
    drop(batches);
    if let Err(err) = generating.await {
        if err.is_panic() {
            std::panic::resume_unwind(err.into_panic());
        }
    }
    let written = writer.finish(store).await?;
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

/// Generates and encodes the run's batches, in order, on a thread of its own,
/// up to [`GENERATED_AHEAD`] ahead of the writer; stops when the receiver is
/// dropped. Generating in the writer's task held each batch's `EXEC` until
/// the next batch was generated, and Redis waited for it whenever that took
/// longer than Redis's work on the batch before (without persistence, produce
/// was 0.74-0.85 of the ceiling in interleaved bench runs, and is 0.84-0.86).
fn generate(
    store: Store,
    mut generator: MessageGenerator,
    settings: &ProduceSettings,
    run_id: String,
) -> (mpsc::Receiver<PreparedBatch>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(GENERATED_AHEAD);
    let count = settings.count;
    let batch_size = settings.batch as u64;
    let handle = tokio::task::spawn_blocking(move || {
        let mut generated: u64 = 0;
        let mut seq: u64 = 0;
        while generated < count {
            let size = (count - generated).min(batch_size);
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let batch: Vec<Message> = (0..size).map(|_| generator.next_message(now_ms)).collect();
            seq += 1;
            if tx
                .blocking_send(store.prepare_batch(&run_id, seq, &batch))
                .is_err()
            {
                return;
            }
            generated += size;
        }
    });
    (rx, handle)
}

/// Writes batches in order on one connection. Each batch is started (check
/// and queued commands sent) as soon as the one before it is committed: so
/// Redis always has the next batch to queue while the producer turns around,
/// and one connection keeps the batches in order, so the same seed gives the
/// same stream.
struct Writer {
    conn: BatchConnection,
    /// The newest batch, started on `conn`, not yet committed.
    started: Option<(PreparedBatch, StartedBatch)>,
    /// Committed batches, oldest first, their outcomes still to come.
    committed: VecDeque<(PreparedBatch, CommittedBatch)>,
    /// Messages written so far.
    written: u64,
}

impl Writer {
    async fn connect(store: &Store) -> Result<Self, StoreError> {
        let conn = store
            .retrying("connect the producer", || store.batch_connection())
            .await?;
        Ok(Self {
            conn,
            started: None,
            committed: VecDeque::with_capacity(COMMITTED_IN_FLIGHT + 1),
            written: 0,
        })
    }

    /// Commits the batch started before and starts `batch`.
    async fn push(&mut self, store: &Store, batch: PreparedBatch) -> Result<(), StoreError> {
        self.commit_started(store).await?;
        self.started = Some((batch.clone(), self.conn.start(&batch)));
        while self.committed.len() > COMMITTED_IN_FLIGHT {
            self.settle_oldest(store).await?;
        }
        Ok(())
    }

    /// Commits the started batch, and waits for every outcome. Returns the
    /// messages written.
    async fn finish(mut self, store: &Store) -> Result<u64, StoreError> {
        self.commit_started(store).await?;
        while !self.committed.is_empty() {
            self.settle_oldest(store).await?;
        }
        Ok(self.written)
    }

    async fn commit_started(&mut self, store: &Store) -> Result<(), StoreError> {
        let Some((batch, started)) = self.started.take() else {
            return Ok(());
        };
        match started.commit().await {
            Ok(committed) => self.committed.push_back((batch, committed)),
            Err(err) => self.recover(store, batch, err).await?,
        }
        Ok(())
    }

    async fn settle_oldest(&mut self, store: &Store) -> Result<(), StoreError> {
        let Some((batch, committed)) = self.committed.pop_front() else {
            return Ok(());
        };
        match committed.outcome().await {
            Ok(_) => self.written += batch.len() as u64,
            Err(err) => self.recover(store, batch, err).await?,
        }
        Ok(())
    }

    /// After `batch` failed with `err`: writes it on a fresh connection, then
    /// moves to a new connection (the old one may hold an open transaction),
    /// starting there the batch started on the old one but never committed
    /// (its `EXEC` was not sent, so it cannot land from there).
    async fn recover(
        &mut self,
        store: &Store,
        batch: PreparedBatch,
        err: StoreError,
    ) -> Result<(), StoreError> {
        retry(store, &batch, err).await?;
        self.written += batch.len() as u64;
        self.conn = store
            .retrying("reconnect the producer", || store.batch_connection())
            .await?;
        if let Some((pending, _)) = self.started.take() {
            let restarted = self.conn.start(&pending);
            self.started = Some((pending, restarted));
        }
        Ok(())
    }
}

/// Sends a batch whose write failed with `err` again until Redis has it. The
/// first try may still be queued in Redis behind the timed-out reply and run
/// later; then one of the two lands and the other adds nothing. A batch
/// retried here may land after batches sent later, if those succeeded where it
/// failed.
async fn retry(store: &Store, batch: &PreparedBatch, err: StoreError) -> Result<(), StoreError> {
    if !err.is_transient() && !err.needs_prepare() {
        return Err(err);
    }
    tracing::warn!(error = %err, seq = batch.seq(), "writing a batch failed; sending it again");
    let outcome = store
        .retrying("write a batch again", || store.write_batch(batch))
        .await?;
    if outcome == BatchWrite::AlreadyWritten {
        tracing::info!(
            seq = batch.seq(),
            "the batch had landed before the failure; not added again"
        );
    }
    Ok(())
}
