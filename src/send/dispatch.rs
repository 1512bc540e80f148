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
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::gateway::{Inlet, Ready};
use super::in_flight::{Finished, LaneOut, PendingRead, Reads};
use super::recover::Reclaim;
use super::simulate::Simulator;
use super::summary::Progress;
use crate::channel::Channel;
use crate::message::Addressed;
use crate::settings::SendSettings;
use crate::store::{Outcome, ReportItem, Retry, Sender, StoreError, StreamEntry};

/// Longest a read blocks, so the loop checks for work to reclaim and for
/// shutdown at least this often.
pub(super) const MAX_BLOCK: Duration = Duration::from_secs(1);

/// How soon a lane whose writes are blocked is looked at again.
const BLOCKED_RECHECK: Duration = Duration::from_millis(50);

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

/// One partition as the dispatcher sees it: the handle its reads and claims
/// go through, the reads on the wire, where the pending-list walk stands,
/// and where its messages go.
pub(super) struct Lane {
    pub store: Sender,
    pub reads: Reads,
    pub reclaim: Reclaim,
    /// The partition's writer and in-flight set.
    pub out: Arc<LaneOut>,
    /// True while the partition's writer cannot write results: no new work
    /// is read from it.
    pub writes_blocked: watch::Receiver<bool>,
    /// Whether the messages left pending under this sender's name were
    /// taken back (done first, for each lane, before it reads new ones).
    pub recovered: bool,
    /// Where taking them back stands.
    pub recover_cursor: Option<String>,
    /// Failures to take them back are retried by this policy.
    pub recover_retry: Retry<'static>,
    /// Whether its last read found nothing: with several partitions, an
    /// idle one is watched with a one-message blocking read, so it holds one
    /// hold slot, not a read's worth, while the others have work.
    pub idle: bool,
    /// After a failed read or claim, when the lane may try again; the other
    /// lanes go on meanwhile.
    pub paused_until: Option<Instant>,
}

impl Lane {
    /// A lane for `store`'s partition whose messages go to `out`.
    pub(super) fn new(
        store: Sender,
        settings: &SendSettings,
        out: Arc<LaneOut>,
        writes_blocked: watch::Receiver<bool>,
    ) -> Self {
        Self {
            store,
            reads: Reads::new(settings.concurrency),
            reclaim: Reclaim::new(settings.retry_backoff),
            out,
            writes_blocked,
            recovered: false,
            recover_cursor: None,
            recover_retry: Retry::new("recover own pending messages"),
            idle: false,
            paused_until: None,
        }
    }

    /// Whether the lane may read or claim now.
    fn is_open(&self) -> bool {
        !*self.writes_blocked.borrow() && self.paused_until.is_none_or(|at| Instant::now() >= at)
    }
}

/// The dispatcher's state.
pub(super) struct Dispatcher {
    pub settings: SendSettings,
    /// The channel whose messages this sender sends.
    pub channel: Channel,
    /// Whether a send that takes no time may end at once, without the
    /// gateway: no cap, breaker, outage or age limit to apply.
    pub direct: bool,
    /// Whether an operator paused the channel (polled by the upkeep).
    pub paused: Arc<AtomicBool>,
    pub simulator: Simulator,
    /// One per message held, from its read until its result is written.
    pub hold_slots: Arc<Semaphore>,
    /// One per partition; reads go round robin over them.
    pub lanes: Vec<Lane>,
    /// Lanes of partitions added to the queue while the sender runs.
    pub new_lanes: mpsc::UnboundedReceiver<Lane>,
    /// The lane the next read or claim looks at first.
    pub next_lane: usize,
    /// Messages to send go to the gateway.
    pub gateway: Inlet,
    pub totals: DispatchTotals,
    /// Where the messages taken in are counted as they come.
    pub progress: Arc<Progress>,
}

/// What the dispatcher can do next.
enum Next {
    /// Take back this lane's messages left pending under this name.
    Recover(usize, OwnedSemaphorePermit),
    /// Take over stale messages of this lane.
    Reclaim(usize, OwnedSemaphorePermit),
    /// Read new messages of this lane.
    Read(usize, OwnedSemaphorePermit),
    /// Nothing without waiting: for a hold slot (a lane could go out with
    /// one), or for sends to end (none is wanted now), or only for replies.
    Wait { for_hold: bool, for_ends: bool },
}

impl Dispatcher {
    /// Runs until `stop` fires. Only non-transient Redis errors end it early.
    /// Messages already read stay with the gateway, which sends them until
    /// the shutdown deadline.
    pub(super) async fn run(&mut self, stop: &CancellationToken) -> Result<(), StoreError> {
        loop {
            if stop.is_cancelled() {
                return self.take_all(stop).await;
            }
            while let Ok(lane) = self.new_lanes.try_recv() {
                tracing::info!(
                    partition = lane.store.keys().partition(),
                    "reading a partition added to the queue"
                );
                self.lanes.push(lane);
            }
            match self.next_step() {
                Next::Recover(lane, hold) => self.recover_own(lane, hold, stop).await?,
                Next::Reclaim(lane, hold) => self.reclaim_stale(lane, hold, stop).await?,
                Next::Read(lane, hold) => self.start_read(lane, hold, stop).await?,
                Next::Wait { for_hold, for_ends } => {
                    self.wait_for_work(for_hold, for_ends, stop).await?;
                }
            }
        }
    }

