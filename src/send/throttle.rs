//! The sender's share of its gateway's throughput cap: tokens taken from
//! the gateway's bucket in Redis a few at a time and kept in a local pool
//! that the gateway task spends one per send.
//!
//! The bucket in Redis is the one truth every sender of the gateway shares,
//! so however many senders there are, over time they together send no more
//! than the cap. Each keeps at most a tenth of a second's worth of tokens (a
//! burst), so a sender that stops strands few, and asks again as soon as the
//! bucket will have a token for it. The price of that local pool: senders
//! that held full pools while idle, paused or behind an open breaker can
//! spend them at once when work resumes, so the first tenth of a second
//! after may see up to one burst per sender beyond the cap, plus the
//! bucket's own.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::store::Sender;

/// Shortest wait between two asks when the bucket was empty: a cap of
/// thousands a second would otherwise be asked thousands of times.
const MIN_ASK_GAP: Duration = Duration::from_millis(20);
/// Longest wait between two asks while the pool is full.
const FULL_POLL: Duration = Duration::from_millis(20);
/// Wait after a failed ask: the other paths (reads, reports) say what is
/// wrong with Redis; the cap only waits for it.
const RETRY_AFTER_ERROR: Duration = Duration::from_millis(500);

/// How many tokens a gateway of `rate` per second keeps at most, locally
/// and in its bucket: a tenth of a second's worth, at least one.
pub(super) fn burst(rate: u32) -> u32 {
    (rate / 10).max(1)
}

/// Keeps `pool` filled from gateway `gateway`'s bucket until `stop`.
pub(super) async fn refill(
    store: Sender,
    gateway: String,
    rate: u32,
    pool: Arc<Semaphore>,
    stop: CancellationToken,
) {
    let most = burst(rate);
    loop {
        let held = pool.available_permits() as u32;
        let wait = if held >= most {
            FULL_POLL
        } else {
            match store.take_tokens(&gateway, rate, most, most - held).await {
                Ok((granted, next)) => {
                    pool.add_permits(granted as usize);
                    if granted + held >= most {
                        FULL_POLL
                    } else {
                        next.max(MIN_ASK_GAP)
                    }
                }
                Err(err) => {
                    tracing::debug!(gateway, error = %err, "could not take gateway tokens");
                    RETRY_AFTER_ERROR
                }
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenth_of_a_second_at_least_one() {
        assert_eq!(burst(1), 1);
        assert_eq!(burst(100), 10);
        assert_eq!(burst(20_000), 2_000);
    }
}
