//! A damage report shared by the sender's tasks: the first task that finds
//! the queue's state lost or damaged raises it, which stops the sender at
//! once (no drain: results can no longer be written), and the sender ends
//! with that error.

use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::store::StoreError;

/// The first lost-or-damaged error any of the sender's tasks met.
#[derive(Debug, Clone)]
pub(super) struct Fatal {
    error: Arc<Mutex<Option<StoreError>>>,
    /// Cancelled when an error is raised.
    pub raised: CancellationToken,
    /// The sender's stop signal, cancelled with it.
    stop: CancellationToken,
}

impl Fatal {
    /// A report that cancels `stop` when raised.
    pub(super) fn new(stop: CancellationToken) -> Self {
        Self {
            error: Arc::default(),
            raised: CancellationToken::new(),
            stop,
        }
    }

    /// Records `err` (the first one wins) and stops the sender.
    pub(super) fn raise(&self, err: StoreError) {
        tracing::error!(error = %err, "stopping: the queue's state is lost or damaged");
        self.lock().get_or_insert(err);
        self.raised.cancel();
        self.stop.cancel();
    }

    /// The error raised, if any.
    pub(super) fn take(&self) -> Option<StoreError> {
        self.lock().take()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<StoreError>> {
        // A panic while holding this lock leaves a valid value behind.
        self.error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