    /// The next read or claim that can go out now, looking at the lanes
    /// round robin so that every partition gets its turn.
    fn next_step(&mut self) -> Next {
        let budget = self.read_budget();
        if budget == 0 {
            return Next::Wait {
                for_hold: false,
                for_ends: true,
            };
        }
        let several = self.lanes.len() > 1;
        let count = self.lanes.len();
        let mut for_hold = false;
        let mut for_ends = false;
        for offset in 0..count {
            let index = (self.next_lane + offset) % count;
            let lane = &self.lanes[index];
            if !lane.is_open() {
                continue;
            }
            if !lane.recovered {
                // Taken back only into free send slots, so they start at once.
                let free = self.gateway.load.free_slots(self.settings.concurrency);
                if free == 0 {
                    for_ends = true;
                    continue;
                }
                match self.try_free_hold(free) {
                    Some(hold) => {
                        self.next_lane = (index + 1) % count;
                        return Next::Recover(index, hold);
                    }
                    None => for_hold = true,
                }
                continue;
            }
            if lane.reclaim.is_due() {
                match self.try_free_hold(budget.min(lane.reads.per_read)) {
                    Some(hold) => {
                        self.next_lane = (index + 1) % count;
                        return Next::Reclaim(index, hold);
                    }
                    None => for_hold = true,
                }
            }
            let watching = several && lane.idle;
            let room = if watching {
                lane.reads.is_empty()
            } else {
                lane.reads.has_room()
            };
            if !room {
                continue;
            }
            let wanted = if watching {
                1
            } else {
                budget.min(lane.reads.per_read)
            };
            match self.try_free_hold(wanted) {
                Some(hold) => {
                    self.next_lane = (index + 1) % count;
                    return Next::Read(index, hold);
                }
                None => for_hold = true,
            }
        }
        Next::Wait { for_hold, for_ends }
    }

    /// Takes the entries of the reads already sent: they are this sender's
    /// now, and go to the gateway, sent until the shutdown deadline.
    async fn take_all(&mut self, stop: &CancellationToken) -> Result<(), StoreError> {
        for lane in 0..self.lanes.len() {
            while let Some(read) = self.lanes[lane].reads.pop_oldest() {
                let reply = read.reply.await;
                self.take_read(lane, read.hold, reply, stop).await?;
            }
        }
        Ok(())
    }

