//! The sender: one member of the consumer group, in every partition of the
//! queue. Each partition is a lane: its own reads and pending-list walk (in
//! the dispatcher, which goes round robin over the lanes) and its own
//! writer; the send slots, the hold slots and the gateway are shared, so a
//! busy partition can use what an idle one leaves. Partitions added to the
//! queue while the sender runs get lanes within seconds.
//!
//! - `name`: the liveness lease on the sender's name;
//! - `dispatch`: reads and claims messages, with two reads on the wire at
//!   once, reading ahead for sends about to end, and draws each attempt;
//! - `gateway`: starts each message read ahead as a send slot frees, and
//!   holds the sends in progress in one timer queue until they end;
//! - `ending`: when the running sends end, which bounds the read-ahead;
//! - [`simulate`]: the simulated send time and failure;
//! - `recover`: takes over pending entries: the sender's own at start, then
//!   stale ones of others;
//! - `in_flight`: the messages held, the reads and report calls on the wire;
//! - `flush`: writes results in batches, two report calls on the wire at once,
//!   and renews in-flight leases;
//! - `summary`: counts progress, logs it every 30 seconds, and words the
//!   summary logged when the sender stops;
//! - `trim`: applies the queue's retention in passing;
//! - `fatal`: stops every task at once when one finds the queue's state lost
//!   or damaged (a flushed Redis, a destroyed group, a tampered counter).
//!
//! Each message takes two slots: a send slot (the concurrency), freed when its
//! send ends, and a hold slot, freed once its result is written (acknowledged
//! or marked for retry). Sends go on while results are written, and a sender
//! never holds more than three times its concurrency in messages.
//!
//! On shutdown the sender stops reading, starts the messages it has read
//! ahead and lets its sends finish until the deadline, writes their results
//! and gives its name back; whatever is unfinished stays pending and is
//! delivered again. While its results cannot be written (Redis away or out
//! of memory) it reads no new work. When the queue's state is lost or
//! damaged it stops at once and ends with that error: nothing it could still
//! write would be true.

mod admission;
mod breaker;
mod dispatch;
mod ending;
mod fatal;
mod flush;
mod gateway;
mod gateway_watch;
mod in_flight;
mod name;
mod recover;
pub mod simulate;
mod summary;
mod throttle;
mod trim;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::RngExt;
use thiserror::Error;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use dispatch::DispatchTotals;
pub use flush::FlushTotals;

use crate::settings::SendSettings;
use crate::store::{Sender, Store, StoreError};
use admission::Admission;
use breaker::Breaker;
use dispatch::{Dispatcher, Lane};
use fatal::Fatal;
use flush::Flusher;
use gateway::{Gateway, Inlet};
use in_flight::{Held, InFlight, LaneOut};
use simulate::Simulator;
use summary::{Progress, SUMMARY_EVERY};

/// Messages a sender may hold per send slot: one sending, one read ahead and
/// one whose result waits to be written. Reading goes on while results are
/// written, and the bound keeps memory in check while Redis is slow or away.
/// With two per slot, a read for the next sends often waited for the last
/// ones' results to be written.
const HOLD_PER_SEND_SLOT: usize = 3;

/// How long results may take to be written after the shutdown deadline.
const FLUSH_GRACE: Duration = Duration::from_secs(5);

/// How often the sender looks for partitions added to the queue.
const GROWTH_CHECK_EVERY: Duration = Duration::from_secs(2);

