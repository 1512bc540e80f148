//! What the API answers: a message's id and partition, or why it was
//! refused, as JSON, with the status that says what the client should do.
//! Never a 2xx with an error inside: a batch with refusals is a 207 whose
//! every result carries its own status.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Why a message (or a whole request) was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(super) struct Refusal {
    /// The HTTP status it stands for.
    pub(super) status: u16,
    /// What was wrong, in a sentence.
    pub(super) error: String,
    /// The field at fault; empty when none is.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(super) field: String,
    /// The value at fault, cut short if long; empty when none is.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(super) value: String,
    /// When to try again, for a refusal that passes (429, 503).
    #[serde(skip)]
    pub(super) retry_after: Option<Duration>,
}

impl Refusal {
    fn new(status: StatusCode, error: impl Into<String>) -> Self {
        Self {
            status: status.as_u16(),
            error: error.into(),
            field: String::new(),
            value: String::new(),
            retry_after: None,
        }
    }

    /// 400: `field` holds `value`, which is wrong for `reason`.
    pub(super) fn bad_request(field: &str, value: &str, reason: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            value: truncated(value),
            ..Self::new(StatusCode::BAD_REQUEST, reason)
        }
    }

    /// 413: the request is larger than the server takes.
    pub(super) fn too_large(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, reason)
    }

    /// 408: the client took too long to send the body.
    pub(super) fn too_slow(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::REQUEST_TIMEOUT, reason)
    }

    /// 415: the body is not JSON.
    pub(super) fn not_json(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, reason)
    }

    /// 401: no valid bearer token.
    pub(super) fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong 'Authorization: Bearer <token>'",
        )
    }

    /// 404: the request names a queue Redis does not hold.
    pub(super) fn no_such_queue(topic: &str) -> Self {
        Self {
            field: "topic_name".to_owned(),
            value: truncated(topic),
            ..Self::new(
                StatusCode::NOT_FOUND,
                format!("no queue '{topic}': create it with `sms-alerts migrate --prefix {topic}`"),
            )
        }
    }

    /// 422: the idempotency key came before with another request.
    pub(super) fn key_reused(field: &str, key: &str) -> Self {
        Self {
            field: field.to_owned(),
            value: truncated(key),
            ..Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "idempotency key '{key}' was used before with a different request (or \
                     before the queue's partition count changed)"
                ),
            )
        }
    }

    /// 429: the queue's backlog is over the limit.
    pub(super) fn backlog(topic: &str, backlog: u64, limit: u64) -> Self {
        Self {
            retry_after: Some(Duration::from_secs(1)),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "queue '{topic}' holds {backlog} unsettled messages, over --max-lag {limit}; \
                     try again later"
                ),
            )
        }
    }

    /// 503: Redis cannot take the write now (away, failing over, full).
    pub(super) fn unavailable(reason: impl Into<String>) -> Self {
        Self {
            retry_after: Some(Duration::from_secs(1)),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, reason)
        }
    }

    /// 503: the server is shutting down.
    pub(super) fn shutting_down() -> Self {
        Self::unavailable("the server is shutting down")
    }

    /// 500: something no retry fixes (a Redis user without the rights, a
    /// damaged queue), named for the operator's log as well.
    pub(super) fn internal(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, reason)
    }

    /// The status.
    pub(super) fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let retry_after = self.retry_after;
        let mut response = json(status, &self);
        if let Some(after) = retry_after {
            set_retry_after(&mut response, after);
        }
        response
    }
}

/// Where one message went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(super) struct Accepted {
    /// Its stream entry id.
    pub(super) id: String,
    /// Its partition.
    pub(super) partition: u32,
}

/// One message's result in a batch answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub(super) enum Outcome {
    /// Written (or written before, for a repeat).
    Accepted(Accepted),
    /// Refused.
    Refused(Refusal),
}

/// The answer to a batch: 201 when every message was accepted, 207 when
/// some were (with `Retry-After` if a refusal passes with time); when none was, the refusals' common status, else 503 if any
/// refusal passes with time (429, 503), else 400.
pub(super) fn batch(results: Vec<Outcome>) -> Response {
    let refusals: Vec<&Refusal> = results
        .iter()
        .filter_map(|outcome| match outcome {
            Outcome::Refused(refusal) => Some(refusal),
            Outcome::Accepted(_) => None,
        })
        .collect();
    let (status, retry_after) = match refusals.first() {
        None => (StatusCode::CREATED, None),
        // Some accepted: say when the others that may pass could be sent again.
        Some(_) if refusals.len() < results.len() => (
            StatusCode::MULTI_STATUS,
            refusals.iter().find_map(|r| r.retry_after),
        ),
        Some(first) if refusals.iter().all(|r| r.status == first.status) => {
            (first.status_code(), first.retry_after)
        }
        // Nothing accepted, for several reasons: worth retrying if any is.
        Some(_) => match refusals.iter().find(|r| r.retry_after.is_some()) {
            Some(passing) => (StatusCode::SERVICE_UNAVAILABLE, passing.retry_after),
            None => (StatusCode::BAD_REQUEST, None),
        },
    };
    let mut response = json(status, &serde_json::json!({ "results": results }));
    if let Some(after) = retry_after {
        set_retry_after(&mut response, after);
    }
    response
}

/// The answer to a lone message.
pub(super) fn single(outcome: Outcome) -> Response {
    match outcome {
        Outcome::Accepted(accepted) => json(StatusCode::CREATED, &accepted),
        Outcome::Refused(refusal) => refusal.into_response(),
    }
}

/// `value` as a JSON body with `status`.
pub(super) fn json(status: StatusCode, value: &impl Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the answer: {err}"),
        )
            .into_response(),
    }
}

fn set_retry_after(response: &mut Response, after: Duration) {
    let seconds = after.as_secs().max(1);
    if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
}

/// A value short enough to quote in an error.
fn truncated(value: &str) -> String {
    crate::message::cut_short(value, 64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted(id: &str) -> Outcome {
        Outcome::Accepted(Accepted {
            id: id.to_owned(),
            partition: 0,
        })
    }

    #[test]
    fn a_batch_status_says_what_the_client_should_do() {
        assert_eq!(batch(vec![accepted("1-0")]).status(), StatusCode::CREATED);
        let bad = Outcome::Refused(Refusal::bad_request("recipient", "x", "no"));
        assert_eq!(
            batch(vec![accepted("1-0"), bad.clone()]).status(),
            StatusCode::MULTI_STATUS
        );
        let part = batch(vec![
            accepted("1-0"),
            Outcome::Refused(Refusal::unavailable("Redis is away")),
        ]);
        assert_eq!(part.status(), StatusCode::MULTI_STATUS);
        assert_eq!(part.headers()[header::RETRY_AFTER], "1");
        assert_eq!(
            batch(vec![bad.clone(), bad]).status(),
            StatusCode::BAD_REQUEST
        );
        let away = Outcome::Refused(Refusal::unavailable("Redis is away"));
        let response = batch(vec![away.clone(), away]);
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn long_values_are_cut_short() {
        let refusal = Refusal::bad_request("body", &"é".repeat(500), "too long");
        assert_eq!(refusal.value.chars().count(), 65);
    }
}
