//! How the figures of a queue's partitions make the queue's: counters,
//! lengths, pending and lag add up; the oldest age is the largest; the
//! queue is sound only when every partition is; a sender is one row
//! whatever the partitions it reads.

use std::collections::{BTreeMap, BTreeSet};

use super::{QueueState, SenderSnapshot, Snapshot};
use crate::latency::Histogram;
use crate::store::{Store, StoreError};

impl Snapshot {
    /// The queue's figures from its partitions' own (in partition order),
    /// which are kept in `partitions`. Those of the queue as a whole
    /// (retention, epoch) are partition 0's. A queue with one partition
    /// shows exactly that partition's figures; with more, a state that is
    /// not sound names the partition it was found in.
    pub fn total(parts: Vec<Snapshot>) -> Snapshot {
        let mut parts = parts.into_iter();
        let Some(mut total) = parts.next() else {
            return Snapshot::default();
        };
        let first = total.clone();
        let mut all = vec![first];
        for (partition, part) in (1..).zip(parts) {
            total.add(&part, partition);
            all.push(part);
        }
        if all.len() > 1 && total.state == all[0].state && total.state != QueueState::Sound {
            total.state_detail = format!("partition 0: {}", total.state_detail);
        }
        total.partitions = all;
        total
    }

    /// Adds partition `partition`'s figures to these.
    fn add(&mut self, other: &Snapshot, partition: u32) {
        for (sum, value) in [
            (&mut self.produced, other.produced),
            (&mut self.produced_by_producers, other.produced_by_producers),
            (&mut self.stream_length, other.stream_length),
            (&mut self.sent, other.sent),
            (&mut self.failed, other.failed),
            (&mut self.dead, other.dead),
            (&mut self.dead_max_attempts, other.dead_max_attempts),
            (&mut self.dead_malformed, other.dead_malformed),
            (&mut self.dead_deleted, other.dead_deleted),
            (&mut self.duplicates, other.duplicates),
            (&mut self.attempts, other.attempts),
            (&mut self.send_time_us, other.send_time_us),
            (&mut self.pending, other.pending),
            (&mut self.dead_length, other.dead_length),
            (&mut self.trimmed, other.trimmed),
            (&mut self.dead_trimmed, other.dead_trimmed),
            (&mut self.dead_purged, other.dead_purged),
            (&mut self.requeued, other.requeued),
            (&mut self.abandoned, other.abandoned),
            (&mut self.uncounted, other.uncounted),
            (&mut self.skipped, other.skipped),
            (&mut self.deferred, other.deferred),
            (&mut self.dead_expired, other.dead_expired),
            (&mut self.dead_requeued, other.dead_requeued),
            (&mut self.unseen, other.unseen),
        ] {
            *sum += value;
        }
        // Unknown in one partition is unknown for the queue.
        self.lag = self.lag.zip(other.lag).map(|(a, b)| a + b);
        self.group_exists &= other.group_exists;
        for (sum, count) in self.latency.counts.iter_mut().zip(other.latency.counts) {
            *sum += count;
        }
        self.oldest_queued_age_ms = self.oldest_queued_age_ms.max(other.oldest_queued_age_ms);
        self.oldest_pending_age_ms = self.oldest_pending_age_ms.max(other.oldest_pending_age_ms);
        let floor_age = |floor: &Option<(String, u64)>| floor.as_ref().map(|(_, age)| *age);
        if floor_age(&other.floor) > floor_age(&self.floor) {
            self.floor.clone_from(&other.floor);
        }
        if self.state == QueueState::Sound && other.state != QueueState::Sound {
            self.state = other.state;
            self.state_detail = format!("partition {partition}: {}", other.state_detail);
        }
    }
}

/// The senders of every partition (in partition order), one row per name:
/// counters and pending summed, pending kept per partition, the least idle
/// time, live when its name is held in any partition.
pub(super) fn merge_senders(parts: Vec<Vec<SenderSnapshot>>, count: usize) -> Vec<SenderSnapshot> {
    let mut merged: BTreeMap<String, SenderSnapshot> = BTreeMap::new();
    for (partition, senders) in parts.into_iter().enumerate() {
        for sender in senders {
            let row = merged
                .entry(sender.name.clone())
                .or_insert_with(|| SenderSnapshot {
                    name: sender.name.clone(),
                    sent: 0,
                    failed: 0,
                    dead: 0,
                    attempts: 0,
                    send_time_us: 0,
                    pending: 0,
                    pending_by_partition: vec![0; count],
                    idle_ms: u64::MAX,
                    live: false,
                    gateway: String::new(),
                    breaker: String::new(),
                    breaker_opened: 0,
                    channel: String::new(),
                    latency: Histogram::default(),
                });
            if row.gateway.is_empty() {
                row.gateway.clone_from(&sender.gateway);
                row.breaker.clone_from(&sender.breaker);
            }
            row.breaker_opened += sender.breaker_opened;
            row.sent += sender.sent;
            row.failed += sender.failed;
            row.dead += sender.dead;
            row.attempts += sender.attempts;
            row.send_time_us += sender.send_time_us;
            row.latency.merge(&sender.latency);
            row.pending += sender.pending;
            if let Some(held) = row.pending_by_partition.get_mut(partition) {
                *held = sender.pending;
            }
            row.idle_ms = row.idle_ms.min(sender.idle_ms);
            row.live |= sender.live;
        }
    }
    merged.into_values().collect()
}

