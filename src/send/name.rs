//! The liveness lease on a sender name: two live processes never share one
//! name, and a name whose process was killed is taken over once its lease runs
//! out, so a restarted sender resumes the work pending under its name.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::SendError;
use super::fatal::Fatal;
use crate::store::{NameHold, Retry, Sender};

/// Longest wait between two looks at a name held by someone else.
const POLL: Duration = Duration::from_millis(250);

/// Takes `name` for this process (`token`). A holder that renews its lease
/// while we watch is alive: refuse with [`SendError::NameInUse`]. A holder
/// that does not is dead: wait for its lease to run out, then take the name.
/// Returns `Ok(false)` if `stop` fired first, also while Redis cannot record
/// the name (away, or out of memory): nothing was started, so a signal stops
/// the sender at once.
pub(super) async fn acquire(
    store: &Sender,
    name: &str,
    token: &str,
    ttl: Duration,
    stop: &CancellationToken,
) -> Result<bool, SendError> {
    let mut last_remaining: Option<Duration> = None;
    loop {
        let take = store.retrying("take the sender name", || store.hold_name(name, token, ttl));
        let hold = tokio::select! {
            hold = take => hold?,
            () = stop.cancelled() => return Ok(false),
        };
        let remaining = match hold {
            NameHold::Held { .. } => return Ok(true),
            NameHold::HeldByOther(remaining) => remaining,
        };
        match last_remaining {
            Some(previous) if remaining > previous => {
                return Err(SendError::NameInUse {
                    name: name.to_owned(),
                });
            }
            Some(_) => {}
            None => tracing::warn!(
                name,
                expires_in_ms = remaining.as_millis() as u64,
                "sender name is held by another process; waiting to see whether it is alive \
                 (a killed sender's name is taken over when its lease runs out)"
            ),
        }
        last_remaining = Some(remaining);
        tokio::select! {
            () = tokio::time::sleep(remaining.min(POLL)) => {}
            () = stop.cancelled() => return Ok(false),
        }
    }
}

/// Renews the name every third of its lease until `stop` fires. If another
/// process has taken the name (we were paused longer than the lease), this
/// sender must not go on under it: cancel `stop` and return true. Lost or
/// damaged queue state is raised through `fatal`. Other failures are retried
/// at the next tick and logged sparingly ([`Retry`]): at `maxmemory` every
/// renewal fails for as long as memory stays full.
pub(super) async fn keep(
    store: Sender,
    name: String,
    token: String,
    ttl: Duration,
    stop: CancellationToken,
    fatal: Fatal,
) -> bool {
    let mut tick = tokio::time::interval(ttl / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retry = Retry::new("renew the sender name")
        .until_done()
        .every(ttl / 3);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return false,
        }
        match store.hold_name(&name, &token, ttl).await {
            Ok(NameHold::Held { lapsed }) => {
                retry.succeeded();
                if lapsed {
                    tracing::warn!(
                        name,
                        "the sender name's lease had run out (this process was paused, or Redis \
                         away, for longer than the lease) and was taken again; another sender \
                         may have taken over messages meanwhile"
                    );
                }
            }
            Ok(NameHold::HeldByOther(_)) => {
                tracing::error!(name, "another process took this sender's name; stopping");
                stop.cancel();
                return true;
            }
            Err(err) => {
                if let Err(err) = retry.failed(err) {
                    fatal.raise(err);
                    return false;
                }
            }
        }
    }
}
