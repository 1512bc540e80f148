//! The producer: generates messages and adds them to the queue's partitions
//! in pipelined, atomic batches, as one run. Each message goes to the
//! partition its routing picks ([`crate::routing`]: by recipient, by one
//! key, round robin, or one partition), so a batch is split into a part per
//! partition (`split.rs`), each written in one transaction on its partition
//! (`writer.rs`). A part whose reply is lost is sent again; each part lands
//! once however often it is sent ([`crate::store::BatchConnection`]), so a
//! Redis hiccup neither loses nor duplicates messages.
//!
//! A run is recorded in partition 0 (count, seed, batch size, and the
//! partitions it routes over and how, fixed for its life even if the queue
//! grows) and held by a liveness lease while its producer writes it. A
//! producer killed mid-run leaves a run that died: the monitor stops waiting
//! for it, and `produce --resume RUN` finishes it, generating and routing
//! the same messages from the recorded seed and writing only the parts not
//! yet written. At the end of a run the producer checks that every part of
//! the run is still recorded, so a queue flushed or restarted empty under it
//! is reported, not counted.

mod end;
mod split;
mod writer;

use std::time::{Duration, Instant};

use rand::RngExt;
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::routing::Routing;
use crate::settings::ProduceSettings;
use crate::store::{Producer, RunPlan, RunRoute, Store, StoreError};
use end::{check_parts, expire_parts, keep_lease, ranges, record_end};
use split::{SplitBatch, Written, generate};
use writer::Writers;

/// How long a producer stopped by a signal waits for the outcome of its
/// batches in flight, then to record the run as stopped, then to give its
/// lease back: together under the second a first signal has to stop a
/// process.
const STOP_GRACE: Duration = Duration::from_millis(300);

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
    /// `--partition` named a partition the queue does not have.
    #[error(
        "invalid value '{partition}' for '--partition': the queue has {partitions} \
         partition(s), numbered from 0 to {last}",
        last = partitions - 1
    )]
    NoSuchPartition {
        /// The partition asked for.
        partition: u32,
        /// The queue's partition count.
        partitions: u32,
    },
}

impl ProduceError {
    /// The Redis error behind this one, if any.
    pub fn store_error(&self) -> Option<&StoreError> {
        match self {
            Self::Store(err) => Some(err),
            Self::TakenOver { .. } | Self::NoSuchPartition { .. } => None,
        }
    }

