//! `serve`: the HTTP front door (axum). `POST /api/v1/produce` adds one
//! message or a batch, answered per message; `GET /api/v1/stats` is the
//! monitor's JSON report; `/` is a dashboard over it (`dashboard.rs`);
//! `/healthz`, `/readyz` and `/metrics` are for whoever runs it.
//!
//! The layout: `request.rs` reads and checks a body, `write.rs` routes the
//! messages and writes them once per idempotency key, `answer.rs` turns
//! outcomes into statuses and JSON, `queues.rs` keeps the queues a request
//! may name, `auth.rs` checks the bearer token, `connections.rs` accepts
//! connections and bounds how long a client may take to send a request. Every answer is JSON, and
//! none is a 2xx with an error inside.
//!
//! Shutdown: once `shutdown` fires, requests that arrive get 503, those in
//! flight finish, and [`run`] returns when the last connection closes. A
//! queue found lost or damaged stops the server too, and [`run`] returns
//! that error (exit code 3): taking more messages into it would hide the
//! damage.

mod answer;
mod auth;
mod connections;
mod dashboard;
mod fingerprint;
mod queues;
mod request;
mod write;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::monitor::Report;
use crate::monitor::report::{self, SentBySender};
use crate::settings::ServeSettings;
use crate::stats::{QueueState, Snapshot};
use crate::store::{Store, StoreError};
use answer::Refusal;
use queues::Queues;
use request::Parsed;

/// The header that makes a request idempotent.
pub(crate) const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";
/// The header set on the answer to a request that had landed before.
const REPLAYED_HEADER: &str = "Idempotent-Replayed";

/// Why the server stopped with an error.
#[derive(Debug, Error)]
pub enum ServeError {
    /// The address could not be listened on, or the connection loop failed.
    #[error("cannot serve HTTP on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// What failed.
        source: std::io::Error,
    },
    /// A queue's state was found lost or damaged.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ServeError {
    /// The Redis error behind this one, if any.
    pub fn store_error(&self) -> Option<&StoreError> {
        match self {
            Self::Store(err) => Some(err),
            Self::Listen { .. } => None,
        }
    }
}

/// What every handler shares.
#[derive(Debug)]
pub(crate) struct App {
    settings: ServeSettings,
    queues: Arc<Queues>,
    /// Fired by the caller's shutdown, or by damage found.
    stopping: CancellationToken,
    /// The damage that stopped the server, if any.
    damage: Mutex<Option<StoreError>>,
    /// The last snapshot `/api/v1/stats` read, for rates,
    /// and each sender's sent count then.
    last_stats: tokio::sync::Mutex<Option<(Snapshot, SentBySender, Instant)>>,
    started: Instant,
}

impl App {
    /// The refusal for a failed Redis call. Damage to the server's own
    /// queue (`home`) also stops the server; another queue's damage
    /// refuses only what is bound for it.
    fn refusal(&self, err: &StoreError, home: bool) -> Refusal {
        if err.is_queue_state() {
            if home {
                tracing::error!(error = %err, "the queue's state is lost or damaged; stopping");
                let mut damage = self
                    .damage
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                damage.get_or_insert_with(|| match err {
                    StoreError::Lost(detail) => StoreError::Lost(detail.clone()),
                    other => StoreError::Damaged(other.to_string()),
                });
                self.stopping.cancel();
            } else {
                tracing::error!(error = %err, "a queue a request named is lost or damaged");
            }
            return Refusal::internal(format!("the queue cannot take messages: {err}"));
        }
        if err.is_transient() {
            return Refusal::unavailable(format!("Redis cannot take the write now: {err}"));
        }
        tracing::error!(error = %err, "a write failed");
        Refusal::internal(format!("the write failed: {err}"))
    }
}

