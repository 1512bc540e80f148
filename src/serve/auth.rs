//! The bearer token of the API: with `--api-token-file` (or `SMS_API_TOKEN`)
//! every `/api/` request must carry `Authorization: Bearer <token>`.
//!
//! The comparison takes the same time whatever the token sent: both sides
//! are hashed first (so their lengths do not show either) and the digests
//! compared in constant time, so the answer's timing tells an attacker
//! nothing about how much of a guess was right.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::App;
use super::answer::Refusal;

/// Lets a request through only with the right bearer token, when one is set.
pub(super) async fn require_token(
    State(app): State<Arc<App>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = &app.settings.api_token else {
        return next.run(request).await;
    };
    let sent = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer);
    match sent {
        Some(sent) if same_token(sent.as_bytes(), token.as_bytes()) => next.run(request).await,
        _ => {
            let mut response = Refusal::unauthorized().into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            response
        }
    }
}

/// The token of an `Authorization` value of the Bearer scheme, in any
/// case: RFC 7235 makes auth schemes case-insensitive, and clients send
/// `bearer` too.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("Bearer")
        .then_some(token.trim())
}

/// Whether `sent` is `expected`, in time independent of where they differ.
fn same_token(sent: &[u8], expected: &[u8]) -> bool {
    let digest = |bytes: &[u8]| ring::digest::digest(&ring::digest::SHA256, bytes);
    digest(sent)
        .as_ref()
        .ct_eq(digest(expected).as_ref())
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_very_token_passes() {
        assert!(same_token(b"s3cret", b"s3cret"));
        assert!(!same_token(b"s3cre", b"s3cret"));
        assert!(!same_token(b"s3cret!", b"s3cret"));
        assert!(!same_token(b"", b"s3cret"));
    }

    #[test]
    fn the_scheme_is_bearer_in_any_case() {
        for value in [
            "Bearer s3cret",
            "bearer s3cret",
            "BEARER  s3cret ",
            "bEaReR s3cret",
        ] {
            assert_eq!(bearer(value), Some("s3cret"), "{value}");
        }
        for value in ["Basic s3cret", "Bearers3cret", "Bearer", "Token s3cret", ""] {
            assert_eq!(bearer(value), None, "{value}");
        }
    }
}
