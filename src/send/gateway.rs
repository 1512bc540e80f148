//! The simulated SMS gateway: messages read ahead wait here for a send slot,
//! every send in progress waits in one timer queue ordered by when it ends,
//! and its result then goes to the writer.
//!
//! The gateway starts the next ready message the moment a send ends, in the
//! same step, instead of waking the dispatcher to do it (that hand-off left
//! about 2.5% of the slots idle at 100,000 sends a second). It publishes what
//! the dispatcher needs to size its reads in [`Load`].
//!
//! One task and one timer serve all sends. A task and a timer per send cost
//! about a quarter of the sender's CPU at 100,000 sends a second (spawning,
//! waking and tracking each task), and the busier scheduler fired the timers
//! later.
//!
//! tokio's timer fires up to a couple of milliseconds late (it rounds a
//! deadline up to its millisecond tick, and a busy worker looks at the timer
//! wheel only now and then), which would make a 20 ms send take 21. The
//! gateway learns how late its sends end on average and wakes that much
//! earlier, so send times centre on the drawn ones under any load.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering as AtomicOrdering};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::admission::{Admission, Blocked, PAUSE_POLL};
use super::breaker::Round;
use super::ending::Ending;
use super::in_flight::{Finished, LaneOut};
use super::simulate::Attempt;
use crate::store::{Outcome, ReportItem};

/// A message read ahead, checked and its attempt drawn, waiting for a send
/// slot.
#[derive(Debug)]
pub(super) struct Ready {
    /// The message id.
    pub id: String,
    /// Where its result goes: its partition's writer.
    pub lane: Arc<LaneOut>,
    /// What its send will do.
    pub attempt: Attempt,
    /// When it was created (ms since the Unix epoch), for its age limit.
    pub created_ms: u64,
    /// Its hold slot, which goes on with the result to the writer.
    pub hold_slot: OwnedSemaphorePermit,
}

/// The dispatcher's end of the gateway: hands messages over and counts them
/// as held in the same step, so the read budget never misses one on its way.
#[derive(Debug)]
pub(super) struct Inlet {
    sends: mpsc::UnboundedSender<Ready>,
    /// What the gateway holds, for sizing reads.
    pub load: Arc<Load>,
}

impl Inlet {
    /// Hands a message to the gateway.
    pub(super) fn hand_over(&self, ready: Ready) {
        self.load.held.fetch_add(1, AtomicOrdering::Relaxed);
        let _ = self.sends.send(ready);
    }
}

/// What the dispatcher reads of the gateway to size its reads.
#[derive(Debug, Default)]
pub(super) struct Load {
    /// Messages handed to the gateway whose sends have not ended: ready or
    /// sending. The dispatcher adds, the gateway subtracts.
    held: AtomicUsize,
    /// Sends that end within the read-ahead horizon.
    ending_soon: AtomicUsize,
    /// Set while the gateway's breaker is open: nothing is to be read for
    /// it until it half-opens.
    halted: AtomicBool,
    /// Signalled when sends end or come within the horizon.
    pub changed: Notify,
}

impl Load {
    /// Messages to read for now: one per send slot that is free or about to
    /// free, less the messages already waiting for one.
    pub(super) fn wanted(&self, concurrency: usize) -> usize {
        if self.halted.load(AtomicOrdering::Relaxed) {
            return 0;
        }
        (concurrency + self.ending_soon.load(AtomicOrdering::Relaxed))
            .saturating_sub(self.held.load(AtomicOrdering::Relaxed))
    }

    /// How many messages handed over now would start at once.
    pub(super) fn free_slots(&self, concurrency: usize) -> usize {
        concurrency.saturating_sub(self.held.load(AtomicOrdering::Relaxed))
    }
}

/// One send in progress.
#[derive(Debug)]
struct InProgress {
    /// When the send started; its measured time runs from here.
    started: Instant,
    /// When it ends.
    ends_at: Instant,
    /// Its result, whose send time is filled in when it ends.
    item: ReportItem,
    /// Where the result goes.
    lane: Arc<LaneOut>,
    /// Its hold slot, which goes on with the result to the writer.
    hold_slot: OwnedSemaphorePermit,
    /// The half-open round of the breaker that let it through as a probe.
    probe: Option<Round>,
}

