//! The simulated SMS gateway: every send in progress waits here, in one timer
//! queue ordered by when it ends, and its result then goes to the writer.
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
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::flush::Finished;
use crate::store::ReportItem;

/// One send in progress.
#[derive(Debug)]
pub(super) struct InProgress {
    /// When the send was dispatched; its measured time runs from here.
    pub started: Instant,
    /// When it ends.
    pub ends_at: Instant,
    /// Its result, whose send time is filled in when it ends.
    pub item: ReportItem,
    /// Its send slot, freed when it ends.
    pub send_slot: OwnedSemaphorePermit,
    /// Its hold slot, which goes on with the result to the writer.
    pub hold_slot: OwnedSemaphorePermit,
}

/// Most the gateway wakes early to make up for a late timer.
const MAX_EARLY: Duration = Duration::from_millis(5);
/// How much of the average lateness of each batch of ended sends goes into
/// how early the gateway wakes: small, so one late batch (a busy moment)
/// moves it little.
const EARLY_GAIN: f64 = 0.1;

/// A send in the queue: earliest end first, then in the order sends came.
struct Queued {
    send: InProgress,
    order: u64,
}

impl Ord for Queued {
    fn cmp(&self, other: &Self) -> Ordering {
        // BinaryHeap pops the greatest: reversed, so the earliest comes first.
        (other.send.ends_at, other.order).cmp(&(self.send.ends_at, self.order))
    }
}

impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Queued {}

/// The gateway task's inputs and outputs.
pub(super) struct Gateway {
    /// Sends to start, from the dispatcher; closed when it stops.
    pub sends: mpsc::UnboundedReceiver<InProgress>,
    /// Where results go when their sends end.
    pub results: mpsc::UnboundedSender<Finished>,
    /// Signalled after sends end and free their send slots.
    pub send_ended: Arc<Notify>,
    /// Fired when the shutdown deadline passes: sends still in progress are
    /// dropped and stay pending, to be delivered again.
    pub abort: CancellationToken,
}