/// Why a sender stopped with an error.
#[derive(Debug, Error)]
pub enum SendError {
    /// Another live process uses this name.
    #[error(
        "sender name '{name}' is in use by another live process: give this sender another --name, \
         or stop the other one first"
    )]
    NameInUse {
        /// The name.
        name: String,
    },
    /// Another process took this sender's name while it ran (it was paused for
    /// longer than its lease); it stopped after draining.
    #[error(
        "sender name '{name}' was taken over by another process; stopped after finishing in-flight sends"
    )]
    NameLost {
        /// The name.
        name: String,
    },
    /// `--read-partitions` named a partition the queue does not have.
    #[error(
        "invalid value '{partition}' for '--read-partitions': the queue has {count} partition(s), \
         numbered from 0"
    )]
    NoSuchPartition {
        /// The partition named.
        partition: u32,
        /// The queue's partition count.
        count: u32,
    },
    /// Redis failed in a way retrying cannot fix.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SendError {
    /// The Redis error behind this one, if any (to tell lost or damaged
    /// queue state apart).
    pub fn store_error(&self) -> Option<&StoreError> {
        match self {
            Self::Store(err) => Some(err),
            _ => None,
        }
    }
}

/// What one sender did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendSummary {
    /// How messages came in.
    pub dispatched: DispatchTotals,
    /// What the written results counted.
    pub flushed: FlushTotals,
    /// Messages read but not sent by the shutdown deadline; they stay
    /// pending and will be delivered again.
    pub abandoned: u64,
    /// How long the sender ran.
    pub elapsed: Duration,
}

impl SendSummary {
    /// Messages left pending for another delivery: not sent by the shutdown
    /// deadline, or their results not written.
    pub fn given_back(&self) -> u64 {
        self.abandoned + self.flushed.unwritten
    }
}

/// Runs one sender until `shutdown` fires (or its name is taken over), then
/// drains as described in the module docs. Expects a store opened on the
/// queue ([`Store::open`]).
pub async fn run(
    store: Store,
    settings: SendSettings,
    shutdown: CancellationToken,
) -> Result<SendSummary, SendError> {
    let started = Instant::now();
    let store = match &settings.channel {
        Some(channel) => store.for_channel(channel)?,
        None => store,
    };
    // Whatever partition's handle it is given: the name's lease, like
    // everything that belongs to the whole queue, is in partition 0.
    let store = store.partition(0).sender();
    let token = format!("{:016x}", rand::rng().random::<u64>());
    let stop = shutdown.child_token();
    let read = partitions_to_read(&store, &settings)?;
    if !name::acquire(&store, &settings.name, &token, settings.lease, &stop).await? {
        return Ok(SendSummary::default());
    }
    tracing::info!(
        name = settings.name,
        concurrency = settings.concurrency,
        mean_ms = settings.delay.mean.as_millis() as u64,
        failure_rate = settings.failure_rate,
        partitions = ?read,
        channel = %store.channel(),
        "sender started"
    );
    let sender = Shared {
        fatal: Fatal::new(stop.clone()),
        partitions: watch::channel(read).0,
        store,
        settings,
        token,
        held: Held::default(),
        progress: Arc::default(),
        paused: Arc::default(),
    };
    let upkeep = sender.start_upkeep(&stop);
    let sent = sender.send(&stop).await;
    let name_lost = upkeep.stop(&sender).await;
    let summary = SendSummary {
        dispatched: sent.dispatched,
        flushed: sent.flushed,
        abandoned: sent.abandoned,
        elapsed: started.elapsed(),
    };
    tracing::info!("sender stopped: {summary}");
    if let Some(err) = sender.fatal.take() {
        return Err(SendError::Store(err));
    }
    sent.outcome?;
    if name_lost {
        return Err(SendError::NameLost {
            name: sender.settings.name,
        });
    }
    Ok(summary)
}

/// How the sending went, once drained.
struct Sent {
    /// Whether reading ended on an error retrying cannot fix.
    outcome: Result<(), StoreError>,
    dispatched: DispatchTotals,
    flushed: FlushTotals,
    abandoned: u64,
}

/// What the sender's tasks share.
struct Shared {
    store: Sender,
    settings: SendSettings,
    /// This process's hold on the sender name.
    token: String,
    fatal: Fatal,
    /// The partitions the sender reads: all the queue has (they grow), or
    /// those it was given.
    partitions: watch::Sender<Vec<u32>>,
    /// What every partition holds in flight.
    held: Held,
    progress: Arc<Progress>,
    /// Whether an operator paused the channel.
    paused: Arc<AtomicBool>,
}

