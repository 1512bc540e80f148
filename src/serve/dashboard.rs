//! The web dashboard at `/`: one page of HTML with a little JavaScript that
//! reads `/api/v1/stats` and `/api/v1/dead` every second and shows totals,
//! each channel's progress (one row per channel, from the report's
//! `channels`; the report itself for a queue of one channel), rates,
//! send-time percentiles per channel, gateway and sender, queue ages,
//! gateways (the report's sums of their senders, and their breakers),
//! senders, partitions and each channel's
//! dead letters by reason, each with a button that requeues them. No build
//! step and no assets beyond the page, which is compiled in.
//!
//! The page itself holds no data, so it is served without the API token;
//! its requests carry the token given after `#token=` in its address (a
//! fragment never reaches the server's logs).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::answer::{self, Refusal};
use super::{App, check_json, within};
use crate::dead::{self, DeadLetter, Selection};
use crate::settings::check;
use crate::store::{Store, StoreError};

/// The page.
const PAGE: &str = include_str!("dashboard.html");
/// Dead letters the page lists.
const DEAD_SHOWN: u64 = 20;

/// `GET /`: the page.
pub(super) async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
        .into_response()
}

/// A dead letter as the page lists it: with its channel, and the address
/// and text that channel sent.
#[derive(Debug, Serialize)]
struct ListedLetter {
    #[serde(flatten)]
    letter: DeadLetter,
    /// The channel whose dead letter it is.
    channel: String,
    /// The address the channel sent to.
    address: Option<String>,
    /// The text the channel sent.
    text: Option<String>,
}

/// `GET /api/v1/dead` `?channel=...`: the newest dead letters of each
/// channel of the server's own queue (of the one named, if any), each with
/// its `channel`, `address` and `text`.
pub(super) async fn dead_letters(
    State(app): State<Arc<App>>,
    RawQuery(query): RawQuery,
) -> Response {
    let asked = match asked_channel(query.as_deref()) {
        Ok(asked) => asked,
        Err(refusal) => return refusal.into_response(),
    };
    let home = app.queues.home().store();
    let listed = async {
        let store = home
            .watched()
            .await
            .map_err(|err| app.refusal(&err, true))?;
        let channels = match asked.as_deref() {
            None => store.every_channel(),
            Some(name) => vec![channel_named(&store, name)?],
        };
        newest_dead(&channels)
            .await
            .map_err(|err| app.refusal(&err, true))
    };
    match within(&app, listed).await.and_then(|listed| listed) {
        Ok(letters) => answer::json(
            StatusCode::OK,
            &serde_json::json!({ "dead_letters": letters }),
        ),
        Err(refusal) => refusal.into_response(),
    }
}

/// The channel a query string names, if any. Any other parameter is
/// refused rather than ignored: a misspelt `channel` would otherwise list
/// every channel as if it were the one asked for.
fn asked_channel(query: Option<&str>) -> Result<Option<String>, Refusal> {
    let mut channel = None;
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match name.as_ref() {
            "channel" if channel.is_none() => channel = Some(value.into_owned()),
            "channel" => {
                return Err(Refusal::bad_request(
                    "channel",
                    &value,
                    "give 'channel' once",
                ));
            }
            other => {
                return Err(Refusal::bad_request(
                    other,
                    &value,
                    format!("unknown parameter '{other}': the one known is 'channel'"),
                ));
            }
        }
    }
    Ok(channel)
}

/// The newest dead letters of each of `channels`, as the page lists them.
async fn newest_dead(channels: &[Store]) -> Result<Vec<ListedLetter>, StoreError> {
    let mut shown = Vec::new();
    for channel in channels {
        let kind = channel.channel().kind;
        for letter in dead::list(channel, None, DEAD_SHOWN).await? {
            shown.push(ListedLetter {
                channel: channel.group().to_owned(),
                address: letter.address(kind).map(str::to_owned),
                text: letter.text(kind).map(str::to_owned),
                letter,
            });
        }
    }
    Ok(shown)
}

/// The handle of channel `name` of `store`'s queue, or a 400 naming it and
/// the queue's channels.
fn channel_named(store: &Store, name: &str) -> Result<Store, Refusal> {
    store
        .for_channel(name)
        .map_err(|err| Refusal::bad_request("channel", name, err.to_string()))
}

/// What `POST /api/v1/dead/requeue` asks for.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequeueRequest {
    /// Every dead letter with this reason.
    reason: String,
    /// Of this channel; the queue's first when not given.
    channel: Option<String>,
}

/// `POST /api/v1/dead/requeue` `{"reason": "...", "channel"?: "..."}`:
/// moves the channel's dead letters with that reason back into the stream,
/// for that channel alone, as `dead requeue --reason --channel` does.
pub(super) async fn requeue(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // JSON only, typed as such: neither a form nor an untyped body posted
    // from another site can trigger it.
    if let Err(refusal) = check_json(&headers) {
        return refusal.into_response();
    }
    let request = match serde_json::from_slice::<RequeueRequest>(&body) {
        Ok(request) => match check::dead_reason(&request.reason) {
            Ok(_) => request,
            Err(why) => {
                return Refusal::bad_request("reason", &request.reason, format!("'reason': {why}"))
                    .into_response();
            }
        },
        Err(err) => {
            return Refusal::bad_request(
                "reason",
                "",
                format!("expected {{\"reason\": \"...\", \"channel\"?: \"...\"}}: {err}"),
            )
            .into_response();
        }
    };
    let home = app.queues.home().store();
    let requeued = async {
        // As the list does: a channel added while serving is one of them.
        let home = home
            .watched()
            .await
            .map_err(|err| app.refusal(&err, true))?;
        let store = match request.channel.as_deref() {
            None => home,
            Some(name) => channel_named(&home, name)?,
        };
        let selection = Selection::Reason(request.reason);
        dead::requeue(&store, &selection)
            .await
            .map_err(|err| app.refusal(&err, true))
    };
    match within(&app, requeued).await.and_then(|requeued| requeued) {
        Ok(report) => answer::json(StatusCode::OK, &report),
        Err(refusal) => refusal.into_response(),
    }
}
