//! A point-in-time view of the queue, read in one round trip, with the figures
//! derived from it. Averages come from sums and counts; no float lives in Redis.

use std::collections::HashMap;

use serde::Serialize;

use crate::latency::Histogram;
use crate::store::{Store, StoreError};

/// Counters and queue figures at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    /// Entries ever added to the stream, by anyone (XINFO STREAM entries-added).
    pub produced: u64,
    /// Messages our producers recorded writing.
    pub produced_by_producers: u64,
    /// Entries in the stream now.
    pub stream_length: u64,
    /// Messages acknowledged as sent, each counted once.
    pub sent: u64,
    /// Failed send attempts.
    pub failed: u64,
    /// Messages in the dead stream, by the counter.
    pub dead: u64,
    /// Messages dead-lettered because their attempts ran out.
    pub dead_max_attempts: u64,
    /// Messages dead-lettered because they could not be decoded.
    pub dead_malformed: u64,
    /// Messages dead-lettered because they were deleted while pending.
    pub dead_deleted: u64,
    /// Successful sends of messages already settled (redeliveries).
    pub duplicates: u64,
    /// Send attempts of any outcome.
    pub attempts: u64,
    /// Sum of all attempts' simulated send times, in microseconds.
    pub send_time_us: u64,
    /// Entries delivered to a sender and not yet settled.
    pub pending: u64,
    /// Entries never delivered yet; `None` when Redis cannot tell.
    pub lag: Option<u64>,
    /// Whether the consumer group exists.
    pub group_exists: bool,
    /// Length of the dead stream.
    pub dead_length: u64,
    /// Producer runs started.
    pub producer_runs_started: u64,
    /// Producer runs finished.
    pub producer_runs_finished: u64,
    /// Send times of all attempts, by bucket.
    pub latency: Histogram,
}

impl Snapshot {
    /// Reads a snapshot: one Function call, whatever the queue's size.
    pub async fn read(store: &Store) -> Result<Self, StoreError> {
        Ok(Self::from_fields(&store.snapshot_fields().await?))
    }

    /// Builds a snapshot from the named figures `sms_snapshot` returns.
    pub fn from_fields(fields: &HashMap<String, i64>) -> Self {
        let get = |name: &str| fields.get(name).copied().unwrap_or(0).max(0) as u64;
        Self {
            produced: get("entries_added"),
            produced_by_producers: get("produced"),
            stream_length: get("length"),
            sent: get("sent"),
            failed: get("failed"),
            dead: get("dead"),
            dead_max_attempts: get("dead_max_attempts"),
            dead_malformed: get("dead_malformed"),
            dead_deleted: get("dead_deleted"),
            duplicates: get("duplicates"),
            attempts: get("attempts"),
            send_time_us: get("send_time_us"),
            pending: get("pending"),
            lag: fields.get("lag").and_then(|lag| u64::try_from(*lag).ok()),
            group_exists: get("group_exists") == 1,
            dead_length: get("dead_length"),
            producer_runs_started: get("producer_runs_started"),
            producer_runs_finished: get("producer_runs_finished"),
            latency: Histogram::from_fields(fields),
        }
    }

    /// Mean simulated send time over all attempts, in milliseconds.
    pub fn avg_send_ms(&self) -> Option<f64> {
        (self.attempts > 0).then(|| self.send_time_us as f64 / self.attempts as f64 / 1000.0)
    }

    /// Messages settled for good: sent or dead.
    pub fn settled(&self) -> u64 {
        self.sent + self.dead
    }

    /// Whether at least one producer ran and none is still running.
    pub fn producers_finished(&self) -> bool {
        self.producer_runs_finished >= 1
            && self.producer_runs_finished >= self.producer_runs_started
    }

    /// Whether all the work is done: producers finished, every entry delivered,
    /// nothing pending, and every produced message sent or dead.
    pub fn is_done(&self) -> bool {
        self.producers_finished()
            && self.group_exists
            && self.pending == 0
            && self.lag.is_none_or(|lag| lag == 0)
            && self.settled() >= self.produced
    }
}

/// One sender's figures: its counters and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SenderSnapshot {
    /// The sender name.
    pub name: String,
    /// Messages it sent (first acknowledgements).
    pub sent: u64,
    /// Its failed attempts.
    pub failed: u64,
    /// Messages it dead-lettered.
    pub dead: u64,
    /// Its attempts of any outcome.
    pub attempts: u64,
    /// Sum of its send times, in microseconds.
    pub send_time_us: u64,
    /// Messages it holds now.
    pub pending: u64,
    /// Milliseconds since it last read or claimed.
    pub idle_ms: u64,
}

impl SenderSnapshot {
    /// Its mean send time per attempt, in milliseconds.
    pub fn avg_send_ms(&self) -> Option<f64> {
        (self.attempts > 0).then(|| self.send_time_us as f64 / self.attempts as f64 / 1000.0)
    }

    /// Every sender of the group with its counters: two round trips whatever
    /// the number of messages.
    pub async fn read_all(store: &Store) -> Result<Vec<Self>, StoreError> {
        let consumers = store.consumers().await?;
        let names: Vec<String> = consumers.iter().map(|c| c.name.clone()).collect();
        let stats = store.sender_stats(&names).await?;
        let mut senders: Vec<Self> = consumers
            .into_iter()
            .zip(stats)
            .map(|(consumer, fields)| {
                let get = |name: &str| fields.get(name).copied().unwrap_or(0).max(0) as u64;
                Self {
                    sent: get("sent"),
                    failed: get("failed"),
                    dead: get("dead"),
                    attempts: get("attempts"),
                    send_time_us: get("send_time_us"),
                    pending: consumer.pending,
                    idle_ms: consumer.idle_ms,
                    name: consumer.name,
                }
            })
            .collect();
        senders.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(senders)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, i64)]) -> HashMap<String, i64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn derived_figures() {
        let snap = Snapshot::from_fields(&fields(&[
            ("entries_added", 10),
            ("sent", 7),
            ("dead", 3),
            ("attempts", 12),
            ("send_time_us", 2_400_000),
            ("group_exists", 1),
            ("lag", 0),
            ("producer_runs_started", 1),
            ("producer_runs_finished", 1),
        ]));
        assert_eq!(snap.avg_send_ms(), Some(200.0));
        assert!(snap.is_done());
        let unknown_lag = Snapshot::from_fields(&fields(&[("lag", -1)]));
        assert_eq!(unknown_lag.lag, None);
        assert_eq!(unknown_lag.avg_send_ms(), None);
    }

    #[test]
    fn not_done_while_work_remains() {
        let base = [
            ("entries_added", 10),
            ("sent", 10),
            ("group_exists", 1),
            ("lag", 0),
            ("producer_runs_started", 1),
            ("producer_runs_finished", 1),
        ];
        assert!(Snapshot::from_fields(&fields(&base)).is_done());
        for (field, value) in [
            ("pending", 1),
            ("lag", 2),
            ("producer_runs_started", 2),
            ("sent", 9),
        ] {
            let mut changed = fields(&base);
            changed.insert(field.to_string(), value);
            assert!(
                !Snapshot::from_fields(&changed).is_done(),
                "{field}={value} should not be done"
            );
        }
    }
}