/// A partition's writer task, and how to make it give up.
struct Writer {
    task: JoinHandle<FlushTotals>,
    give_up: CancellationToken,
}

/// The tasks that run beside the sending: the name's lease, retention and
/// the progress log.
struct Upkeep {
    keeper: JoinHandle<bool>,
    trimmer: JoinHandle<()>,
    summary: JoinHandle<()>,
    /// Stops the progress log, which goes on while the sender drains.
    summary_stop: CancellationToken,
}

impl Shared {
    /// Reads and sends until `stop` fires, then drains: sends what was read
    /// until the shutdown deadline and writes the results.
    async fn send(&self, stop: &CancellationToken) -> Sent {
        // A sender started while its channel is paused sends nothing from
        // the start; the watch follows the flag from then on.
        if let Ok(paused) = self.store.is_paused().await {
            self.paused
                .store(paused, std::sync::atomic::Ordering::Relaxed);
        }
        let abort_sends = CancellationToken::new();
        let watching = CancellationToken::new();
        let (admission, watcher) = self.admission(&watching);
        let direct = admission.is_open();
        let (gateway, inlet) =
            Gateway::new(self.settings.concurrency, abort_sends.clone(), admission);
        let gateway = tokio::spawn(gateway.run());
        let writers = Mutex::new(Vec::new());
        let lanes = self
            .partitions
            .borrow()
            .iter()
            .map(|&partition| self.open_lane(partition, &writers))
            .collect();
        let (new_lanes_tx, new_lanes) = mpsc::unbounded_channel();
        let mut dispatcher = self.dispatcher(lanes, new_lanes, inlet);
        dispatcher.direct = direct;
        let outcome = tokio::select! {
            outcome = dispatcher.run(stop) => outcome,
            never = self.follow_growth(&new_lanes_tx, &writers),
                if self.settings.partitions.is_none() => match never {},
        };
        stop.cancel();
        let dispatched = dispatcher.totals;
        // The gateway sends what it holds until the deadline; nothing more is
        // sent once the queue's state is lost or damaged.
        drop(dispatcher);
        drop(new_lanes_tx);
        let abandoned = self.drain(gateway, abort_sends).await;
        watching.cancel();
        for task in watcher {
            let _ = task.await;
        }
        let writers = writers.into_inner().unwrap_or_else(PoisonError::into_inner);
        Sent {
            outcome,
            dispatched,
            flushed: join_writers(writers).await,
            abandoned,
        }
    }

    /// The gateway's rules (pause, breaker, throughput cap, outages, age
    /// limit) and the tasks that keep them: the token refill and the watch
    /// on the pause flag and the breaker, both until `watching` fires.
    fn admission(&self, watching: &CancellationToken) -> (Admission, Vec<JoinHandle<()>>) {
        let gateway = &self.settings.gateway;
        let (changes_tx, changes) = mpsc::unbounded_channel();
        let mut tasks = vec![tokio::spawn(gateway_watch::watch(
            self.store.clone(),
            self.settings.name.clone(),
            gateway.name.clone(),
            Arc::clone(&self.paused),
            changes,
            watching.clone(),
        ))];
        let tokens = gateway.rate.map(|rate| {
            let pool = Arc::new(Semaphore::new(0));
            tasks.push(tokio::spawn(throttle::refill(
                self.store.clone(),
                gateway.name.clone(),
                rate,
                Arc::clone(&pool),
                watching.clone(),
            )));
            pool
        });
        let breaker = gateway
            .breaker
            .map(|settings| Breaker::new(settings, tokio::time::Instant::now()));
        let admission = Admission::new(
            breaker,
            tokens,
            Arc::clone(&self.paused),
            self.settings.outage,
            gateway.expire_after,
            changes_tx,
        );
        (admission, tasks)
    }

