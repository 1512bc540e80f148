//! Requests already written to their connection, their decoded replies
//! awaited later, so several are on the wire at once: Redis works on one
//! while the caller handles another.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::StoreError;

use sync_wrapper::SyncFuture;

/// Wrapped so that a holder of a `PendingReply` can be shared between
/// threads (a sender's dispatcher is, by reference, across awaits): a
/// future is only ever polled through `&mut`, so sharing `&` of it is safe.
type Reply<T> = SyncFuture<Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send>>>;

/// A request handed to its connection when it was made, its decoded reply
/// still to come. Our connection queues a request in the call that makes it
/// (`RespConnection::send`), so requests made in order reach Redis in that
/// order, whenever and however their replies are awaited; dropping this
/// gives up the reply, not the request.
///
/// Awaiting a `&mut PendingReply` waits for the reply without giving the
/// request up, e.g. in one branch of a `select!`.
pub struct PendingReply<T> {
    reply: Reply<T>,
}

impl<T> std::fmt::Debug for PendingReply<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingReply").finish_non_exhaustive()
    }
}

impl<T: 'static> PendingReply<T> {
    /// Wraps the reply of a request already handed to its connection;
    /// `reply` only waits and decodes.
    pub(super) fn new(reply: impl Future<Output = Result<T, StoreError>> + Send + 'static) -> Self {
        Self {
            reply: SyncFuture::new(Box::pin(reply)),
        }
    }

    /// A request that never reached a connection (it could not be opened):
    /// its reply is `err`, so that it takes the path of any failed request.
    pub fn failed(err: StoreError) -> Self
    where
        T: Send,
    {
        Self::new(std::future::ready(Err(err)))
    }
}

impl<T> Future for PendingReply<T> {
    type Output = Result<T, StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.reply).poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_request_answers_with_its_error() {
        let mut pending: PendingReply<u8> = PendingReply::failed(StoreError::Lost("gone".into()));
        let err = (&mut pending).await.expect_err("failed");
        assert!(err.is_queue_state(), "{err}");
    }

    #[tokio::test]
    async fn the_reply_is_what_its_future_decodes() {
        let pending = PendingReply::new(async { Ok(7_u8) });
        assert_eq!(pending.await.expect("a reply"), 7);
    }
}
