//! Work over every partition of a queue: each partition's commands go to its
//! own server (one Redis, or the primary of its slot on a cluster), so the
//! observers read them all at once rather than one after the other, and the
//! tools that take a queue as it is find its partitions without trusting its
//! identity.

use std::future::Future;

use tokio::task::JoinSet;

use super::{Store, StoreError};
use crate::keys::Keys;

impl Store {
    /// Runs `op` on the handle of every partition at once and returns the
    /// results in partition order; the first error ends the others.
    pub async fn each_partition<T, F, Fut>(&self, op: F) -> Result<Vec<T>, StoreError>
    where
        T: Send + 'static,
        F: Fn(Store) -> Fut,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let mut tasks = JoinSet::new();
        for (index, partition) in self.partitions().into_iter().enumerate() {
            let work = op(partition);
            tasks.spawn(async move { (index, work.await) });
        }
        let mut results: Vec<Option<T>> = std::iter::repeat_with(|| None)
            .take(self.partitions as usize)
            .collect();
        while let Some(joined) = tasks.join_next().await {
            // A task ends only by finishing or panicking: none is aborted
            // while the set is held, so a panic is passed on as it was.
            let (index, result) =
                joined.unwrap_or_else(|err| std::panic::resume_unwind(err.into_panic()));
            results[index] = Some(result?);
        }
        Ok(results.into_iter().flatten().collect())
    }

    /// A handle on partition 0 that knows every partition Redis holds of
    /// this queue, its identity unchecked: the count partition 0 records, or
    /// more when further partitions are there (partition 0's record lost or
    /// damaged). For `audit` and `repair`, which take the queue as it is.
    pub async fn found_partitions(&self) -> Result<Store, StoreError> {
        let home = self.partition(0);
        let recorded = match home.read_partition_count().await {
            Ok(count) => count,
            Err(err) if err.is_transient() => return Err(err),
            // What is wrong with the record is for the caller to report.
            Err(_) => 1,
        };
        let present = home.partitions_present().await?;
        let count = present
            .last()
            .map_or(recorded, |&last| recorded.max(last + 1));
        Ok(Store {
            partitions: count,
            ..home
        })
    }

    /// The partitions whose queue hash key exists, of whatever type, found
    /// by `SCAN` on every server (each primary of a cluster): what Redis
    /// holds of this queue, whatever its partition count says. Ascending.
    pub async fn partitions_present(&self) -> Result<Vec<u32>, StoreError> {
        let pattern = Keys::queue_pattern(&self.prefix);
        let mut found = std::collections::BTreeSet::new();
        for node in self.topology.primaries().await? {
            let mut conn = node.pooled().await?;
            let keys = super::inspect::scan(&mut conn, &pattern).await?;
            found.extend(
                keys.iter()
                    .filter_map(|key| Keys::queue_partition(&self.prefix, key)),
            );
        }
        Ok(found.into_iter().collect())
    }
}
