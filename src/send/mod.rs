//! The sender: one member of the consumer group.
//!
//! - `name`: the liveness lease on the sender's name;
//! - `dispatch`: reads and claims messages, with two reads on the wire at
//!   once, reading ahead for sends about to end, and draws each attempt;
//! - `gateway`: starts each message read ahead as a send slot frees, and
//!   holds the sends in progress in one timer queue until they end;
//! - `ending`: when the running sends end, which bounds the read-ahead;
//! - [`simulate`]: the simulated send time and failure;
//! - `flush`: writes results in batches, two report calls on the wire at once,
//!   and renews in-flight leases;
//! - `trim`: applies the queue's retention in passing;
//! - `fatal`: stops every task at once when one finds the queue's state lost
//!   or damaged (a flushed Redis, a destroyed group, a tampered counter).
//!
//! Each message takes two slots: a send slot (the concurrency), freed when its
//! send ends, and a hold slot, freed once its result is written (acknowledged
//! or marked for retry). Sends go on while results are written, and a sender
//! never holds more than three times its concurrency in messages.
//!
//! On shutdown the sender stops reading, starts the messages it has read
//! ahead and lets its sends finish until the deadline, writes their results
//! and gives its name back; whatever is unfinished stays pending and is
//! delivered again. While its results cannot be written (Redis away or out
//! of memory) it reads no new work. When the queue's state is lost or
//! damaged it stops at once and ends with that error: nothing it could still
//! write would be true.

mod dispatch;
mod ending;
mod fatal;
mod flush;
mod gateway;
mod name;
pub mod simulate;
mod trim;

use std::sync::Arc;
use std::time::Duration;

use rand::RngExt;
use thiserror::Error;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;

pub use dispatch::DispatchTotals;
pub use flush::FlushTotals;

use crate::settings::SendSettings;
use crate::store::{Store, StoreError};
use dispatch::Dispatcher;
use fatal::Fatal;
use flush::{Flusher, InFlight};
use gateway::Gateway;
use simulate::Simulator;

/// Messages a sender may hold per send slot: one sending, one read ahead and
/// one whose result waits to be written. Reading goes on while results are
/// written, and the bound keeps memory in check while Redis is slow or away.
/// With two per slot, a read for the next sends often waited for the last
/// ones' results to be written.
const HOLD_PER_SEND_SLOT: usize = 3;

/// How long results may take to be written after the shutdown deadline.
const FLUSH_GRACE: Duration = Duration::from_secs(5);

/// Why a sender stopped with an error.
#[derive(Debug, Error)]
pub enum SendError {
    /// Another live process uses this name.
    #[error(
        "sender name '{name}' is in use by another live process: give this sender another --name, \
         or stop the other one first"
    )]
    NameInUse {
        /// The name.
        name: String,
    },
    /// Another process took this sender's name while it ran (it was paused for
    /// longer than its lease); it stopped after draining.
    #[error(
        "sender name '{name}' was taken over by another process; stopped after finishing in-flight sends"
    )]
    NameLost {
        /// The name.
        name: String,
    },
    /// Redis failed in a way retrying cannot fix.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SendError {
    /// The Redis error behind this one, if any (to tell lost or damaged
    /// queue state apart).
    pub fn store_error(&self) -> Option<&StoreError> {
        match self {
            Self::Store(err) => Some(err),
            _ => None,
        }
    }
}

/// What one sender did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendSummary {
    /// How messages came in.
    pub dispatched: DispatchTotals,
    /// What the written results counted.
    pub flushed: FlushTotals,
}

