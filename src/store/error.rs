//! The store's error type, and which of its errors are worth retrying.

use redis::{ErrorKind, RedisError, RetryMethod, ServerErrorKind};
use thiserror::Error;

/// A failure talking to Redis.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The Redis URL does not parse.
    #[error("invalid Redis URL '{url}': {reason}")]
    InvalidUrl {
        /// The URL, password redacted.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Redis did not answer at start-up.
    #[error("cannot reach Redis at {url}: {reason}")]
    Unreachable {
        /// The URL, password redacted.
        url: String,
        /// Why.
        reason: String,
    },
    /// A command failed.
    #[error("Redis {command} failed: {source}")]
    Redis {
        /// The command or Function that failed.
        command: &'static str,
        /// The error from Redis or the connection (part of the message, so
        /// not also a `source`, which would print it twice in error chains).
        source: RedisError,
    },
    /// No pooled connection could be had.
    #[error("no Redis connection: {0}")]
    Pool(String),
    /// Redis answered with something the Function contract does not allow.
    #[error("unexpected reply to {command}: {detail}")]
    Reply {
        /// The command or Function.
        command: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// A transaction was aborted because a key it watched changed meanwhile;
    /// the next try checks again.
    #[error("Redis {command} was aborted: a watched key changed meanwhile")]
    Conflict {
        /// The command that was aborted.
        command: &'static str,
    },
    /// Redis holds a newer Functions library than this binary knows.
    #[error(
        "Redis has version {found} of the sms-alerts Functions library, newer than this binary's {ours}: upgrade sms-alerts"
    )]
    NewerLibrary {
        /// The version loaded in Redis.
        found: i64,
        /// This binary's version.
        ours: u32,
    },
}

impl StoreError {
    /// A `map_err` adapter that names the command.
    pub(crate) fn redis(command: &'static str) -> impl FnOnce(RedisError) -> Self {
        move |source| Self::Redis { command, source }
    }

    /// Whether trying again later may succeed: lost or refused connections,
    /// timeouts, a Redis that is loading its data or failing over.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Pool(_) | Self::Unreachable { .. } | Self::Conflict { .. } => true,
            Self::Redis { source, .. } => is_transient(source),
            Self::InvalidUrl { .. } | Self::Reply { .. } | Self::NewerLibrary { .. } => false,
        }
    }

    /// Whether the Functions library or the consumer group is missing (a flushed
    /// or replaced Redis): applying the migrations again repairs it.
    pub fn needs_prepare(&self) -> bool {
        let Self::Redis { source, .. } = self else {
            return false;
        };
        source.code() == Some("NOGROUP")
            || source.detail().is_some_and(|detail| {
                detail.contains("Function not found") || detail.contains("Library not found")
            })
    }
}

impl From<deadpool_redis::PoolError> for StoreError {
    fn from(err: deadpool_redis::PoolError) -> Self {
        match err {
            deadpool_redis::PoolError::Backend(source) => Self::Redis {
                command: "connect",
                source,
            },
            other => Self::Pool(other.to_string()),
        }
    }
}

fn is_transient(err: &RedisError) -> bool {
    if err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
    {
        return true;
    }
    if matches!(
        err.kind(),
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly
        )
    ) {
        return true;
    }
    !matches!(err.retry_method(), RetryMethod::NoRetry)
}
