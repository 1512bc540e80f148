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

/// Trims `partitions` in turn; what they removed, together.
async fn trim_all(store: &Sender, partitions: &[u32]) -> Result<Trimmed, StoreError> {
    let mut all = Trimmed::default();
    for &partition in partitions {
        let trimmed = store.partition(partition).trim().await?;
        all.entries += trimmed.entries;
        all.dead_letters += trimmed.dead_letters;
    }
    Ok(all)
}
