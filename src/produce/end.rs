//! How a run ends: its end recorded in partition 0 (finished, once every
//! batch is checked still recorded, or stopped), its parts on the other
//! partitions checked and set to expire with its record, and the lease that
//! says its producer is alive meanwhile.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Run, STOP_GRACE};
use crate::store::{NameHold, Producer, Retry, RunEnd, RunPlan, StoreError};

/// Records the end of the run (stopped early if `interrupted`, else
/// finished); returns the batches of the run no longer recorded. A stopping
/// producer waits at most [`STOP_GRACE`] for Redis, then gives its lease
/// back and leaves the run to read as died.
pub(super) async fn record_end(
    store: &Producer,
    run_id: &str,
    token: &str,
    plan: &RunPlan,
    interrupted: bool,
) -> Result<Vec<u64>, StoreError> {
    let end = if interrupted {
        RunEnd::Stopped
    } else {
        RunEnd::Finished
    };
    let record = store.retrying("record the end of the run", || {
        store.end_run(run_id, token, end, plan.batches())
    });
    if !interrupted {
        return record.await;
    }
    // Stopping must not wait on a Redis that is away: unrecorded, the
    // run reads as died once its lease runs out, resumable all the same.
    if let Ok(missing) = tokio::time::timeout(STOP_GRACE, record).await {
        return missing;
    }
    // Given back (allowed at maxmemory too), the lease lets the
    // run read as died, to be resumed, at once.
    let released = store.release_run(run_id, token);
    let _ = tokio::time::timeout(STOP_GRACE, released).await;
    tracing::warn!(
        run = run_id,
        "could not record the run as stopped; it reads as died, and `produce \
         --resume` finishes it"
    );
    Ok(Vec::new())
}

/// Checks that the parts of the run on partitions other than 0 are all
/// still marked (`parts_on`: how many batches have a part on each);
/// partition 0's are checked as the run ends.
pub(super) async fn check_parts(run: &Run<'_>, parts_on: &[u64]) -> Result<(), StoreError> {
    for (producer, &expected) in run.producers.iter().zip(parts_on).skip(1) {
        let marked = producer
            .retrying("count the run's written parts", || {
                producer.written_batch_count(run.id)
            })
            .await?;
        if marked < expected {
            return Err(StoreError::Lost(format!(
                "producer run {}: {} of its {expected} batch parts on partition {} are no \
                 longer recorded: Redis lost writes it had acknowledged (flushed, or restarted \
                 without its data)",
                run.id,
                expected - marked,
                producer.keys().partition()
            )));
        }
    }
    Ok(())
}

/// Lets a finished run's part marks on partitions other than 0 expire with
/// its record. Left in place if that fails: they only take room.
pub(super) async fn expire_parts(run: &Run<'_>) {
    for producer in run.producers.iter().skip(1) {
        if let Err(err) = producer.expire_batches(run.id).await {
            tracing::warn!(run = run.id, error = %err, "could not set the run's part marks to expire");
        }
    }
}

/// Renews the run's lease every third of `ttl`; cancels `lost` if another
/// producer took the run over. Lost or damaged queue state is left for the
/// writes to report.
pub(super) async fn keep_lease(
    store: Producer,
    run_id: String,
    token: String,
    ttl: Duration,
    lost: CancellationToken,
) {
    let mut tick = tokio::time::interval(ttl / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut retry = Retry::new("renew the run's lease")
        .until_done()
        .every(ttl / 3);
    loop {
        tick.tick().await;
        match store.hold_run(&run_id, &token, ttl).await {
            Ok(NameHold::Held { lapsed: false }) => retry.succeeded(),
            Ok(NameHold::Held { lapsed: true }) => tracing::warn!(
                run = run_id,
                "the run's lease had run out (this producer was paused, or Redis away, for \
                 longer than the lease) and was taken again"
            ),
            Ok(NameHold::HeldByOther(_)) => {
                tracing::error!(
                    run = run_id,
                    "another producer took this run over; stopping"
                );
                lost.cancel();
                return;
            }
            // Lost or damaged queue state is left for the writes to report.
            Err(err) => {
                if let Err(err) = retry.failed(err) {
                    tracing::warn!(run = run_id, error = %err, "could not renew the run's lease");
                }
            }
        }
    }
}

/// `[3, 4, 5, 9]` as `3-5, 9`.
pub(super) fn ranges(seqs: &[u64]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < seqs.len() {
        let first = seqs[i];
        let mut last = first;
        while i + 1 < seqs.len() && seqs[i + 1] == last + 1 {
            i += 1;
            last = seqs[i];
        }
        out.push(if first == last {
            first.to_string()
        } else {
            format!("{first}-{last}")
        });
        i += 1;
    }
    out.join(", ")
}

#[cfg(test)]
mod tests {
    use super::ranges;

    #[test]
    fn missing_batches_read_as_ranges() {
        assert_eq!(ranges(&[3, 4, 5, 9, 11, 12]), "3-5, 9, 11-12");
        assert_eq!(ranges(&[7]), "7");
        assert_eq!(ranges(&[]), "");
    }
}