    /// Opens the lane of `partition`: starts its writer (kept in `writers`)
    /// and returns what the dispatcher needs to read it.
    fn open_lane(&self, partition: u32, writers: &Mutex<Vec<Writer>>) -> Lane {
        let store = self.store.partition(partition);
        let (results, results_rx) = mpsc::unbounded_channel();
        let (writes_blocked_tx, writes_blocked) = watch::channel(false);
        let in_flight = InFlight::default();
        self.held.add(in_flight.clone());
        let give_up = self.fatal.raised.child_token();
        let flusher = self.flusher(store.clone(), in_flight.clone(), writes_blocked_tx);
        let task = tokio::spawn(flusher.run(results_rx, give_up.clone()));
        writers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Writer { task, give_up });
        let out = Arc::new(LaneOut { results, in_flight });
        Lane::new(store, &self.settings, out, writes_blocked)
    }

    /// Looks for partitions added to the queue every [`GROWTH_CHECK_EVERY`]
    /// and hands the dispatcher a lane for each; never ends (the caller
    /// drops it). A failed look is tried again at the next tick.
    async fn follow_growth(
        &self,
        new_lanes: &mpsc::UnboundedSender<Lane>,
        writers: &Mutex<Vec<Writer>>,
    ) -> std::convert::Infallible {
        let mut known = self.store.clone();
        loop {
            tokio::time::sleep(GROWTH_CHECK_EVERY).await;
            let grown = match known.reopen_grown().await {
                Ok(grown) => grown,
                Err(err) if err.is_queue_state() => {
                    self.fatal.raise(err);
                    continue;
                }
                Err(err) => {
                    tracing::debug!(error = %err, "could not look for partitions added");
                    continue;
                }
            };
            for partition in known.partition_count()..grown.partition_count() {
                let _ = new_lanes.send(self.open_lane(partition, writers));
            }
            self.partitions
                .send_replace((0..grown.partition_count()).collect());
            known = grown;
        }
    }

    /// Starts the upkeep tasks; the name's lease and trimming end with `stop`.
    fn start_upkeep(&self, stop: &CancellationToken) -> Upkeep {
        let summary_stop = CancellationToken::new();
        let summary = tokio::spawn({
            let (progress, held, summary_stop) = (
                Arc::clone(&self.progress),
                self.held.clone(),
                summary_stop.clone(),
            );
            async move {
                summary::report_every(SUMMARY_EVERY, &progress, &held, &summary_stop).await;
            }
        });
        Upkeep {
            keeper: tokio::spawn(name::keep(
                self.store.clone(),
                self.settings.name.clone(),
                self.token.clone(),
                self.settings.lease,
                stop.clone(),
                self.fatal.clone(),
            )),
            trimmer: tokio::spawn(trim::keep_trimmed(
                self.store.clone(),
                self.partitions.subscribe(),
                stop.clone(),
                self.fatal.clone(),
            )),
            summary,
            summary_stop,
        }
    }

    /// The task that writes one partition's results and renews its leases.
    fn flusher(
        &self,
        store: Sender,
        in_flight: InFlight,
        writes_blocked: watch::Sender<bool>,
    ) -> Flusher {
        Flusher {
            store,
            consumer: self.settings.name.clone(),
            max_attempts: self.settings.max_attempts,
            retry_idle: self
                .settings
                .lease
                .saturating_sub(self.settings.retry_backoff),
            lease: self.settings.lease,
            concurrency: self.settings.concurrency,
            token: self.token.clone(),
            in_flight,
            fatal: self.fatal.clone(),
            writes_blocked,
            progress: Arc::clone(&self.progress),
        }
    }

    /// The loop that reads and claims messages, over `lanes` and those
    /// that come through `new_lanes`.
    fn dispatcher(
        &self,
        lanes: Vec<Lane>,
        new_lanes: mpsc::UnboundedReceiver<Lane>,
        gateway: Inlet,
    ) -> Dispatcher {
        let settings = &self.settings;
        Dispatcher {
            channel: self.store.channel().clone(),
            direct: true,
            paused: Arc::clone(&self.paused),
            simulator: Simulator::new(
                settings.delay,
                settings.failure_rate,
                settings.gateway.throttle_rate,
                settings.seed,
            ),
            hold_slots: Arc::new(Semaphore::new(
                settings.concurrency.saturating_mul(HOLD_PER_SEND_SLOT),
            )),
            lanes,
            new_lanes,
            next_lane: 0,
            gateway,
            totals: DispatchTotals::default(),
            settings: settings.clone(),
            progress: Arc::clone(&self.progress),
        }
    }

    /// Lets the gateway send what it holds until the shutdown deadline (or
    /// until the queue's state is found lost or damaged), then abandons the
    /// rest. Returns how many messages were abandoned.
    async fn drain(
        &self,
        mut gateway: JoinHandle<Vec<(Arc<LaneOut>, String)>>,
        abort: CancellationToken,
    ) -> u64 {
        let deadline = async {
            tokio::select! {
                () = tokio::time::sleep(self.settings.shutdown_timeout) => {}
                () = self.fatal.raised.cancelled() => {}
            }
        };
        let drained = tokio::select! {
            biased;
            _ = &mut gateway => true,
            () = deadline => false,
        };
        if drained {
            return 0;
        }
        abort.cancel();
        let abandoned = gateway.await.unwrap_or_default();
        tracing::warn!(
            count = abandoned.len(),
            "shutdown deadline passed; abandoning messages not sent yet (they stay pending and will be delivered again)"
        );
        // Their leases are no longer renewed, so another sender can take them.
        for (lane, id) in &abandoned {
            lane.in_flight.remove_all(std::iter::once(id.as_str()));
        }
        abandoned.len() as u64
    }
}