/// Serves the API on `listener` over the opened queue `store` until
/// `shutdown` fires (then lets requests in flight finish) or a queue is
/// found lost or damaged (then returns that error).
pub async fn run(
    store: Store,
    settings: ServeSettings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let addr = listener
        .local_addr()
        .map_or_else(|_| settings.listen.to_string(), |addr| addr.to_string());
    let stopping = shutdown.child_token();
    let app = Arc::new(App {
        queues: Queues::new(
            store,
            settings.topics.clone(),
            settings.max_lag,
            stopping.clone(),
        ),
        settings,
        stopping: stopping.clone(),
        damage: Mutex::new(None),
        last_stats: tokio::sync::Mutex::new(None),
        started: Instant::now(),
    });
    tracing::info!(%addr, queue = %app.queues.home().topic, "serving the HTTP API");
    let serving = connections::accept_until(
        listener,
        router(app.clone()),
        app.settings.client_timeout,
        stopping.clone(),
    );
    // A client that never finishes its request must not hold the server
    // open: requests get as long as their body may take to arrive and a
    // write may take, and a second more.
    let drain = app.settings.client_timeout + app.settings.request_timeout + Duration::from_secs(1);
    tokio::select! {
        () = serving => {}
        () = async { stopping.cancelled().await; tokio::time::sleep(drain).await } => {
            tracing::warn!(after = ?drain, "requests still open at shutdown; closing them");
        }
    };
    app.queues.stop().await;
    let damage = app
        .damage
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    if let Some(err) = damage {
        return Err(ServeError::Store(err));
    }
    Ok(())
}

