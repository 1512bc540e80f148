//! The sender's watch on its gateway: it follows the channel's pause flag,
//! which an operator sets (`sms-alerts pause`), and tells the logs and the
//! monitor (through the sender's hash) when the gateway's breaker opens,
//! probes or closes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::breaker::BreakerState;
use crate::store::Sender;

/// How often the pause flag is read.
const PAUSE_POLL: Duration = Duration::from_millis(500);

/// Follows the pause flag into `paused` and publishes breaker changes from
/// `changes` until `stop`. Redis errors only delay it: the sender's other
/// paths report them.
pub(super) async fn watch(
    store: Sender,
    consumer: String,
    gateway: String,
    paused: Arc<AtomicBool>,
    mut changes: mpsc::UnboundedReceiver<BreakerState>,
    stop: CancellationToken,
) {
    let mut poll = tokio::time::interval(PAUSE_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut published = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = poll.tick() => {
                if let Ok(now) = store.is_paused().await
                    && paused.swap(now, Ordering::Relaxed) != now
                {
                    let channel = &store.channel().name;
                    if now {
                        tracing::warn!(channel, "channel paused by an operator: sending stops");
                    } else {
                        tracing::info!(channel, "channel resumed: sending goes on");
                    }
                }
                if !published {
                    published = store
                        .publish_state(&consumer, &gateway, BreakerState::Closed.name(), false)
                        .await
                        .is_ok();
                }
            }
            Some(state) = changes.recv() => {
                match state {
                    BreakerState::Open => {
                        tracing::warn!(gateway, "breaker open: sending through the gateway stops");
                    }
                    BreakerState::HalfOpen => tracing::info!(gateway, "breaker half-open: probing"),
                    BreakerState::Closed => {
                        tracing::info!(gateway, "breaker closed: sending goes on");
                    }
                }
                let opened = state == BreakerState::Open;
                if let Err(err) = store.publish_state(&consumer, &gateway, state.name(), opened).await {
                    tracing::debug!(error = %err, "could not publish the breaker state");
                }
            }
        }
    }
}