/// Most the gateway wakes early to make up for a late timer.
const MAX_EARLY: Duration = Duration::from_millis(5);
/// How much of the average lateness of each batch of ended sends goes into
/// how early the gateway wakes: small, so one late batch (a busy moment)
/// moves it little.
const EARLY_GAIN: f64 = 0.1;

/// A send in the queue: earliest end first, then in the order sends came.
struct Scheduled {
    send: InProgress,
    order: u64,
}

impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        // BinaryHeap pops the greatest: reversed, so the earliest comes first.
        (other.send.ends_at, other.order).cmp(&(self.send.ends_at, self.order))
    }
}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Scheduled {}

/// The gateway task: its inputs, outputs and state.
pub(super) struct Gateway {
    /// Messages to send, from the dispatcher; closed when it stops.
    incoming: mpsc::UnboundedReceiver<Ready>,
    /// Shared with the dispatcher.
    load: Arc<Load>,
    /// Sends at once.
    concurrency: usize,
    /// Fired when the shutdown deadline passes: messages not sent by then
    /// are dropped and stay pending, to be delivered again.
    abort: CancellationToken,
    ready: VecDeque<Ready>,
    sending: BinaryHeap<Scheduled>,
    ending: Ending,
    order: u64,
    /// How much earlier than a send's end the gateway wakes for it.
    early: Duration,
    /// Whether a send may start now, and what the gateway does to it then.
    admission: Admission,
}

impl Gateway {
    /// A gateway with nothing to send yet, and the inlet to hand it
    /// messages through.
    pub(super) fn new(
        concurrency: usize,
        abort: CancellationToken,
        admission: Admission,
    ) -> (Self, Inlet) {
        let (sends, incoming) = mpsc::unbounded_channel();
        let load = Arc::new(Load::default());
        let inlet = Inlet {
            sends,
            load: Arc::clone(&load),
        };
        let gateway = Self {
            incoming,
            load,
            concurrency,
            abort,
            ready: VecDeque::new(),
            sending: BinaryHeap::new(),
            ending: Ending::default(),
            order: 0,
            early: Duration::from_millis(1),
            admission,
        };
        (gateway, inlet)
    }

