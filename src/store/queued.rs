//! Requests queued on a connection now and answered later, so several can be
//! on the wire at once: Redis works on one while the caller handles another.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::Poll;

use super::StoreError;

type Reply<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send>>;

/// A request already queued on its connection, its reply still to come.
pub struct Queued<T> {
    reply: Reply<T>,
    /// The reply, if it came on the first poll (an error, in practice).
    early: Option<Result<T, StoreError>>,
}

impl<T> std::fmt::Debug for Queued<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queued")
            .field("answered", &self.early.is_some())
            .finish()
    }
}

impl<T> Queued<T> {
    /// Queues `request` by polling it once. A redis-rs multiplexed connection
    /// puts a request in its send queue (a tokio channel, first come first
    /// served) on the first poll and sends that queue in order, so requests
    /// started in order reach Redis in that order, and their replies come
    /// back in it.
    ///
    /// The request runs outside tokio's cooperative budget: a task that has
    /// used up its budget gets `Pending` from a channel send without the send
    /// being queued, and a later request could then overtake this one. The
    /// seed test in `tests/pipeline.rs` caught exactly that.
    pub async fn start(
        request: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Self {
        let mut reply: Reply<T> = Box::pin(tokio::task::unconstrained(request));
        let early = match poll_fn(|cx| Poll::Ready(reply.as_mut().poll(cx))).await {
            Poll::Ready(result) => Some(result),
            Poll::Pending => None,
        };
        Self { reply, early }
    }

    /// Waits for the reply.
    pub async fn reply(self) -> Result<T, StoreError> {
        match self.early {
            Some(result) => result,
            None => self.reply.await,
        }
    }
}

/// Awaiting a `&mut Queued` waits for the reply without giving the request up,
/// e.g. in one branch of a `select!`.
impl<T: Unpin> Future for Queued<T> {
    type Output = Result<T, StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        match self.early.take() {
            Some(result) => Poll::Ready(result),
            None => self.reply.as_mut().poll(cx),
        }
    }
}
