//! Writes a run's split batches: one lane per partition, each a pipelined
//! connection to the partition's server ([`BatchConnection`]), on which the
//! partition's parts land in the order of their batches.
//!
//! A batch's head (its part on partition 0, whose mark says the batch is
//! whole) waits until the batch's other parts have landed; heads go out in
//! batch order, so partition 0 keeps the order of the batches too. A run on
//! one partition has heads only, and writes each batch as it comes.

use std::collections::VecDeque;

use super::split::SplitBatch;
use crate::store::{
    BatchConnection, BatchWrite, CommittedBatch, PreparedBatch, Producer, Retry, StartedBatch,
    StoreError,
};

/// Committed parts per lane whose outcome is still to come. The replies
/// come in order, so this only bounds memory; two keep the socket busy.
const COMMITTED_IN_FLIGHT: usize = 2;

/// Batches whose heads may wait for their parts before the writer waits for
/// those parts itself. A lane lands a part about [`COMMITTED_IN_FLIGHT`] + 1
/// batches after it took it, so heads wait that long when every partition
/// gets a part of every batch; this bounds the wait (and the heads held) when
/// one partition gets a part only now and then.
const HEADS_WAITING: usize = COMMITTED_IN_FLIGHT + 2;

/// Writes the parts of the batches of a run, each partition's in order.
pub(super) struct Writers {
    /// One per partition of the run, in order; lane 0 writes the heads.
    lanes: Vec<Lane>,
    /// Batches whose head waits for their parts to land, oldest first.
    waiting: VecDeque<Waiting>,
    /// Messages written so far.
    pub(super) written: u64,
}

/// A batch whose head is not written yet.
struct Waiting {
    seq: u64,
    head: PreparedBatch,
    /// The partitions whose part of the batch has not landed yet.
    parts_left: Vec<u32>,
}

impl Writers {
    /// Connects a lane for each of `producers`, the handles of the run's
    /// partitions in order.
    pub(super) async fn connect(producers: &[Producer]) -> Result<Self, StoreError> {
        let mut lanes = Vec::with_capacity(producers.len());
        for producer in producers {
            lanes.push(Lane::connect(producer.clone()).await?);
        }
        Ok(Self {
            lanes,
            waiting: VecDeque::with_capacity(HEADS_WAITING + 1),
            written: 0,
        })
    }

    /// Sends `batch`'s parts on their lanes, and the heads of the batches
    /// whose parts have all landed.
    pub(super) async fn push(&mut self, batch: SplitBatch) -> Result<(), StoreError> {
        let parts_left = batch
            .parts
            .iter()
            .map(|(partition, _)| *partition)
            .collect();
        for (partition, part) in batch.parts {
            self.lanes[partition as usize].push(part).await?;
        }
        self.waiting.push_back(Waiting {
            seq: batch.seq,
            head: batch.head,
            parts_left,
        });
        self.release_heads().await?;
        while self.waiting.len() > HEADS_WAITING {
            let Some(oldest) = self.waiting.front() else {
                break;
            };
            for partition in oldest.parts_left.clone() {
                self.lanes[partition as usize].flush().await?;
            }
            self.release_heads().await?;
        }
        Ok(())
    }

    /// Commits every part and head taken, and waits for every outcome.
    pub(super) async fn finish(&mut self) -> Result<(), StoreError> {
        for lane in self.lanes.iter_mut().skip(1) {
            lane.flush().await?;
        }
        self.release_heads().await?;
        self.lanes[0].flush().await?;
        self.take_landed();
        Ok(())
    }

    /// Sends, in order, the heads of the oldest batches whose parts have all
    /// landed.
    async fn release_heads(&mut self) -> Result<(), StoreError> {
        self.take_landed();
        while self
            .waiting
            .front()
            .is_some_and(|oldest| oldest.parts_left.is_empty())
        {
            if let Some(ready) = self.waiting.pop_front() {
                self.lanes[0].push(ready.head).await?;
            }
        }
        self.take_landed();
        Ok(())
    }

