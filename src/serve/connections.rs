//! The server's connections, accepted here rather than by `axum::serve`,
//! for what that cannot do: give a client bounded time to send a request.
//! A client that trickles its head or its body a byte at a time (slowloris)
//! would otherwise hold a connection, and a task, for as long as it likes.
//!
//! - The head (request line and headers) must arrive within the client
//!   timeout, or hyper closes the connection.
//! - The body must then arrive within the client timeout too, or the
//!   request gets 408 ([`body_in_time`]), and no more than `--max-body`
//!   (413).
//!
//! - The same timeout closes a kept-alive connection that sends no next
//!   request (hyper times the head from the end of the last answer), so
//!   every answer says so in `Keep-Alive: timeout=<s>` ([`keep_alive`]),
//!   a pooled client that reads it retires the connection before the
//!   server closes it, rather than send a request into a closing socket.
//!
//! At shutdown the listener closes, idle connections close, and the
//! requests in flight finish before [`accept_until`] returns.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::CONNECTION;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::App;
use super::answer::Refusal;

/// Pause after a failed accept (e.g. out of file descriptors), so that a
/// failure that lasts does not spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Serves `router` on the connections `listener` accepts until `stop`
/// fires; then closes the listener and idle connections and returns once
/// every request in flight has its answer. A client gets `client_timeout`
/// to send a request's head.
pub(super) async fn accept_until(
    listener: TcpListener,
    router: Router,
    client_timeout: Duration,
    stop: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(client_timeout);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::warn!(error = %err, "cannot accept a connection");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        // Answers are small and written whole: nothing gains from Nagle's delay.
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "a connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Reads a request's whole body before the handler runs: within the client
/// timeout (else 408) and no larger than `--max-body` (else 413).
pub(super) async fn body_in_time(
    State(app): State<Arc<App>>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let limit = app.settings.max_body;
    let timeout = app.settings.client_timeout;
    let read = tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await;
    match read {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(err)) if is_over_limit(&err) => {
            Refusal::too_large(format!("the body is larger than --max-body {limit} bytes"))
                .into_response()
        }
        Ok(Err(err)) => {
            Refusal::bad_request("", "", format!("cannot read the body: {err}")).into_response()
        }
        Err(_) => Refusal::too_slow(format!(
            "the body did not arrive within --client-timeout {}",
            humantime::format_duration(timeout)
        ))
        .into_response(),
    }
}

/// Adds `Keep-Alive: timeout=<s>` to every answer that keeps its
/// connection: how long the client may count on the server waiting for
/// the next request. The server's timer starts when the answer is written,
/// before the client reads it, so the hint is a second short of the
/// client timeout (0 below two seconds: do not reuse).
pub(super) async fn keep_alive(State(app): State<Arc<App>>, mut response: Response) -> Response {
    let closes = response
        .headers()
        .get(CONNECTION)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"close"));
    if closes {
        return response;
    }
    let seconds = app.settings.client_timeout.as_secs().saturating_sub(1);
    if let Ok(value) = HeaderValue::from_str(&format!("timeout={seconds}")) {
        response
            .headers_mut()
            .insert(HeaderName::from_static("keep-alive"), value);
    }
    response
}

/// Whether reading a body failed on the size limit.
fn is_over_limit(err: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(cause) = source {
        if cause.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = cause.source();
    }
    false
}