fn router(app: Arc<App>) -> Router {
    let max_body = app.settings.max_body;
    let api = Router::new()
        .route("/api/v1/produce", post(produce))
        .route("/api/v1/stats", get(stats))
        .route("/api/v1/dead", get(dashboard::dead_letters))
        .route("/api/v1/dead/requeue", post(dashboard::requeue))
        // Inside the token check: a client without the token gets its 401
        // before the server reads (and holds) its body.
        .layer(middleware::from_fn_with_state(
            app.clone(),
            connections::body_in_time,
        ))
        .layer(middleware::from_fn_with_state(
            app.clone(),
            auth::require_token,
        ));
    Router::new()
        .merge(api)
        .route("/", get(dashboard::page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(
            app.clone(),
            refuse_when_stopping,
        ))
        .layer(middleware::map_response_with_state(
            app.clone(),
            connections::keep_alive,
        ))
        .with_state(app)
}

/// 503 for every request that arrives once the server is stopping.
async fn refuse_when_stopping(
    State(app): State<Arc<App>>,
    request: Request,
    next: Next,
) -> Response {
    if app.stopping.is_cancelled() {
        let mut response = Refusal::shutting_down().into_response();
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    next.run(request).await
}

async fn produce(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match accept(&app, &headers, body).await {
        Ok(response) | Err(response) => response,
    }
}

async fn accept(
    app: &App,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Response> {
    let body = body.map_err(|rejection| {
        let refusal = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Refusal::too_large(format!(
                "the body is larger than --max-body {} bytes",
                app.settings.max_body
            ))
        } else {
            Refusal::bad_request("", "", format!("cannot read the body: {rejection}"))
        };
        refusal.into_response()
    })?;
    check_json(headers).map_err(IntoResponse::into_response)?;
    let header_key = idempotency_header(headers).map_err(IntoResponse::into_response)?;
    let parsed =
        request::parse(&body, app.settings.max_batch).map_err(IntoResponse::into_response)?;
    let (single, messages) = match parsed {
        Parsed::Single(message) => (true, vec![message]),
        Parsed::Batch(messages) => (false, messages),
    };
    let written = write::write(app, header_key.as_deref(), &body, messages)
        .await
        .map_err(IntoResponse::into_response)?;
    let mut response = if single {
        let outcome = written.outcomes.into_iter().next();
        answer::single(outcome.unwrap_or_else(|| {
            answer::Outcome::Refused(Refusal::internal("no outcome for the message"))
        }))
    } else {
        answer::batch(written.outcomes)
    };
    if written.replayed && header_key.is_some() {
        response
            .headers_mut()
            .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// 415 unless a `Content-Type` of JSON says the body is JSON. A missing
/// one is refused too: a browser sends a body without a type across sites
/// with no CORS preflight, so taking it would let any web page post here.
fn check_json(headers: &HeaderMap) -> Result<(), Refusal> {
    match headers.get(header::CONTENT_TYPE).map(HeaderValue::to_str) {
        Some(Ok(kind)) => {
            let essence = kind
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            if essence == "application/json" || essence.ends_with("+json") {
                Ok(())
            } else {
                Err(Refusal::not_json(format!(
                    "Content-Type '{kind}' is not JSON: send application/json"
                )))
            }
        }
        Some(Err(_)) => Err(Refusal::not_json("Content-Type is not readable text")),
        None => Err(Refusal::not_json(
            "no Content-Type: send Content-Type: application/json",
        )),
    }
}

/// The `Idempotency-Key` header, checked, if sent.
fn idempotency_header(headers: &HeaderMap) -> Result<Option<String>, Refusal> {
    let mut values = headers.get_all(IDEMPOTENCY_HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
    // Two keys for one request: whichever were taken, a retry that sends
    // them in another order, or only one, would not land once.
    if values.next().is_some() {
        return Err(Refusal::bad_request(
            IDEMPOTENCY_HEADER,
            &text,
            format!("give one {IDEMPOTENCY_HEADER} header, not several"),
        ));
    }
    request::idempotency_key(text, IDEMPOTENCY_HEADER).map(Some)
}

/// The monitor's JSON report of the server's own queue.
async fn stats(State(app): State<Arc<App>>) -> Response {
    let store = app.queues.home().store();
    let (snapshot, senders) = match within(&app, Snapshot::read_watched(&store)).await {
        Ok(Ok(read)) => read,
        Ok(Err(err)) => return app.refusal(&err, true).into_response(),
        Err(refusal) => return refusal.into_response(),
    };
    let now = Instant::now();
    let mut last = app.last_stats.lock().await;
    let since = last.as_ref().map(|(s, _, at)| (s, now.duration_since(*at)));
    let sent_before = last.as_ref().map(|(_, sent, _)| sent);
    let report = Report::new(&snapshot, since, now.duration_since(app.started)).with_senders(
        &senders,
        sent_before.unwrap_or(&SentBySender::new()),
        since.map(|(_, dt)| dt),
    );
    let response = answer::json(StatusCode::OK, &report);
    *last = Some((snapshot, report::sent_by_sender(&senders), now));
    response
}

/// Alive: the process answers.
async fn healthz() -> Response {
    answer::json(StatusCode::OK, &serde_json::json!({ "status": "ok" }))
}

/// Ready: Redis answers and the queue is open (migrated, library loaded)
/// and sound (its identity, keys and counters in place).
async fn readyz(State(app): State<Arc<App>>) -> Response {
    let store = app.queues.home().store();
    let checked = async {
        store.ping().await?;
        Snapshot::read(&store).await
    };
    match within(&app, checked).await {
        Ok(Ok(snapshot)) if snapshot.state != QueueState::Sound => Refusal::unavailable(format!(
            "not ready: the queue is {:?}: {}",
            snapshot.state, snapshot.state_detail
        ))
        .into_response(),
        Ok(Ok(_)) => answer::json(StatusCode::OK, &serde_json::json!({ "status": "ready" })),
        Ok(Err(err)) => Refusal::unavailable(format!("not ready: {err}")).into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

/// Prometheus metrics of the server's own queue, as `monitor --metrics-addr`
/// serves them.
async fn metrics(State(app): State<Arc<App>>) -> Response {
    let store = app.queues.home().store();
    match within(&app, Snapshot::read_watched(&store)).await {
        Ok(Ok((snapshot, senders))) => {
            let text = crate::metrics::render(&snapshot, &senders);
            ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response()
        }
        Ok(Err(err)) => Refusal::unavailable(format!("cannot read Redis: {err}")).into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

/// `read`, or 503 when Redis does not answer within `--request-timeout`.
async fn within<T>(app: &App, read: impl Future<Output = T>) -> Result<T, Refusal> {
    let timeout = app.settings.request_timeout;
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| Refusal::unavailable(format!("Redis did not answer within {timeout:?}")))
}
