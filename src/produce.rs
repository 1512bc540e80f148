//! The producer: generates messages and adds them to the stream in pipelined,
//! atomic batches, as one run. A batch whose reply is lost is sent again;
//! each batch lands once however often it is sent
//! ([`crate::store::BatchConnection`]), so a Redis hiccup neither loses nor
//! duplicates messages.
//!
//! A run is recorded in Redis (count, seed, batch size) and held by a
//! liveness lease while its producer writes it. A producer killed mid-run
//! leaves a run that died: the monitor stops waiting for it, and
//! `produce --resume RUN` finishes it, generating the same messages from the
//! recorded seed and writing only the batches not yet written. At the end of
//! a run the producer checks that every batch of the run is still recorded,
//! so a queue flushed or restarted empty under it is reported, not counted.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::RngExt;
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::generator::MessageGenerator;
use crate::message::Message;
use crate::settings::ProduceSettings;
use crate::store::{
    BatchConnection, BatchWrite, CommittedBatch, NameHold, PreparedBatch, Producer, Retry, RunEnd,
    RunPlan, StartedBatch, Store, StoreError,
};

/// Batches generated ahead of the writer: enough that the next is always
/// ready when the writer turns around, few enough to bound memory.
const GENERATED_AHEAD: usize = 2;

/// How long a producer stopped by a signal waits for the outcome of its
/// batches in flight, then to record the run as stopped, then to give its
/// lease back: together under the second a first signal has to stop a
/// process.
const STOP_GRACE: Duration = Duration::from_millis(300);

/// Committed batches whose outcome is still to come. The replies come in
/// order, so this only bounds memory; two keep the socket busy.
const COMMITTED_IN_FLIGHT: usize = 2;

/// Why a producer stopped with an error.
#[derive(Debug, Error)]
pub enum ProduceError {
    /// Redis failed in a way retrying cannot fix, or the queue's state is
    /// lost or damaged.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another producer took the run over while this one was paused longer
    /// than its lease; this one stopped, and the other finishes the run.
    #[error(
        "producer run {run} was taken over by another producer (this one was paused longer than \
         its lease); stopped"
    )]
    TakenOver {
        /// The run.
        run: String,
    },
}

impl ProduceError {
    /// The Redis error behind this one, if any.
    pub fn store_error(&self) -> Option<&StoreError> {
        match self {
            Self::Store(err) => Some(err),
            Self::TakenOver { .. } => None,
        }
    }
}

/// A new run's id: 16 random hex digits.
pub fn new_run_id() -> String {
    format!("{:016x}", rand::rng().random::<u64>())
}

/// What a producer run did.
#[derive(Debug, Clone, PartialEq)]
pub struct ProduceSummary {
    /// The run's id.
    pub run_id: String,
    /// Messages written by this process.
    pub count: u64,
    /// Messages of the run written before (by the producer of a resumed run).
    pub already_written: u64,
    /// Time taken.
    pub elapsed: Duration,
    /// Whether shutdown stopped the run early.
    pub interrupted: bool,
    /// Whether the run started (recorded, or taken over to resume): false
    /// when shutdown came while Redis would not record it yet (away, or out
    /// of memory), and nothing was written.
    pub started: bool,
}

impl ProduceSummary {
    /// A run stopped by a signal before Redis recorded it: nothing written.
    fn not_started(run_id: String, started: Instant) -> Self {
        Self {
            run_id,
            count: 0,
            already_written: 0,
            elapsed: started.elapsed(),
            interrupted: true,
            started: false,
        }
    }