    /// Runs until the dispatcher has stopped and every message it handed
    /// over is sent, or until `abort`. Returns the messages abandoned then
    /// (ready or sending), each with its partition's lane.
    pub(super) async fn run(mut self) -> Vec<(Arc<LaneOut>, String)> {
        let mut open = true;
        let tokens = self.admission.tokens();
        loop {
            let blocked = self.start_ready();
            self.follow_breaker(!open && blocked.is_some());
            let soon = self.ending.soon(Instant::now());
            if self.load.ending_soon.swap(soon, AtomicOrdering::Relaxed) < soon {
                // More sends end soon: the dispatcher may read ahead for them.
                self.load.changed.notify_one();
            }
            let next_end = self.sending.peek().map(|q| q.send.ends_at - self.early);
            let unblocks_at = match blocked {
                Some(Blocked::Until(at)) => Some(at),
                Some(Blocked::Paused) => Some(Instant::now() + PAUSE_POLL),
                // Halted with nothing waiting: wake when it half-opens, to
                // let reads go on.
                _ => self.admission.breaker_reopens_at(),
            };
            let wake_at = [next_end, self.ending.next_change(), unblocks_at]
                .into_iter()
                .flatten()
                .min();
            let wants_token = blocked == Some(Blocked::Tokens);
            tokio::select! {
                biased;
                () = self.abort.cancelled() => return self.abandon(),
                token = async {
                    match &tokens {
                        Some(pool) => pool.acquire().await.ok(),
                        None => std::future::pending().await,
                    }
                }, if wants_token => {
                    if let Some(token) = token {
                        token.forget();
                        self.admission.keep_token();
                    }
                }
                received = self.incoming.recv(), if open => match received {
                    Some(ready) => {
                        self.ready.push_back(ready);
                        // Take every message that came with it in one wake-up.
                        while let Ok(ready) = self.incoming.try_recv() {
                            self.ready.push_back(ready);
                        }
                    }
                    None => open = false,
                },
                () = async {
                    match wake_at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
            self.end_due();
            if !open && self.ready.is_empty() && self.sending.is_empty() {
                return Vec::new();
            }
        }
    }

    /// While the breaker is open, reads stop and the messages waiting go
    /// back to the queue without spending an attempt (another gateway's
    /// senders may take them); they start again when it half-opens.
    /// `stopping` (the dispatcher has stopped and the rules hold messages
    /// back) sends the waiting ones back too, so shutdown does not wait on
    /// a breaker, a pause or the cap.
    fn follow_breaker(&mut self, stopping: bool) {
        let open = self.admission.breaker_open(Instant::now());
        if self.load.halted.swap(open, AtomicOrdering::Relaxed) && !open {
            self.load.changed.notify_one();
        }
        if open || stopping {
            self.defer_ready();
        }
    }

    /// Hands every message waiting for a slot back as deferred.
    fn defer_ready(&mut self) {
        let deferred = self.ready.len();
        if deferred == 0 {
            return;
        }
        for ready in self.ready.drain(..) {
            unsent(ready, Outcome::Deferred);
        }
        self.load.held.fetch_sub(deferred, AtomicOrdering::Relaxed);
        self.load.changed.notify_one();
    }

    /// Starts ready messages in the free send slots, as far as the
    /// admission rules let it; returns what stopped it, if they did.
    fn start_ready(&mut self) -> Option<Blocked> {
        while self.sending.len() < self.concurrency && !self.ready.is_empty() {
            if let Err(blocked) = self.start_next(Instant::now()) {
                return Some(blocked);
            }
        }
        None
    }

    /// Starts the first ready message at `now` if the rules allow: a
    /// message past its age limit ends at once as expired, one sent while
    /// the gateway is down fails when its send ends. `Ok(false)` when no
    /// message is ready.
    fn start_next(&mut self, now: Instant) -> Result<bool, Blocked> {
        if self.ready.is_empty() {
            return Ok(false);
        }
        let created_ms = self.ready.front().map_or(0, |r| r.created_ms);
        let at_start = self
            .admission
            .at_start(created_ms, crate::message::now_ms());
        let probe = if at_start == Some(Outcome::Expired) {
            None
        } else {
            self.admission.admit(now)?
        };
        let Some(ready) = self.ready.pop_front() else {
            return Ok(false);
        };
        if at_start == Some(Outcome::Expired) {
            unsent(ready, Outcome::Expired);
            self.load.held.fetch_sub(1, AtomicOrdering::Relaxed);
            self.load.changed.notify_one();
            return Ok(true);
        }
        let ends_at = now + ready.attempt.delay;
        self.ending.add(ends_at);
        let send = InProgress {
            started: now,
            ends_at,
            item: ReportItem {
                id: ready.id,
                outcome: at_start.unwrap_or_else(|| ready.attempt.outcome()),
                send_time_us: 0,
            },
            lane: ready.lane,
            hold_slot: ready.hold_slot,
            probe,
        };
        self.sending.push(Scheduled {
            send,
            order: self.order,
        });
        self.order += 1;
        Ok(true)
    }

    /// Gives up every message not sent yet; their lanes and ids.
    fn abandon(&mut self) -> Vec<(Arc<LaneOut>, String)> {
        let ready = self.ready.drain(..).map(|r| (r.lane, r.id));
        let sending = self.sending.drain().map(|q| (q.send.lane, q.send.item.id));
        ready.chain(sending).collect()
    }

    /// Ends every send due by now, counting `early` as already passed, hands
    /// its result to the writer and starts the next ready message in its slot
    /// at that moment. Then moves `early` by how late (or early) those sends
    /// ended on average.
    ///
    /// Each slot restarts as its own send is ended, not after the whole batch:
    /// ending a thousand sends takes a few hundred microseconds, and
    /// restarting them all only afterwards made sends of equal length, which
    /// end together, wait that long once per round (1.5% of the slots' time
    /// at 20 ms).
    fn end_due(&mut self) {
        let due_by = Instant::now() + self.early;
        let mut ended = 0u32;
        let mut lateness_us = 0i64;
        while self
            .sending
            .peek()
            .is_some_and(|q| q.send.ends_at <= due_by)
        {
            let Some(Scheduled { send, .. }) = self.sending.pop() else {
                break;
            };
            let now = Instant::now();
            lateness_us += signed_us(now, send.ends_at);
            let mut item = send.item;
            item.send_time_us = now.duration_since(send.started).as_micros() as u64;
            if send.probe.is_some() && item.outcome == Outcome::Failed {
                item.outcome = Outcome::ProbeFailed;
            }
            ended += 1;
            self.admission.record(item.outcome, send.probe, now);
            let _ = send.lane.results.send(Finished {
                item,
                hold_slot: send.hold_slot,
            });
            // A slot the rules keep empty is filled by the loop once they
            // allow it.
            let _ = self.start_next(now);
        }
        if ended > 0 {
            self.load
                .held
                .fetch_sub(ended as usize, AtomicOrdering::Relaxed);
            self.load.changed.notify_one();
            let step = EARLY_GAIN * lateness_us as f64 / f64::from(ended);
            let next =
                (self.early.as_micros() as f64 + step).clamp(0.0, MAX_EARLY.as_micros() as f64);
            self.early = Duration::from_micros(next as u64);
        }
    }
}

/// Hands the result of a message that was never sent (`outcome`: deferred
/// or expired) to its writer, with its hold slot.
fn unsent(ready: Ready, outcome: Outcome) {
    let item = ReportItem {
        id: ready.id,
        outcome,
        send_time_us: 0,
    };
    let _ = ready.lane.results.send(Finished {
        item,
        hold_slot: ready.hold_slot,
    });
}

/// `a - b` in microseconds, negative if `a` is earlier.
fn signed_us(a: Instant, b: Instant) -> i64 {
    if a >= b {
        a.duration_since(b).as_micros() as i64
    } else {
        -(b.duration_since(a).as_micros() as i64)
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::Semaphore;

    use super::*;
    use crate::store::Outcome;

    /// A message whose send takes `ms`, holding one of `slots`.
    fn ready(id: &str, lane: &Arc<LaneOut>, slots: &Arc<Semaphore>, ms: u64) -> Ready {
        Ready {
            id: id.to_owned(),
            lane: Arc::clone(lane),
            attempt: Attempt {
                delay: Duration::from_millis(ms),
                fails: false,
                throttled: false,
            },
            created_ms: 0,
            hold_slot: Arc::clone(slots).try_acquire_owned().unwrap(),
        }
    }

    /// A partition's lane and where its results go.
    fn lane() -> (Arc<LaneOut>, mpsc::UnboundedReceiver<Finished>) {
        let (results, results_rx) = mpsc::unbounded_channel();
        let in_flight = super::super::in_flight::InFlight::default();
        (Arc::new(LaneOut { results, in_flight }), results_rx)
    }

    /// A gateway with `concurrency` send slots, its inlet, and a lane whose
    /// results the test reads (drop the lane to see them end).
    fn gateway(
        concurrency: usize,
        abort: &CancellationToken,
    ) -> (
        Gateway,
        Inlet,
        Arc<LaneOut>,
        mpsc::UnboundedReceiver<Finished>,
    ) {
        let (gateway, inlet) = Gateway::new(concurrency, abort.clone(), Admission::default());
        let (lane, results_rx) = lane();
        (gateway, inlet, lane, results_rx)
    }

    #[tokio::test(start_paused = true)]
    async fn sends_end_in_order_of_their_times_and_a_freed_slot_starts_the_next() {
        let slots = Arc::new(Semaphore::new(4));
        let (gateway, inlet, lane, mut results_rx) = gateway(2, &CancellationToken::new());
        let load = Arc::clone(&inlet.load);
        for (id, ms) in [("slow", 30), ("fast", 10), ("queued", 15)] {
            inlet.hand_over(ready(id, &lane, &slots, ms));
        }
        drop(lane);
        assert_eq!(load.free_slots(2), 0);
        let started = Instant::now();
        let gateway = tokio::spawn(gateway.run());
        drop(inlet);
        let mut ended = Vec::new();
        while let Some(finished) = results_rx.recv().await {
            let at = started.elapsed().as_millis();
            ended.push((finished.item.id, finished.item.send_time_us, at));
        }
        let order: Vec<&str> = ended.iter().map(|(id, _, _)| id.as_str()).collect();
        // Two slots: "queued" starts when "fast" ends at 10 ms and ends at 25.
        assert_eq!(order, ["fast", "queued", "slow"]);
        // Each takes its drawn time, or a little less to make up for a late
        // timer (which a paused clock does not have).
        for ((_, took_us, _), drawn_ms) in ended.iter().zip([10u64, 15, 30]) {
            let drawn_us = drawn_ms * 1_000;
            assert!(
                (drawn_us - MAX_EARLY.as_micros() as u64..=drawn_us).contains(took_us),
                "{took_us} µs for a {drawn_ms} ms send"
            );
        }
        assert!(ended[1].2 >= 20, "queued started only after fast ended");
        assert!(gateway.await.unwrap().is_empty(), "none abandoned");
        assert_eq!(load.free_slots(2), 2);
        assert_eq!(slots.available_permits(), 4, "every hold slot freed");
    }

    #[tokio::test(start_paused = true)]
    async fn wakes_earlier_after_sends_end_late_and_later_after_they_end_early() {
        let slots = Arc::new(Semaphore::new(4));
        let (mut gateway, _inlet, lane, _results_rx) = gateway(4, &CancellationToken::new());
        tokio::time::advance(Duration::from_millis(10)).await;
        let now = Instant::now();
        let mut end_one = |started: Instant, ends_at: Instant| {
            let send = InProgress {
                started,
                ends_at,
                item: ReportItem {
                    id: "m".to_owned(),
                    outcome: Outcome::Sent,
                    send_time_us: 0,
                },
                lane: Arc::clone(&lane),
                probe: None,
                hold_slot: Arc::clone(&slots).try_acquire_owned().unwrap(),
            };
            gateway.load.held.fetch_add(1, AtomicOrdering::Relaxed);
            gateway.sending.push(Scheduled { send, order: 0 });
            gateway.end_due();
            assert!(gateway.sending.is_empty());
            gateway.early
        };
        // A send noticed 2 ms after its end: wake a tenth of that earlier.
        let early = end_one(
            now - Duration::from_millis(10),
            now - Duration::from_millis(2),
        );
        assert_eq!(early, Duration::from_micros(1_200));
        // A send ended 1.2 ms before its end (all of `early`): wake later.
        let early = end_one(now, now + early);
        assert_eq!(early, Duration::from_micros(1_080));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_is_refilled_as_its_send_ends_not_after_the_whole_batch() {
        let slots = Arc::new(Semaphore::new(4));
        let (mut gateway, inlet, lane, mut results_rx) = gateway(2, &CancellationToken::new());
        for (id, ms) in [("a", 10), ("b", 10), ("next", 10)] {
            inlet.hand_over(ready(id, &lane, &slots, ms));
        }
        while let Ok(ready) = gateway.incoming.try_recv() {
            gateway.ready.push_back(ready);
        }
        gateway.start_ready();
        assert_eq!(gateway.sending.len(), 2);
        tokio::time::advance(Duration::from_millis(10)).await;
        gateway.end_due();
        // Both ended; the waiting message took the first freed slot inside
        // the same pass, at the moment that send was ended.
        assert_eq!(results_rx.recv().await.unwrap().item.id, "a");
        assert_eq!(results_rx.recv().await.unwrap().item.id, "b");
        assert!(gateway.ready.is_empty());
        let started = gateway.sending.peek().map(|q| q.send.started);
        assert_eq!(started, Some(Instant::now()));
        assert_eq!(inlet.load.free_slots(2), 1, "one sending, none waiting");
    }

    #[tokio::test(start_paused = true)]
    async fn abort_abandons_the_messages_not_sent_yet() {
        let slots = Arc::new(Semaphore::new(4));
        let abort = CancellationToken::new();
        let (gateway, inlet, lane, mut results_rx) = gateway(1, &abort);
        for (id, ms) in [("quick", 5), ("endless", 60_000), ("waiting", 5)] {
            inlet.hand_over(ready(id, &lane, &slots, ms));
        }
        drop(lane);
        let gateway = tokio::spawn(gateway.run());
        let first = results_rx.recv().await.unwrap();
        assert_eq!(first.item.id, "quick");
        tokio::time::sleep(Duration::from_secs(1)).await;
        abort.cancel();
        // One still sending, one never started.
        let abandoned: Vec<String> = gateway
            .await
            .unwrap()
            .into_iter()
            .map(|(_, id)| id)
            .collect();
        assert_eq!(abandoned, ["waiting", "endless"]);
        assert!(results_rx.recv().await.is_none(), "and writes no result");
    }
}
