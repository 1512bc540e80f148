//! Retention in passing: every sender applies the queue's retention a few
//! times a second (`sms_trim`), so settled entries leave Redis about as fast
//! as they are settled and memory stays bounded at full speed. Several
//! senders trimming at once is harmless: each removes only what is safe.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::fatal::Fatal;
use crate::store::{Retry, Sender, StoreError, Trimmed};

/// How often a sender trims. At 100,000 entries per call at most, one sender
/// keeps up with 500,000 settled messages a second.
pub(super) const TRIM_EVERY: Duration = Duration::from_millis(200);

/// Trims the partitions the sender reads (as `partitions` says now) every
/// [`TRIM_EVERY`] until `stop`; lost or damaged state is raised.
pub(super) async fn keep_trimmed(
    store: Sender,
    partitions: watch::Receiver<Vec<u32>>,
    stop: CancellationToken,
    fatal: Fatal,
) {
    let mut tick = tokio::time::interval(TRIM_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retry = Retry::new("trim the stream").until_done().every(TRIM_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let list = partitions.borrow().clone();
        match trim_all(&store, &list).await {
            Ok(trimmed) => {
                retry.succeeded();
                if trimmed.entries + trimmed.dead_letters > 0 {
                    tracing::debug!(
                        entries = trimmed.entries,
                        dead_letters = trimmed.dead_letters,
                        "trimmed"
                    );
                }
            }
            Err(err) => {
                if let Err(err) = retry.failed(err) {
                    fatal.raise(err);
                    return;
                }
            }
        }
    }
}

/// Trims `partitions` in turn, each whatever became of the others (one on
/// a node that is down must not leave the rest untrimmed); what they
/// removed, together, or the first error.
async fn trim_all(store: &Sender, partitions: &[u32]) -> Result<Trimmed, StoreError> {
    let mut all = Trimmed::default();
    let mut failure = None;
    for &partition in partitions {
        match store.partition(partition).trim().await {
            Ok(trimmed) => {
                all.entries += trimmed.entries;
                all.dead_letters += trimmed.dead_letters;
            }
            // Lost or damaged state ends the sender: no need to go on.
            Err(err) if err.is_queue_state() => return Err(err),
            Err(err) => failure = failure.or(Some(err)),
        }
    }
    failure.map_or(Ok(all), Err)
}