    /// Messages per second.
    pub fn rate_per_s(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Produces one run: `settings.count` new messages, or what a run being
/// resumed still lacks. Stops early (between batches) if `shutdown` fires,
/// recording the run as stopped, or at once while the run is not recorded
/// yet. Expects a store opened on the queue ([`Store::open`]).
pub async fn run(
    store: &Store,
    settings: &ProduceSettings,
    shutdown: &CancellationToken,
) -> Result<ProduceSummary, ProduceError> {
    let store = &store.producer();
    let started = Instant::now();
    let token = format!("{:016x}", rand::rng().random::<u64>());
    let run_id = settings
        .resume
        .clone()
        .or_else(|| settings.run_id.clone())
        .unwrap_or_else(new_run_id);
    let (plan, skip) = tokio::select! {
        begun = begin(store, settings, &run_id, &token) => begun?,
        // Redis would not record the run yet (away, or out of memory):
        // nothing was written, so a signal stops the producer at once.
        () = shutdown.cancelled() => return Ok(ProduceSummary::not_started(run_id, started)),
    };
    tracing::info!(
        run = run_id,
        count = plan.count,
        seed = plan.seed,
        "producer run started"
    );
    let lost_lease = CancellationToken::new();
    let keeper = tokio::spawn(keep_lease(
        store.clone(),
        run_id.clone(),
        token.clone(),
        settings.lease,
        lost_lease.clone(),
    ));
    let outcome = write_run(store, &run_id, &plan, &skip, shutdown, &lost_lease).await;
    keeper.abort();
    let (written, interrupted) = outcome?;
    let missing = record_end(store, &run_id, &token, &plan, interrupted).await?;
    if !missing.is_empty() {
        return Err(ProduceError::Store(StoreError::Lost(format!(
            "producer run {run_id}: batches {} of {} are no longer recorded: Redis lost writes \
             it had acknowledged (flushed, or restarted without its data)",
            ranges(&missing),
            plan.batches()
        ))));
    }
    Ok(ProduceSummary {
        already_written: skip.iter().map(|&seq| batch_len(&plan, seq)).sum(),
        run_id,
        count: written,
        elapsed: started.elapsed(),
        interrupted,
        started: true,
    })
}

/// Records the end of the run (stopped early if `interrupted`, else
/// finished); returns the batches of the run no longer recorded. A stopping
/// producer waits at most [`STOP_GRACE`] for Redis, then gives its lease
/// back and leaves the run to read as died.
async fn record_end(
    store: &Producer,
    run_id: &str,
    token: &str,
    plan: &RunPlan,
    interrupted: bool,
) -> Result<Vec<u64>, StoreError> {
    let end = if interrupted {
        RunEnd::Stopped
    } else {
        RunEnd::Finished
    };
    let record = store.retrying("record the end of the run", || {
        store.end_run(run_id, token, end, plan.batches())
    });
    if !interrupted {
        return record.await;
    }
    // Stopping must not wait on a Redis that is away: unrecorded, the
    // run reads as died once its lease runs out, resumable all the same.
    if let Ok(missing) = tokio::time::timeout(STOP_GRACE, record).await {
        return missing;
    }
    // Given back (allowed at maxmemory too), the lease lets the
    // run read as died, to be resumed, at once.
    let released = store.release_run(run_id, token);
    let _ = tokio::time::timeout(STOP_GRACE, released).await;
    tracing::warn!(
        run = run_id,
        "could not record the run as stopped; it reads as died, and `produce \
         --resume` finishes it"
    );
    Ok(Vec::new())
}

/// Starts the new run `run_id`, or takes over the one to resume: its plan,
/// and the batches already written.
async fn begin(
    store: &Producer,
    settings: &ProduceSettings,
    run_id: &str,
    token: &str,
) -> Result<(RunPlan, HashSet<u64>), StoreError> {
    if settings.resume.is_some() {
        let plan = store
            .retrying("resume the producer run", || {
                store.resume_run(run_id, token, settings.lease)
            })
            .await?;
        let written = store
            .retrying("read the run's written batches", || {
                store.written_batches(run_id)
            })
            .await?;
        return Ok((plan, written));
    }
    let plan = RunPlan {
        count: settings.count,
        seed: settings.seed.unwrap_or_else(|| rand::rng().random()),
        batch: settings.batch as u64,
    };
    store
        .retrying("record the producer run", || {
            store.start_run(run_id, &plan, token, settings.lease)
        })
        .await?;
    Ok((plan, HashSet::new()))
}

/// Writes the run's batches not in `skip`. Returns the messages written and
/// whether `shutdown` stopped it early.
async fn write_run(
    store: &Producer,
    run_id: &str,
    plan: &RunPlan,
    skip: &HashSet<u64>,
    shutdown: &CancellationToken,
    lost_lease: &CancellationToken,
) -> Result<(u64, bool), ProduceError> {
    let mut writer = tokio::select! {
        writer = Writer::connect(store) => writer?,
        () = shutdown.cancelled() => return Ok((0, true)),
    };
    let (mut batches, generating) = generate(store.clone(), plan, skip.clone(), run_id.to_owned());
    let interrupted = writer
        .push_all(store, &mut batches, shutdown, lost_lease, run_id)
        .await?;
    // Stops the generator if it is ahead, and lets a panic there surface
    // instead of passing for the end of the run.
    drop(batches);
    if let Err(err) = generating.await
        && err.is_panic()
    {
        std::panic::resume_unwind(err.into_panic());
    }
    if !interrupted {
        writer.finish(store).await?;
    } else if tokio::time::timeout(STOP_GRACE, writer.finish(store))
        .await
        .is_err()
    {
        tracing::warn!(
            run = run_id,
            "stopping with batches whose outcome is unknown; the run's record tells which landed"
        );
    }
    Ok((writer.written, interrupted))
}

/// Renews the run's lease every third of `ttl`; cancels `lost` if another
/// producer took the run over. Lost or damaged queue state is left for the
/// writes to report.
async fn keep_lease(
    store: Producer,
    run_id: String,
    token: String,
    ttl: Duration,
    lost: CancellationToken,
) {
    let mut tick = tokio::time::interval(ttl / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut retry = Retry::new("renew the run's lease")
        .until_done()
        .every(ttl / 3);
    loop {
        tick.tick().await;
        match store.hold_run(&run_id, &token, ttl).await {
            Ok(NameHold::Held { lapsed: false }) => retry.succeeded(),
            Ok(NameHold::Held { lapsed: true }) => tracing::warn!(
                run = run_id,
                "the run's lease had run out (this producer was paused, or Redis away, for \
                 longer than the lease) and was taken again"
            ),
            Ok(NameHold::HeldByOther(_)) => {
                tracing::error!(
                    run = run_id,
                    "another producer took this run over; stopping"
                );
                lost.cancel();
                return;
            }
            // Lost or damaged queue state is left for the writes to report.
            Err(err) => {
                if let Err(err) = retry.failed(err) {
                    tracing::warn!(run = run_id, error = %err, "could not renew the run's lease");
                }
            }
        }
    }
}

/// Messages in batch `seq` (numbered from 1) of `plan`: the last batch of a
/// run whose count is not a multiple of the batch size is short.
fn batch_len(plan: &RunPlan, seq: u64) -> u64 {
    plan.count
        .saturating_sub(seq.saturating_sub(1).saturating_mul(plan.batch))
        .min(plan.batch)
}

/// `[3, 4, 5, 9]` as `3-5, 9`.
fn ranges(seqs: &[u64]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < seqs.len() {
        let first = seqs[i];
        let mut last = first;
        while i + 1 < seqs.len() && seqs[i + 1] == last + 1 {
            i += 1;
            last = seqs[i];
        }
        out.push(if first == last {
            first.to_string()
        } else {
            format!("{first}-{last}")
        });
        i += 1;
    }
    out.join(", ")
}

/// Generates and encodes the run's batches, in order, on a thread of its own,
/// up to [`GENERATED_AHEAD`] ahead of the writer, leaving out those in
/// `skip`; stops when the receiver is dropped. On the writer's task a
/// batch's `EXEC` would wait until the next batch was generated, and Redis
/// would wait for it whenever that took longer than its work on the batch
/// before.
fn generate(
    store: Producer,
    plan: &RunPlan,
    skip: HashSet<u64>,
    run_id: String,
) -> (mpsc::Receiver<PreparedBatch>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(GENERATED_AHEAD);
    let RunPlan { count, seed, batch } = *plan;
    let handle = tokio::task::spawn_blocking(move || {
        let mut generator = MessageGenerator::seeded(seed);
        let mut generated: u64 = 0;
        let mut seq: u64 = 0;
        while generated < count {
            let size = (count - generated).min(batch);
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let messages: Vec<Message> =
                (0..size).map(|_| generator.next_message(now_ms)).collect();
            seq += 1;
            generated += size;
            // A resumed run draws the batches written before too, so that the
            // generator is where the first producer's was.
            if skip.contains(&seq) {
                continue;
            }
            if tx
                .blocking_send(store.prepare_batch(&run_id, seq, &messages))
                .is_err()
            {
                return;
            }
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
    async fn connect(store: &Producer) -> Result<Self, StoreError> {
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

    /// Writes the batches of `batches` in order until it ends (false) or
    /// `shutdown` fires (true). Fails if another producer took the run over.
    async fn push_all(
        &mut self,
        store: &Producer,
        batches: &mut mpsc::Receiver<PreparedBatch>,
        shutdown: &CancellationToken,
        lost_lease: &CancellationToken,
        run_id: &str,
    ) -> Result<bool, ProduceError> {
        loop {
            if lost_lease.is_cancelled() {
                return Err(ProduceError::TakenOver {
                    run: run_id.to_owned(),
                });
            }
            // A signal stops the run between batches, or while a batch waits
            // for Redis (away, or full): a batch in doubt is no harm, its mark
            // in the run's record says whether it landed.
            let pushed = tokio::select! {
                biased;
                () = shutdown.cancelled() => None,
                prepared = batches.recv() => match prepared {
                    None => return Ok(false),
                    Some(prepared) => Some(prepared),
                },
            };
            let Some(prepared) = pushed else {
                return Ok(true);
            };
            tokio::select! {
                pushed = self.push(store, prepared) => pushed?,
                () = shutdown.cancelled() => {
                    return Ok(true);
                }
            }
        }
    }

    /// Commits the batch started before and starts `batch`.
    async fn push(&mut self, store: &Producer, batch: PreparedBatch) -> Result<(), StoreError> {
        self.commit_started(store).await?;
        self.started = Some((batch.clone(), self.conn.start(&batch)));
        while self.committed.len() > COMMITTED_IN_FLIGHT {
            self.settle_oldest(store).await?;
        }
        Ok(())
    }

    /// Commits the started batch, and waits for every outcome.
    async fn finish(&mut self, store: &Producer) -> Result<(), StoreError> {
        self.commit_started(store).await?;
        while !self.committed.is_empty() {
            self.settle_oldest(store).await?;
        }
        Ok(())
    }

    async fn commit_started(&mut self, store: &Producer) -> Result<(), StoreError> {
        let Some((batch, started)) = self.started.take() else {
            return Ok(());
        };
        match started.commit().await {
            Ok(committed) => self.committed.push_back((batch, committed)),
            Err(err) => self.recover(store, batch, err).await?,
        }
        Ok(())
    }

    async fn settle_oldest(&mut self, store: &Producer) -> Result<(), StoreError> {
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
        store: &Producer,
        batch: PreparedBatch,
        err: StoreError,
    ) -> Result<(), StoreError> {
        write_again(store, &batch, err).await?;
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
async fn write_again(
    store: &Producer,
    batch: &PreparedBatch,
    err: StoreError,
) -> Result<(), StoreError> {
    const WHAT: &str = "write a batch again";
    if !Retry::new(WHAT).retries(&err) {
        return Err(err);
    }
    tracing::warn!(error = %err, seq = batch.seq(), "writing a batch failed; sending it again");
    let outcome = store.retrying(WHAT, || store.write_batch(batch)).await?;
    if outcome == BatchWrite::AlreadyWritten {
        tracing::info!(
            seq = batch.seq(),
            "the batch had landed before the failure; not added again"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{RunPlan, batch_len, ranges};

    #[test]
    fn the_last_batch_of_a_run_may_be_short() {
        let plan = RunPlan {
            count: 25,
            seed: 0,
            batch: 10,
        };
        let lens: Vec<u64> = (1..=4).map(|seq| batch_len(&plan, seq)).collect();
        assert_eq!(lens, [10, 10, 5, 0]);
    }

    #[test]
    fn missing_batches_read_as_ranges() {
        assert_eq!(ranges(&[3, 4, 5, 9, 11, 12]), "3-5, 9, 11-12");
        assert_eq!(ranges(&[7]), "7");
        assert_eq!(ranges(&[]), "");
    }
}