    /// Nothing can go out without waiting. Waits for a read's reply, for a
    /// hold slot if `wants_hold`, for sends that end (or come within the
    /// read-ahead horizon) if `wants_ends`, or for the end of a lane's
    /// pause. Lanes added meanwhile are taken at the next turn, at most a
    /// blocking read later.
    async fn wait_for_work(
        &mut self,
        wants_hold: bool,
        wants_ends: bool,
        stop: &CancellationToken,
    ) -> Result<(), StoreError> {
        let resume_at = self
            .lanes
            .iter()
            .filter_map(|lane| {
                let blocked = *lane.writes_blocked.borrow();
                // A lane whose writes are blocked is looked at again shortly.
                let blocked_until = blocked.then(|| Instant::now() + BLOCKED_RECHECK);
                // Only a pause still to come: one that is over wakes nobody.
                let paused = lane.paused_until.filter(|&at| at > Instant::now());
                paused.or(blocked_until)
            })
            .min();
        let lanes = &mut self.lanes;
        let replies = std::future::poll_fn(|cx| {
            for (index, lane) in lanes.iter_mut().enumerate() {
                if let std::task::Poll::Ready(reply) = lane.reads.poll_oldest(cx) {
                    return std::task::Poll::Ready((index, reply));
                }
            }
            std::task::Poll::Pending
        });
        tokio::select! {
            () = stop.cancelled() => {}
            (lane, reply) = replies => {
                if let Some(read) = self.lanes[lane].reads.pop_oldest() {
                    self.take_read(lane, read.hold, reply, stop).await?;
                }
            }
            // Freed again at once: the loop takes it with the others free.
            _hold = Arc::clone(&self.hold_slots).acquire_owned(), if wants_hold => {}
            () = self.gateway.load.changed.notified(), if wants_ends => {}
            () = async {
                match resume_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
        Ok(())
    }

    /// How many more messages to read or claim now: one per send slot free
    /// or about to free (its send ends within the read-ahead horizon), less
    /// those already waiting for one or asked for by reads on the wire.
    fn read_budget(&self) -> usize {
        let asked: usize = self.lanes.iter().map(|lane| lane.reads.asked()).sum();
        self.gateway
            .load
            .wanted(self.settings.concurrency)
            .saturating_sub(asked)
    }

    /// Sends a read of `lane` for as many new messages as `hold` can take,
    /// on the lane's reader connection (opened if needed). With one
    /// partition a read waits until the next pending-list walk is due for
    /// the first message; with several, only a read of an idle partition
    /// waits (for one message), so no read sits on slots another partition
    /// could use. Sends nothing if the connection could not be opened.
    async fn start_read(
        &mut self,
        lane: usize,
        hold: OwnedSemaphorePermit,
        stop: &CancellationToken,
    ) -> Result<(), StoreError> {
        let several = self.lanes.len() > 1;
        let this = &mut self.lanes[lane];
        let block = if several && !this.idle {
            0
        } else {
            this.reclaim.read_block().as_millis() as u64
        };
        let conn = match &mut this.reads.reader {
            Some(conn) => conn,
            None => match this.store.read_connection(MAX_BLOCK).await {
                Ok(conn) => this.reads.reader.insert(conn),
                Err(err) => return self.lane_failed(lane, err, stop).await,
            },
        };
        let reply = this
            .store
            .read_new(conn, &self.settings.name, hold.num_permits(), block);
        this.reads.push(PendingRead { hold, reply });
        Ok(())
    }

    /// Takes a read's reply: its messages join the ready queue. After an
    /// error, drops the lane's connection (it may be broken) and pauses the
    /// lane.
    async fn take_read(
        &mut self,
        lane: usize,
        mut hold: OwnedSemaphorePermit,
        reply: Result<Vec<StreamEntry>, StoreError>,
        stop: &CancellationToken,
    ) -> Result<(), StoreError> {
        match reply {
            Ok(entries) => {
                let this = &mut self.lanes[lane];
                this.reads.retry.succeeded();
                this.idle = entries.is_empty();
                self.totals.read += entries.len() as u64;
                self.progress.took(entries.len() as u64);
                for entry in entries {
                    self.read_ahead(lane, entry, &mut hold);
                }
                Ok(())
            }
            Err(err) => {
                self.lanes[lane].reads.reader = None;
                self.lane_failed(lane, err, stop).await
            }
        }
    }

    /// Takes a message that was read or claimed, with one of `hold`'s slots:
    /// checks it and draws its attempt now, so that starting it when a send
    /// slot frees costs next to nothing. A malformed message, or one whose
    /// send takes no time, has its result at once; the others wait in the
    /// ready queue.
    pub(super) fn read_ahead(
        &mut self,
        lane: usize,
        entry: StreamEntry,
        hold: &mut OwnedSemaphorePermit,
    ) {
        let Some(hold) = hold.split(1) else {
            // Never happens: each read or claim asks for at most as many
            // entries as there are slots. Leaving the entry pending is safe.
            tracing::warn!(
                id = entry.id,
                "no free slot for a message; it stays pending"
            );
            return;
        };
        let out = Arc::clone(&self.lanes[lane].out);
        // Its lease is renewed from now on, until its result is written.
        out.in_flight.insert(&entry.id);
        let checked = entry
            .addressed(&self.channel)
            .map(|addressed| match addressed {
                Addressed::To { created_ms, .. } => Some(created_ms),
                Addressed::NotForChannel => None,
            });
        let id = entry.id;
        let created_ms = match checked {
            Err(err) => {
                tracing::warn!(id, error = %err, "malformed entry; moving it to the dead stream");
                finish_now(&out, id, Outcome::Malformed, hold);
                return;
            }
            Ok(None) => {
                finish_now(&out, id, Outcome::Skipped, hold);
                return;
            }
            Ok(Some(created_ms)) => created_ms,
        };
        let attempt = self.simulator.next_attempt();
        if attempt.delay.is_zero() && self.direct && !self.paused.load(AtomicOrdering::Relaxed) {
            finish_now(&out, id, attempt.outcome(), hold);
            return;
        }
        self.gateway.hand_over(Ready {
            id,
            lane: out,
            attempt,
            created_ms,
            hold_slot: hold,
        });
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

    /// After a failed read or claim of `lane`: a missing stream, group or
    /// library is diagnosed at once (waiting as the retry policy says, or
    /// until `stop`); other failures retrying may fix pause only this lane,
    /// for the policy's wait. Lost or damaged queue state and other lasting
    /// errors end the sender (a missing stream or group is never re-created).
    pub(super) async fn lane_failed(
        &mut self,
        lane: usize,
        err: StoreError,
        stop: &CancellationToken,
    ) -> Result<(), StoreError> {
        let this = &mut self.lanes[lane];
        let retry = if this.recovered {
            &mut this.reads.retry
        } else {
            &mut this.recover_retry
        };
        if err.needs_library() || err.is_no_group() {
            return tokio::select! {
                // First, so an error that ends the sender is returned even
                // when `stop` has fired.
                biased;
                waited = this.store.wait_to_retry(retry, err) => waited,
                () = stop.cancelled() => Ok(()),
            };
        }
        let wait = retry.failed(err)?;
        this.paused_until = Some(Instant::now() + wait);
        Ok(())
    }
}

/// Hands the result of a message that needs no send to its writer.
fn finish_now(out: &LaneOut, id: String, outcome: Outcome, hold_slot: OwnedSemaphorePermit) {
    let item = ReportItem {
        id,
        outcome,
        send_time_us: 0,
    };
    let _ = out.results.send(Finished { item, hold_slot });
}