impl Gateway {
    /// Runs until the dispatcher has stopped and every send has ended, or
    /// until `abort`. Returns how many sends were abandoned.
    pub(super) async fn run(mut self) -> usize {
        let mut queue = BinaryHeap::new();
        let mut order = 0u64;
        let mut open = true;
        let mut early = Duration::from_millis(1);
        loop {
            let wake_at = queue.peek().map(|q: &Queued| q.send.ends_at - early);
            tokio::select! {
                biased;
                () = self.abort.cancelled() => return queue.len(),
                received = self.sends.recv(), if open => match received {
                    Some(send) => {
                        queue.push(Queued { send, order });
                        order += 1;
                        // Take every send that came with it in one wake-up.
                        while let Ok(send) = self.sends.try_recv() {
                            queue.push(Queued { send, order });
                            order += 1;
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
            self.end_due(&mut queue, &mut early);
            if !open && queue.is_empty() {
                return 0;
            }
        }
    }

    /// Ends every send due by now, counting `early` as already passed: frees
    /// its send slot and hands its result to the writer. Then moves `early`
    /// by how late (or early) those sends ended on average.
    fn end_due(&self, queue: &mut BinaryHeap<Queued>, early: &mut Duration) {
        let now = Instant::now();
        let mut ended = 0u32;
        let mut lateness_us = 0i64;
        while queue.peek().is_some_and(|q| q.send.ends_at <= now + *early) {
            let Some(Queued { send, .. }) = queue.pop() else {
                break;
            };
            lateness_us += signed_us(now, send.ends_at);
            let mut item = send.item;
            item.send_time_us = now.duration_since(send.started).as_micros() as u64;
            drop(send.send_slot);
            ended += 1;
            let _ = self.results.send(Finished {
                item,
                hold_slot: send.hold_slot,
            });
        }
        if ended > 0 {
            self.send_ended.notify_one();
            let step = EARLY_GAIN * lateness_us as f64 / f64::from(ended);
            let next = (early.as_micros() as f64 + step).clamp(0.0, MAX_EARLY.as_micros() as f64);
            *early = Duration::from_micros(next as u64);
        }
    }
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
    use std::time::Duration;

    use tokio::sync::Semaphore;

    use super::*;
    use crate::store::Outcome;

    fn send(id: &str, slots: &Arc<Semaphore>, started: Instant, after_ms: u64) -> InProgress {
        InProgress {
            started,
            ends_at: started + Duration::from_millis(after_ms),
            item: ReportItem {
                id: id.to_owned(),
                outcome: Outcome::Sent,
                send_time_us: 0,
            },
            send_slot: Arc::clone(slots).try_acquire_owned().unwrap(),
            hold_slot: Arc::clone(slots).try_acquire_owned().unwrap(),
        }
    }

    /// A gateway with its input and output ends.
    fn gateway(
        abort: &CancellationToken,
    ) -> (
        Gateway,
        mpsc::UnboundedSender<InProgress>,
        mpsc::UnboundedReceiver<Finished>,
    ) {
        let (sends_tx, sends) = mpsc::unbounded_channel();
        let (results, results_rx) = mpsc::unbounded_channel();
        let gateway = Gateway {
            sends,
            results,
            send_ended: Arc::new(Notify::new()),
            abort: abort.clone(),
        };
        (gateway, sends_tx, results_rx)
    }

    #[tokio::test(start_paused = true)]
    async fn sends_end_in_order_of_their_end_times_and_free_their_slots() {
        let slots = Arc::new(Semaphore::new(6));
        let (gateway, sends_tx, mut results_rx) = gateway(&CancellationToken::new());
        let gateway = tokio::spawn(gateway.run());
        let now = Instant::now();
        for (id, ms) in [("slow", 30), ("fast", 10), ("middle", 20)] {
            sends_tx.send(send(id, &slots, now, ms)).unwrap();
        }
        drop(sends_tx);
        let mut ended = Vec::new();
        while let Some(finished) = results_rx.recv().await {
            ended.push((finished.item.id, finished.item.send_time_us));
        }
        let order: Vec<&str> = ended.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(order, ["fast", "middle", "slow"]);
        // Each ends on its drawn time, or a little before it to make up for
        // a late timer (which a paused clock does not have).
        for ((_, took_us), drawn_ms) in ended.iter().zip([10u64, 20, 30]) {
            let drawn_us = drawn_ms * 1_000;
            assert!(
                (drawn_us - MAX_EARLY.as_micros() as u64..=drawn_us).contains(took_us),
                "{took_us} µs for a {drawn_ms} ms send"
            );
        }
        assert_eq!(gateway.await.unwrap(), 0, "nothing abandoned");
        assert_eq!(slots.available_permits(), 6, "every slot freed");
    }

    #[tokio::test(start_paused = true)]
    async fn wakes_earlier_after_sends_end_late_and_later_after_they_end_early() {
        let slots = Arc::new(Semaphore::new(4));
        let (gateway, _sends_tx, _results_rx) = gateway(&CancellationToken::new());
        let mut early = Duration::from_millis(1);
        let end_one = |send: InProgress, early: &mut Duration| {
            let mut queue = BinaryHeap::from([Queued { send, order: 0 }]);
            gateway.end_due(&mut queue, early);
            assert!(queue.is_empty(), "{early:?}");
        };
        // A send noticed 2 ms after its end: wake a tenth of that earlier.
        tokio::time::advance(Duration::from_millis(10)).await;
        let now = Instant::now();
        end_one(
            send("late", &slots, now - Duration::from_millis(10), 8),
            &mut early,
        );
        assert_eq!(early, Duration::from_micros(1_200));
        // A send ended 1.2 ms before its end (all of `early`): wake later.
        let mut soon = send("soon", &slots, now, 0);
        soon.ends_at = now + early;
        end_one(soon, &mut early);
        assert_eq!(early, Duration::from_micros(1_080));
    }

    #[tokio::test(start_paused = true)]
    async fn abort_abandons_the_sends_still_in_progress() {
        let slots = Arc::new(Semaphore::new(4));
        let abort = CancellationToken::new();
        let (gateway, sends_tx, mut results_rx) = gateway(&abort);
        let gateway = tokio::spawn(gateway.run());
        let now = Instant::now();
        sends_tx.send(send("quick", &slots, now, 5)).unwrap();
        sends_tx.send(send("endless", &slots, now, 60_000)).unwrap();
        let first = results_rx.recv().await.unwrap();
        assert_eq!(first.item.id, "quick");
        abort.cancel();
        assert_eq!(gateway.await.unwrap(), 1, "the endless send is abandoned");
        assert!(results_rx.recv().await.is_none(), "and writes no result");
    }
}