    /// Counts what the lanes saw land, and ticks the parts off their batches.
    fn take_landed(&mut self) {
        for (lane, partition) in self.lanes.iter_mut().zip(0u32..) {
            for (seq, messages) in lane.landed.drain(..) {
                self.written += messages as u64;
                if partition == 0 {
                    continue;
                }
                if let Some(batch) = self.waiting.iter_mut().find(|w| w.seq == seq) {
                    batch.parts_left.retain(|p| *p != partition);
                }
            }
        }
    }
}

/// Writes one partition's parts in order on one connection. Each part is
/// started (check and queued commands sent) as soon as the one before it is
/// committed: so Redis always has the next part to queue while the producer
/// turns around, and one connection keeps the parts in order, so the same
/// seed gives the same stream.
struct Lane {
    store: Producer,
    conn: BatchConnection,
    /// The newest part, started on `conn`, not yet committed.
    started: Option<(PreparedBatch, StartedBatch)>,
    /// Committed parts, oldest first, their outcomes still to come.
    committed: VecDeque<(PreparedBatch, CommittedBatch)>,
    /// Parts seen landed and not yet taken: (seq, messages).
    landed: Vec<(u64, usize)>,
}

impl Lane {
    async fn connect(store: Producer) -> Result<Self, StoreError> {
        let conn = store
            .retrying("connect the producer", || store.batch_connection())
            .await?;
        Ok(Self {
            store,
            conn,
            started: None,
            committed: VecDeque::with_capacity(COMMITTED_IN_FLIGHT + 1),
            landed: Vec::new(),
        })
    }

    /// Commits the part started before and starts `part`.
    async fn push(&mut self, part: PreparedBatch) -> Result<(), StoreError> {
        self.commit_started().await?;
        self.started = Some((part.clone(), self.conn.start(&part)));
        while self.committed.len() > COMMITTED_IN_FLIGHT {
            self.settle_oldest().await?;
        }
        Ok(())
    }

    /// Commits the started part, and waits for every outcome.
    async fn flush(&mut self) -> Result<(), StoreError> {
        self.commit_started().await?;
        while !self.committed.is_empty() {
            self.settle_oldest().await?;
        }
        Ok(())
    }

    async fn commit_started(&mut self) -> Result<(), StoreError> {
        let Some((part, started)) = self.started.take() else {
            return Ok(());
        };
        match started.commit().await {
            Ok(committed) => self.committed.push_back((part, committed)),
            Err(err) => self.recover(part, err).await?,
        }
        Ok(())
    }

    async fn settle_oldest(&mut self) -> Result<(), StoreError> {
        let Some((part, committed)) = self.committed.pop_front() else {
            return Ok(());
        };
        match committed.outcome().await {
            Ok(_) => self.landed.push((part.seq(), part.len())),
            Err(err) => self.recover(part, err).await?,
        }
        Ok(())
    }

    /// After `part` failed with `err`: writes it on a fresh connection, then
    /// moves to a new connection (the old one may hold an open transaction),
    /// starting there the part started on the old one but never committed
    /// (its `EXEC` was not sent, so it cannot land from there).
    async fn recover(&mut self, part: PreparedBatch, err: StoreError) -> Result<(), StoreError> {
        write_again(&self.store, &part, err).await?;
        self.landed.push((part.seq(), part.len()));
        let store = &self.store;
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

/// Sends a part whose write failed with `err` again until Redis has it. The
/// first try may still be queued in Redis behind the timed-out reply and run
/// later; then one of the two lands and the other adds nothing. A part
/// retried here may land after parts sent later, if those succeeded where it
/// failed.
async fn write_again(
    store: &Producer,
    part: &PreparedBatch,
    err: StoreError,
) -> Result<(), StoreError> {
    const WHAT: &str = "write a batch again";
    if !Retry::new(WHAT).retries(&err) {
        return Err(err);
    }
    tracing::warn!(error = %err, seq = part.seq(), "writing a batch failed; sending it again");
    let outcome = store.retrying(WHAT, || store.write_batch(part)).await?;
    if outcome == BatchWrite::AlreadyWritten {
        tracing::info!(
            seq = part.seq(),
            "the batch had landed before the failure; not added again"
        );
    }
    Ok(())
}
