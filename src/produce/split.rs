//! A run's batches as the producer writes them: generated from the run's
//! seed, each message routed to its partition ([`crate::routing`]), and
//! split into one part per partition the batch's messages go to.
//!
//! Every batch has a part on partition 0, its head, even when none of its
//! messages go there: the head's mark in partition 0's batches hash says
//! that the whole batch is written, so it is written last, once the other
//! parts have landed (`writer.rs`). Counting the heads (one `HLEN`) counts
//! the whole batches, and a resumed run skips a batch whose head it finds.

use crate::channel::ChannelKind;
use std::collections::HashMap;

use tokio::sync::mpsc;

use crate::generator::MessageGenerator;
use crate::message::Message;
use crate::routing::Router;
use crate::store::{PreparedBatch, Producer, RunPlan, RunRoute};

/// Batches generated ahead of the writer: enough that the next is always
/// ready when the writer turns around, few enough to bound memory.
const GENERATED_AHEAD: usize = 2;

/// One batch of a run, split by partition.
#[derive(Debug)]
pub(super) struct SplitBatch {
    /// Its number within the run, from 1.
    pub(super) seq: u64,
    /// Its parts on partitions other than 0, each with its partition, in
    /// partition order; a part written before is left out.
    pub(super) parts: Vec<(u32, PreparedBatch)>,
    /// Its part on partition 0 (maybe without messages), written last.
    pub(super) head: PreparedBatch,
}

/// What a run had written before its producer took it over (nothing for a
/// new run).
#[derive(Debug, Default)]
pub(super) struct Written {
    /// Whole batches: those whose head is marked on partition 0.
    pub(super) whole: HashMap<u64, u64>,
    /// For each partition of the run (none for 0, whose parts are the
    /// heads), the parts marked there, with their messages.
    pub(super) parts: Vec<HashMap<u64, u64>>,
}

impl Written {
    /// Messages written: every message of each whole batch, and those of
    /// the parts written of the others.
    pub(super) fn messages(&self, plan: &RunPlan) -> u64 {
        let whole: u64 = self.whole.keys().map(|&seq| batch_len(plan, seq)).sum();
        let parts: u64 = self
            .parts
            .iter()
            .flat_map(|marks| marks.iter())
            .filter(|(seq, _)| !self.whole.contains_key(seq))
            .map(|(_, messages)| messages)
            .sum();
        whole + parts
    }

    fn has_part(&self, partition: u32, seq: u64) -> bool {
        self.parts
            .get(partition as usize)
            .is_some_and(|marks| marks.contains_key(&seq))
    }
}

/// Messages in batch `seq` (numbered from 1) of `plan`: the last batch of a
/// run whose count is not a multiple of the batch size is short.
pub(super) fn batch_len(plan: &RunPlan, seq: u64) -> u64 {
    plan.count
        .saturating_sub(seq.saturating_sub(1).saturating_mul(plan.batch))
        .min(plan.batch)
}

/// Where the run starts its round robin: its seed's, so that a resumed run
/// sends each message where the first producer did, and runs do not all
/// start at partition 0.
fn round_robin_start(plan: &RunPlan, route: &RunRoute) -> u32 {
    (plan.seed % u64::from(route.partitions.max(1))) as u32
}

/// `messages` by partition (index = partition, out of `partitions`), each
/// in the order generated.
fn split(router: &mut Router, messages: Vec<Message>, partitions: u32) -> Vec<Vec<Message>> {
    if partitions <= 1 {
        return vec![messages];
    }
    let mut by_partition: Vec<Vec<Message>> = (0..partitions).map(|_| Vec::new()).collect();
    for message in messages {
        let partition = router.route(&message.recipient, partitions);
        by_partition[partition as usize].push(message);
    }
    by_partition
}