/// How many of the group's senders are alive: names held by a live process
/// in any partition, each counted once.
pub(super) async fn live_sender_count(store: &Store) -> Result<u64, StoreError> {
    let live = store
        .each_partition(|partition| async move {
            let inspector = partition.inspector();
            let names: Vec<String> = inspector
                .consumers()
                .await?
                .into_iter()
                .map(|c| c.name)
                .collect();
            let held = inspector.live_names(&names).await?;
            Ok(names
                .into_iter()
                .zip(held)
                .filter_map(|(name, live)| live.then_some(name))
                .collect::<Vec<_>>())
        })
        .await?;
    Ok(live.into_iter().flatten().collect::<BTreeSet<_>>().len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(
        produced: u64,
        sent: u64,
        pending: u64,
        lag: Option<u64>,
        age: Option<u64>,
    ) -> Snapshot {
        Snapshot {
            produced,
            sent,
            pending,
            lag,
            oldest_queued_age_ms: age,
            group_exists: true,
            ..Snapshot::default()
        }
    }

    #[test]
    fn one_partition_is_the_queue() {
        let only = part(10, 7, 1, Some(2), Some(50));
        let total = Snapshot::total(vec![only.clone()]);
        assert_eq!(total.partitions, vec![only.clone()]);
        assert_eq!(
            Snapshot {
                partitions: Vec::new(),
                ..total
            },
            only
        );
    }

    #[test]
    fn counters_add_up_and_the_oldest_age_is_the_largest() {
        let total = Snapshot::total(vec![
            part(10, 7, 1, Some(2), Some(50)),
            part(5, 5, 0, Some(0), None),
            part(8, 2, 3, Some(3), Some(900)),
        ]);
        assert_eq!(
            (total.produced, total.sent, total.pending, total.lag),
            (23, 14, 4, Some(5))
        );
        assert_eq!(total.oldest_queued_age_ms, Some(900));
        assert_eq!(total.partitions.len(), 3);
        let unknown = Snapshot::total(vec![
            part(1, 1, 0, Some(0), None),
            part(1, 0, 0, None, None),
        ]);
        assert_eq!(unknown.lag, None, "one unknown lag makes the total unknown");
    }

    #[test]
    fn a_partition_not_sound_is_named() {
        let mut damaged = part(1, 1, 0, Some(0), None);
        damaged.state = QueueState::Damaged;
        damaged.state_detail = "counter sent is not a number".to_owned();
        let total = Snapshot::total(vec![part(1, 1, 0, Some(0), None), damaged.clone()]);
        assert_eq!(total.state, QueueState::Damaged);
        assert_eq!(
            total.state_detail,
            "partition 1: counter sent is not a number"
        );
        let first = Snapshot::total(vec![damaged.clone(), part(1, 1, 0, Some(0), None)]);
        assert_eq!(
            first.state_detail,
            "partition 0: counter sent is not a number"
        );
        assert_eq!(
            Snapshot::total(vec![damaged]).state_detail,
            "counter sent is not a number",
            "one partition: as it always was"
        );
    }

    #[test]
    fn a_sender_is_one_row_with_its_pending_per_partition() {
        let sender =
            |name: &str, sent: u64, pending: u64, idle_ms: u64, live: bool| SenderSnapshot {
                gateway: String::new(),
                breaker: String::new(),
                breaker_opened: 0,
                channel: String::new(),
                name: name.to_owned(),
                sent,
                failed: 0,
                dead: 0,
                attempts: sent,
                send_time_us: 0,
                latency: Histogram {
                    counts: [sent; crate::latency::BOUNDS_US.len() + 1],
                },
                pending,
                pending_by_partition: Vec::new(),
                idle_ms,
                live,
            };
        let merged = merge_senders(
            vec![
                vec![sender("b", 1, 2, 500, false)],
                vec![],
                vec![sender("b", 3, 4, 100, true), sender("a", 5, 0, 9, false)],
            ],
            3,
        );
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].name, "a");
        assert_eq!(merged[0].pending_by_partition, [0, 0, 0]);
        let b = &merged[1];
        assert_eq!((b.sent, b.pending, b.idle_ms, b.live), (4, 6, 100, true));
        assert_eq!(b.pending_by_partition, [2, 0, 4]);
        assert_eq!(b.latency.counts[0], 4, "histograms add up over partitions");
    }
}
