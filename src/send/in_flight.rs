//! What the sender has in flight, and its bookkeeping: the ids of the
//! messages it holds (their leases are renewed until their results are
//! written), the reads on the wire, and the results gathering into the next
//! report call with the report calls on the wire.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::Instant;

use crate::store::{
    PendingReply, PreparedReport, ReadConnection, ReportItem, ReportReply, Retry, StoreError,
    StreamEntry,
};

/// Reads out at once on the reader connection: while the sender takes in one
/// reply, Redis already works on the next read.
const READS_IN_FLIGHT: usize = 2;
/// Most results in one report call.
const MAX_BATCH: usize = 2_000;
/// Report calls in flight at once: while Redis applies one batch, the next
/// is encoded and sent.
const REPORTS_IN_FLIGHT: usize = 2;
/// Fewest results a report call needs to go out while another is in flight,
/// or at once when none is (fewer for a sender of fewer send slots: see
/// [`Reports::new`]).
const MIN_PIPELINED_BATCH: usize = 64;
/// Longest a smaller batch waits for more results before it goes out
/// alone. Each report call costs Redis a fixed price (its checks, about
/// 100 us) however few results it carries, against 1-3 us per result: a
/// lane settling a thousand messages a second writes them twenty at a
/// time instead of one by one. The wait holds only hold slots, never send
/// slots, and delays nothing but the acknowledgement.
const LINGER: Duration = Duration::from_millis(20);

/// Ids of the messages this sender holds (read or claimed, not yet
/// written), each with when its lease was last reset in Redis: when it was
/// taken, or last renewed.
#[derive(Debug, Clone, Default)]
pub(super) struct InFlight(Arc<Mutex<HashMap<String, Instant>>>);

impl InFlight {
    pub(super) fn insert(&self, id: &str) {
        self.lock().insert(id.to_owned(), Instant::now());
    }

    pub(super) fn remove_all<'a>(&self, ids: impl Iterator<Item = &'a str>) {
        let mut held = self.lock();
        for id in ids {
            held.remove(id);
        }
    }

    /// The ids whose lease was last reset at least `age` ago: those a
    /// renewal must reach. Most messages are settled long before.
    pub(super) fn older_than(&self, age: Duration) -> Vec<String> {
        let now = Instant::now();
        self.lock()
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= age)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Records that the leases of `ids` were reset at `at` (those still held).
    pub(super) fn renewed(&self, ids: &[String], at: Instant) {
        let mut held = self.lock();
        for id in ids {
            if let Some(since) = held.get_mut(id) {
                *since = at;
            }
        }
    }

    /// How many messages the sender holds.
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        // A panic while holding this lock leaves a valid map behind.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The in-flight sets of every partition, for counting what the sender
/// holds in all.
#[derive(Debug, Clone, Default)]
pub(super) struct Held(Arc<Mutex<Vec<InFlight>>>);

impl Held {
    /// Counts `in_flight` too from now on.
    pub(super) fn add(&self, in_flight: InFlight) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(in_flight);
    }

    /// How many messages the sender holds in all its partitions.
    pub(super) fn len(&self) -> usize {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(InFlight::len)
            .sum()
    }
}

/// Where one partition's messages go: its writer, which takes their
/// results, and the set of messages held in it, whose leases that writer
/// renews. Each message carries its partition's, through the gateway.
#[derive(Debug)]
pub(super) struct LaneOut {
    /// The partition's writer.
    pub results: mpsc::UnboundedSender<Finished>,
    /// The messages held in the partition.
    pub in_flight: InFlight,
}

/// A finished attempt waiting to be written.
#[derive(Debug)]
pub(super) struct Finished {
    /// The result.
    pub item: ReportItem,
    /// The hold slot it occupies until written; dropping it frees the slot.
    pub hold_slot: OwnedSemaphorePermit,
}

/// A read sent to Redis and the hold slots its messages will take.
pub(super) struct PendingRead {
    pub hold: OwnedSemaphorePermit,
    pub reply: PendingReply<Vec<StreamEntry>>,
}

/// The reads on the wire, oldest first, and the connection they share.
pub(super) struct Reads {
    /// Opened when first needed, dropped after an error (it may be broken).
    pub reader: Option<ReadConnection>,
    /// Read failures are retried by this policy; a read that succeeds resets it.
    pub retry: Retry<'static>,
    /// Most messages one read asks for: its share of the concurrency, so that
    /// the slots its messages free start the next read while one is still out.
    pub per_read: usize,
    queue: VecDeque<PendingRead>,
}

impl Reads {
    /// No reads yet, for a sender of `concurrency` send slots.
    pub(super) fn new(concurrency: usize) -> Self {
        Self {
            reader: None,
            retry: Retry::new("read messages"),
            per_read: concurrency.div_ceil(READS_IN_FLIGHT),
            queue: VecDeque::with_capacity(READS_IN_FLIGHT),
        }
    }

    /// Whether another read may go out.
    pub(super) fn has_room(&self) -> bool {
        self.queue.len() < READS_IN_FLIGHT
    }

    /// Messages asked for by the reads on the wire.
    pub(super) fn asked(&self) -> usize {
        self.queue.iter().map(|r| r.hold.num_permits()).sum()
    }