    /// Whether the request itself was wrong (exit code 2), not Redis.
    pub fn is_usage(&self) -> bool {
        matches!(self, Self::NoSuchPartition { .. })
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

/// Refuses `settings` when they route every message to a partition the
/// queue of `store` does not have; before anything is recorded.
pub fn check_routing(store: &Store, settings: &ProduceSettings) -> Result<(), ProduceError> {
    match settings.routing {
        Routing::Partition(partition) if partition >= store.partition_count() => {
            Err(ProduceError::NoSuchPartition {
                partition,
                partitions: store.partition_count(),
            })
        }
        _ => Ok(()),
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
    // The run's record, lease and whole batches live in partition 0.
    let record = &store.partition(0).producer();
    let started = Instant::now();
    let token = format!("{:016x}", rand::rng().random::<u64>());
    let run_id = settings
        .resume
        .clone()
        .or_else(|| settings.run_id.clone())
        .unwrap_or_else(new_run_id);
    let (plan, route, written) = tokio::select! {
        begun = begin(store, settings, &run_id, &token) => begun?,
        // Redis would not record the run yet (away, or out of memory):
        // nothing was written, so a signal stops the producer at once.
        () = shutdown.cancelled() => return Ok(ProduceSummary::not_started(run_id, started)),
    };
    tracing::info!(
        run = run_id,
        count = plan.count,
        seed = plan.seed,
        partitions = route.partitions,
        routing = route.routing.to_record(),
        "producer run started"
    );
    let already_written = written.messages(&plan);
    let lost_lease = CancellationToken::new();
    let keeper = tokio::spawn(keep_lease(
        record.clone(),
        run_id.clone(),
        token.clone(),
        settings.lease,
        lost_lease.clone(),
    ));
    let producers: Vec<Producer> = (0..route.partitions)
        .map(|p| store.partition(p).producer())
        .collect();
    let run = Run {
        id: &run_id,
        plan: &plan,
        route: &route,
        producers: &producers,
    };
    let outcome = write_run(&run, written, shutdown, &lost_lease).await;
    keeper.abort();
    let (count, interrupted, parts_on) = outcome?;
    if let Some(parts_on) = parts_on {
        check_parts(&run, &parts_on).await?;
    }
    let missing = record_end(record, &run_id, &token, &plan, interrupted).await?;
    if !missing.is_empty() {
        return Err(ProduceError::Store(StoreError::Lost(format!(
            "producer run {run_id}: batches {} of {} are no longer recorded: Redis lost writes \
             it had acknowledged (flushed, or restarted without its data)",
            ranges(&missing),
            plan.batches()
        ))));
    }
    if !interrupted {
        expire_parts(&run).await;
    }
    Ok(ProduceSummary {
        already_written,
        run_id,
        count,
        elapsed: started.elapsed(),
        interrupted,
        started: true,
    })
}

/// A run being written: what the writing steps share.
struct Run<'a> {
    id: &'a str,
    plan: &'a RunPlan,
    route: &'a RunRoute,
    /// The handles of the route's partitions, in order.
    producers: &'a [Producer],
}

/// Starts the new run `run_id`, routed over the queue's partitions now, or
/// takes over the one to resume, routed as recorded: its plan, route, and
/// what it had written.
async fn begin(
    store: &Store,
    settings: &ProduceSettings,
    run_id: &str,
    token: &str,
) -> Result<(RunPlan, RunRoute, Written), ProduceError> {
    let record = store.partition(0).producer();
    if settings.resume.is_some() {
        let (plan, route) = record
            .retrying("resume the producer run", || {
                record.resume_run(run_id, token, settings.lease)
            })
            .await?;
        let mut written = Written::default();
        for partition in 0..route.partitions {
            let producer = store.partition(partition).producer();
            let marks = producer
                .retrying("read the run's written batches", || {
                    producer.written_batches(run_id)
                })
                .await?;
            // Partition 0's marks are the whole batches; it has no parts.
            if partition == 0 {
                written.whole = marks;
                written.parts.push(Default::default());
            } else {
                written.parts.push(marks);
            }
        }
        return Ok((plan, route, written));
    }
    let route = RunRoute {
        partitions: store.partition_count(),
        routing: settings.routing.clone(),
    };
    check_routing(store, settings)?;
    let plan = RunPlan {
        count: settings.count,
        seed: settings.seed.unwrap_or_else(|| rand::rng().random()),
        batch: settings.batch as u64,
    };
    record
        .retrying("record the producer run", || {
            record.start_run(run_id, &plan, &route, token, settings.lease)
        })
        .await?;
    Ok((plan, route, Written::default()))
}

/// Writes the run's parts not in `written`. Returns the messages written,
/// whether `shutdown` stopped it early, and, when every batch was
/// generated, how many batches have a part on each partition.
async fn write_run(
    run: &Run<'_>,
    written: Written,
    shutdown: &CancellationToken,
    lost_lease: &CancellationToken,
) -> Result<(u64, bool, Option<Vec<u64>>), ProduceError> {
    let mut writers = tokio::select! {
        writers = Writers::connect(run.producers) => writers?,
        () = shutdown.cancelled() => return Ok((0, true, None)),
    };
    let (mut batches, generating) = generate(
        run.producers.to_vec(),
        run.plan,
        run.route,
        written,
        run.id.to_owned(),
    );
    let interrupted = push_all(&mut writers, &mut batches, shutdown, lost_lease, run.id).await?;
    // Stops the generator if it is ahead, and lets a panic there surface
    // instead of passing for the end of the run.
    drop(batches);
    let parts_on = match generating.await {
        Ok(parts_on) => Some(parts_on),
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(_) => None,
    };
    if !interrupted {
        writers.finish().await?;
        return Ok((writers.written, false, parts_on));
    }
    if tokio::time::timeout(STOP_GRACE, writers.finish())
        .await
        .is_err()
    {
        tracing::warn!(
            run = run.id,
            "stopping with batches whose outcome is unknown; the run's record tells which landed"
        );
    }
    Ok((writers.written, true, None))
}

/// Writes the batches of `batches` in order until it ends (false) or
/// `shutdown` fires (true). Fails if another producer took the run over.
async fn push_all(
    writers: &mut Writers,
    batches: &mut mpsc::Receiver<SplitBatch>,
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
        // for Redis (away, or full): a batch in doubt is no harm, its marks
        // in the run's record say which of its parts landed.
        let batch = tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(true),
            batch = batches.recv() => match batch {
                None => return Ok(false),
                Some(batch) => batch,
            },
        };
        tokio::select! {
            pushed = writers.push(batch) => pushed?,
            () = shutdown.cancelled() => return Ok(true),
        }
    }
}