/// Generates, routes and encodes the run's batches, in order, on a thread
/// of its own, up to [`GENERATED_AHEAD`] ahead of the writer, leaving out
/// what `written` holds; stops when the receiver is dropped. `producers`
/// are the handles of the route's partitions, in order. Ends with how many
/// batches have a part on each partition, written now or before (complete
/// only once every batch was generated).
///
/// On the writer's task a batch's `EXEC` would wait until the next batch was
/// generated, and Redis would wait for it whenever that took longer than
/// its work on the batch before.
pub(super) fn generate(
    producers: Vec<Producer>,
    plan: &RunPlan,
    route: &RunRoute,
    written: Written,
    run_id: String,
) -> (
    mpsc::Receiver<SplitBatch>,
    tokio::task::JoinHandle<Vec<u64>>,
) {
    let (tx, rx) = mpsc::channel(GENERATED_AHEAD);
    let RunPlan { count, seed, batch } = *plan;
    let partitions = route.partitions.max(1);
    let mut router = Router::new(route.routing.clone(), round_robin_start(plan, route));
    let handle = tokio::task::spawn_blocking(move || {
        let mut parts_on = vec![0u64; partitions as usize];
        // Messages get an e-mail address too when the queue has a channel
        // that sends e-mail.
        let mut generator = MessageGenerator::seeded(seed);
        if producers[0]
            .channels()
            .iter()
            .any(|c| c.kind == ChannelKind::Email)
        {
            generator = generator.with_emails();
        }
        let mut generated: u64 = 0;
        let mut seq: u64 = 0;
        while generated < count {
            let size = (count - generated).min(batch);
            let now_ms = crate::message::now_ms();
            let messages: Vec<Message> =
                (0..size).map(|_| generator.next_message(now_ms)).collect();
            seq += 1;
            generated += size;
            // A resumed run draws and routes the batches written before too,
            // so that the generator and the round robin are where the first
            // producer's were.
            let mut by_partition = split(&mut router, messages, partitions);
            parts_on[0] += 1;
            for (partition, part) in by_partition.iter().enumerate().skip(1) {
                parts_on[partition] += u64::from(!part.is_empty());
            }
            if written.whole.contains_key(&seq) {
                continue;
            }
            let head_messages = std::mem::take(&mut by_partition[0]);
            let parts = by_partition
                .iter()
                .zip(0u32..)
                .skip(1)
                .filter(|(part, partition)| !part.is_empty() && !written.has_part(*partition, seq))
                .map(|(part, partition)| {
                    let producer = &producers[partition as usize];
                    (partition, producer.prepare_batch(&run_id, seq, part))
                })
                .collect();
            let head = producers[0].prepare_batch(&run_id, seq, &head_messages);
            if tx.blocking_send(SplitBatch { seq, parts, head }).is_err() {
                break;
            }
        }
        parts_on
    });
    (rx, handle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::{Routing, partition_of_key};

    fn messages(n: u64) -> Vec<Message> {
        let mut generator = MessageGenerator::seeded(3);
        (0..n).map(|_| generator.next_message(0)).collect()
    }

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
    fn a_batch_splits_by_recipient_keeping_each_partitions_order() {
        let all = messages(200);
        let mut router = Router::new(Routing::Recipient, 0);
        let parts = split(&mut router, all.clone(), 6);
        assert_eq!(parts.len(), 6);
        for (partition, part) in (0u32..).zip(&parts) {
            assert!(
                part.iter()
                    .all(|m| partition_of_key(m.recipient.as_bytes(), 6) == partition),
                "partition {partition} holds a message routed elsewhere"
            );
            let in_order: Vec<&Message> = all
                .iter()
                .filter(|m| partition_of_key(m.recipient.as_bytes(), 6) == partition)
                .collect();
            assert_eq!(part.iter().collect::<Vec<_>>(), in_order);
        }
        let mut one = Router::new(Routing::RoundRobin, 0);
        assert_eq!(split(&mut one, all.clone(), 1), vec![all]);
    }

    #[test]
    fn written_messages_count_whole_batches_and_the_parts_of_others() {
        let plan = RunPlan {
            count: 25,
            seed: 0,
            batch: 10,
        };
        let written = Written {
            whole: HashMap::from([(1, 4), (3, 0)]),
            parts: vec![
                HashMap::new(),
                HashMap::from([(1, 6), (2, 3)]),
                HashMap::from([(2, 2), (3, 5)]),
            ],
        };
        // Batch 1 (10) and 3 (5) whole; of batch 2, parts of 3 and 2.
        assert_eq!(written.messages(&plan), 10 + 5 + 3 + 2);
        assert!(written.has_part(2, 2) && !written.has_part(2, 1) && !written.has_part(7, 1));
    }
}