impl Upkeep {
    /// Waits for the lease and trimming tasks (stopped with the sender),
    /// stops the progress log and gives the name back. True if the name was
    /// taken over while the sender ran.
    async fn stop(self, sender: &Shared) -> bool {
        let name_lost = self.keeper.await.unwrap_or(false);
        let _ = self.trimmer.await;
        self.summary_stop.cancel();
        let _ = self.summary.await;
        let name = &sender.settings.name;
        if let Err(err) = sender.store.release_name(name, &sender.token).await {
            tracing::warn!(error = %err, "could not release the sender name; it frees itself when its lease runs out");
        }
        name_lost
    }
}

/// The partitions `settings` ask to read, each one the queue has; all of
/// them when none are named.
fn partitions_to_read(store: &Sender, settings: &SendSettings) -> Result<Vec<u32>, SendError> {
    let count = store.partition_count();
    match &settings.partitions {
        None => Ok((0..count).collect()),
        Some(list) => match list.iter().find(|&&p| p >= count) {
            Some(&missing) => Err(SendError::NoSuchPartition {
                partition: missing,
                count,
            }),
            None => Ok(list.clone()),
        },
    }
}

/// Waits for the writers to write what is left, for at most [`FLUSH_GRACE`]
/// in all; then gives up on the rest (it stays pending and is delivered
/// again). What they counted, together.
async fn join_writers(writers: Vec<Writer>) -> FlushTotals {
    let deadline = tokio::time::Instant::now() + FLUSH_GRACE;
    let mut flushed = FlushTotals::default();
    let mut late = false;
    for writer in writers {
        match tokio::time::timeout_at(deadline, writer.task).await {
            Ok(Ok(totals)) => flushed.merge(&totals),
            Ok(Err(join_err)) => tracing::error!(error = %join_err, "result writer failed"),
            Err(_) => {
                writer.give_up.cancel();
                late = true;
            }
        }
    }
    if late {
        tracing::warn!(
            "could not write every result in time; those messages stay pending and will be retried"
        );
    }
    if flushed.unwritten > 0 {
        tracing::warn!(
            unwritten = flushed.unwritten,
            "results not written; their messages will be delivered again"
        );
    }
    flushed
}