    pub(super) fn push(&mut self, read: PendingRead) {
        self.queue.push_back(read);
    }

    pub(super) fn pop_oldest(&mut self) -> Option<PendingRead> {
        self.queue.pop_front()
    }

    /// Whether no read is out.
    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Polls the oldest read's reply without taking the read; pending while
    /// no read is out.
    pub(super) fn poll_oldest(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<Vec<StreamEntry>, StoreError>> {
        match self.queue.front_mut() {
            Some(read) => std::pin::Pin::new(&mut read.reply).poll(cx),
            None => std::task::Poll::Pending,
        }
    }
}

/// A batch of results whose report call is on the wire.
pub(super) struct PendingWrite {
    pub items: Vec<ReportItem>,
    /// The hold slots of its results: only held, and freed when the write
    /// is dropped, once Redis has it.
    _slots: Vec<OwnedSemaphorePermit>,
    pub report: PreparedReport,
    pub reply: PendingReply<ReportReply>,
}

/// Results gathering into the next report call, and the report calls on
/// the wire, oldest first.
#[derive(Default)]
pub(super) struct Reports {
    /// The next batch's results and the slots they hold, kept apart so the
    /// results can be encoded as they are, without a copy.
    pub batch: Vec<ReportItem>,
    slots: Vec<OwnedSemaphorePermit>,
    writes: VecDeque<PendingWrite>,
    /// Whether results may still come.
    open: bool,
    /// Numbers the report calls, so a call sent again is applied once.
    seq: u64,
    /// When the oldest result of the batch came.
    first_at: Option<Instant>,
    /// A batch this big goes out without lingering.
    full: usize,
}

impl Reports {
    /// Nothing gathered yet, results still to come, for a sender of
    /// `concurrency` send slots. A batch of as many results as send slots
    /// goes out at once: lingering longer would keep the sender's hold
    /// slots (three per send slot) from reading more.
    pub(super) fn new(concurrency: usize) -> Self {
        Self {
            open: true,
            writes: VecDeque::with_capacity(REPORTS_IN_FLIGHT),
            full: concurrency.clamp(1, MIN_PIPELINED_BATCH),
            ..Self::default()
        }
    }

    /// Takes the results ready now, up to a full batch.
    pub(super) fn gather(&mut self, results: &mut mpsc::UnboundedReceiver<Finished>) {
        while self.can_take() {
            match results.try_recv() {
                Ok(finished) => self.take(Some(finished)),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => self.open = false,
            }
        }
    }

    /// Whether the batch has room and results may still come.
    pub(super) fn can_take(&self) -> bool {
        self.open && self.batch.len() < MAX_BATCH
    }

    /// Adds a result to the batch; `None` means no more will come.
    pub(super) fn take(&mut self, next: Option<Finished>) {
        match next {
            Some(finished) => {
                self.first_at.get_or_insert_with(Instant::now);
                self.batch.push(finished.item);
                self.slots.push(finished.hold_slot);
            }
            None => self.open = false,
        }
    }

    /// A write joins one in flight only with enough results to be worth
    /// its own call; otherwise the results wait for the next one.
    pub(super) fn worth_writing(&self) -> bool {
        match self.writes.len() {
            0 => {
                self.batch.len() >= self.full
                    || (!self.batch.is_empty() && (!self.open || self.lingered()))
            }
            n => n < REPORTS_IN_FLIGHT && self.batch.len() >= self.full,
        }
    }

    fn lingered(&self) -> bool {
        self.first_at.is_some_and(|at| at.elapsed() >= LINGER)
    }

    /// When a small batch with no write in flight is due to go out anyway.
    pub(super) fn due_at(&self) -> Option<Instant> {
        if self.writes.is_empty() {
            self.first_at.map(|at| at + LINGER)
        } else {
            None
        }
    }

    /// Whether every result has come and been written.
    pub(super) fn is_done(&self) -> bool {
        !self.open && self.batch.is_empty() && self.writes.is_empty()
    }

    pub(super) fn has_writes(&self) -> bool {
        !self.writes.is_empty()
    }

    /// The number of the next report call.
    pub(super) fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Puts the batch on the wire as `report`, its reply to come as `reply`.
    pub(super) fn push_write(&mut self, report: PreparedReport, reply: PendingReply<ReportReply>) {
        self.first_at = None;
        self.writes.push_back(PendingWrite {
            items: std::mem::take(&mut self.batch),
            _slots: std::mem::take(&mut self.slots),
            report,
            reply,
        });
    }

    pub(super) fn pop_oldest(&mut self) -> Option<PendingWrite> {
        self.writes.pop_front()
    }

    /// Waits for the oldest write's reply without taking the write; never
    /// ends while no write is out.
    pub(super) async fn oldest_reply(&mut self) -> Result<ReportReply, StoreError> {
        match self.writes.front_mut() {
            Some(write) => (&mut write.reply).await,
            None => std::future::pending().await,
        }
    }

    /// Results gathered or on the wire: unwritten if the writer gives up.
    pub(super) fn unwritten(&self) -> u64 {
        self.batch.len() as u64
            + self
                .writes
                .iter()
                .map(|w| w.items.len() as u64)
                .sum::<u64>()
    }
}