/// Runs one sender until `shutdown` fires (or its name is taken over), then
/// drains as described in the module docs. Expects a store opened on the
/// queue ([`Store::open`]).
pub async fn run(
    store: Store,
    settings: SendSettings,
    shutdown: CancellationToken,
) -> Result<SendSummary, SendError> {
    let token = format!("{:016x}", rand::rng().random::<u64>());
    let stop = shutdown.child_token();
    if !name::acquire(&store, &settings.name, &token, settings.lease, &stop).await? {
        return Ok(SendSummary::default());
    }
    let fatal = Fatal::new(stop.clone());
    tracing::info!(
        name = settings.name,
        concurrency = settings.concurrency,
        mean_ms = settings.delay.mean.as_millis() as u64,
        failure_rate = settings.failure_rate,
        "sender started"
    );
    let keeper = tokio::spawn(name::keep(
        store.clone(),
        settings.name.clone(),
        token.clone(),
        settings.lease,
        stop.clone(),
        fatal.clone(),
    ));
    let trimmer = tokio::spawn(trim::keep_trimmed(
        store.clone(),
        stop.clone(),
        fatal.clone(),
    ));

    let in_flight = InFlight::default();
    let (results_tx, results_rx) = mpsc::unbounded_channel();
    let (writes_blocked_tx, writes_blocked) = watch::channel(false);
    let give_up = fatal.raised.child_token();
    let flusher = tokio::spawn(
        Flusher {
            store: store.clone(),
            consumer: settings.name.clone(),
            max_attempts: settings.max_attempts,
            retry_idle: settings.lease.saturating_sub(settings.retry_backoff),
            lease: settings.lease,
            token: token.clone(),
            in_flight: in_flight.clone(),
            fatal: fatal.clone(),
            writes_blocked: writes_blocked_tx,
        }
        .run(results_rx, give_up.clone()),
    );

    let abort_sends = CancellationToken::new();
    let (gateway, inlet) = Gateway::new(
        results_tx.clone(),
        settings.concurrency,
        abort_sends.clone(),
    );
    let mut gateway = tokio::spawn(gateway.run());
    let mut dispatcher = Dispatcher {
        store: store.clone(),
        simulator: Simulator::new(settings.delay, settings.failure_rate, settings.seed),
        hold_slots: Arc::new(Semaphore::new(
            settings.concurrency.saturating_mul(HOLD_PER_SEND_SLOT),
        )),
        in_flight: in_flight.clone(),
        results: results_tx,
        gateway: inlet,
        totals: DispatchTotals::default(),
        settings: settings.clone(),
        writes_blocked,
    };
    let outcome = dispatcher.run(&stop).await;
    stop.cancel();
    let dispatched = dispatcher.totals;
    // The gateway sends what it holds until the deadline; nothing more is
    // sent once the queue's state is lost or damaged.
    drop(dispatcher);
    let deadline = async {
        tokio::select! {
            () = tokio::time::sleep(settings.shutdown_timeout) => {}
            () = fatal.raised.cancelled() => {}
        }
    };
    let drained = tokio::select! {
        biased;
        _ = &mut gateway => true,
        () = deadline => false,
    };
    if !drained {
        abort_sends.cancel();
        let abandoned = gateway.await.unwrap_or_default();
        tracing::warn!(
            count = abandoned.len(),
            "shutdown deadline passed; abandoning messages not sent yet (they stay pending and will be delivered again)"
        );
        // Their leases are no longer renewed, so another sender can take them.
        in_flight.remove_all(abandoned.iter().map(String::as_str));
    }
    let flushed = match tokio::time::timeout(FLUSH_GRACE, flusher).await {
        Ok(Ok(totals)) => totals,
        Ok(Err(join_err)) => {
            tracing::error!(error = %join_err, "result writer failed");
            FlushTotals::default()
        }
        Err(_) => {
            give_up.cancel();
            tracing::warn!(
                "could not write every result in time; those messages stay pending and will be retried"
            );
            FlushTotals::default()
        }
    };
    if flushed.unwritten > 0 {
        tracing::warn!(
            unwritten = flushed.unwritten,
            "results not written; their messages will be delivered again"
        );
    }
    let name_lost = keeper.await.unwrap_or(false);
    let _ = trimmer.await;
    if let Err(err) = store.release_name(&settings.name, &token).await {
        tracing::warn!(error = %err, "could not release the sender name; it frees itself when its lease runs out");
    }
    let summary = SendSummary {
        dispatched,
        flushed,
    };
    tracing::info!(?summary, "sender stopped");
    if let Some(err) = fatal.take() {
        return Err(SendError::Store(err));
    }
    outcome?;
    if name_lost {
        return Err(SendError::NameLost {
            name: settings.name,
        });
    }
    Ok(summary)
}
