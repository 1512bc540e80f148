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
    /// The TLS settings cannot be used: a file that cannot be read or holds
    /// no valid PEM, a certificate without its key, TLS settings with a URL
    /// that is not `rediss://`.
    #[error("invalid TLS settings: {0}")]
    InvalidTls(String),
    /// TLS failed over a certificate: Redis's is not signed by a trusted CA
    /// or does not name the host in the URL, or Redis refused ours.
    #[error("TLS certificate problem with Redis at {url}: {reason}")]
    Certificate {
        /// The URL, password redacted.
        url: String,
        /// What rustls found wrong, on one line.
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
    /// Redis refused a command, or a command inside a Function, to this
    /// user: its ACL rule lacks a permission (see `acl::rule`).
    #[error(
        "Redis refused {command} to this user (ACL): {detail} (the server's ACL LOG names the command denied)"
    )]
    Denied {
        /// The command or Function refused.
        command: &'static str,
        /// Redis's message.
        detail: String,
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
    /// A write landed on a cluster primary, but its replicas did not confirm
    /// they hold it in time: a failover now could lose it, so it counts as
    /// not written yet and is sent again (it lands once).
    #[error("Redis {command} was not confirmed by {wanted} replica(s) in time (only {got})")]
    NotReplicated {
        /// The write.
        command: &'static str,
        /// The replicas asked for.
        wanted: u32,
        /// The replicas that confirmed.
        got: u32,
    },
    /// The queue's state is gone: its identity is missing or another queue's
    /// (a flushed Redis, one restarted without its data, another Redis behind
    /// the address). Nothing is re-created by itself: see `repair`.
    #[error("queue state lost: {0}")]
    Lost(String),
    /// A key of the queue has the wrong type, a counter is not a number, or
    /// the consumer group is gone while the stream has history. Nothing was
    /// written by the call that found it.
    #[error("queue state damaged: {0}")]
    Damaged(String),
    /// The queue refused a request, e.g. resuming a producer run that does
    /// not exist, or a dead letter id that several partitions hold; the
    /// message says why.
    #[error("{0}")]
    Refused(String),
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
    /// A `map_err` adapter that names the command. The errors our Functions
    /// raise (`LOST`, `DAMAGED`, a refusal) and a key of the wrong type become
    /// their own variants.
    pub(crate) fn redis(command: &'static str) -> impl FnOnce(RedisError) -> Self {
        move |source| {
            let detail = || source.detail().unwrap_or_default().to_owned();
            match source.code() {
                Some("LOST") => Self::Lost(detail()),
                Some("DAMAGED") => Self::Damaged(detail()),
                Some("BUSYRUN" | "NORUN" | "FINISHED") => Self::Refused(detail()),
                // Redis 7.0 names no command when one inside a Function is
                // denied; later releases and direct commands say NOPERM.
                Some("NOPERM") => Self::Denied {
                    command,
                    detail: detail(),
                },
                _ if source
                    .detail()
                    .is_some_and(|d| d.contains("can't run this command or subcommand")) =>
                {
                    Self::Denied {
                        command,
                        detail: detail(),
                    }
                }
                Some("WRONGTYPE") => Self::Damaged(format!(
                    "{command} met a key of the wrong type ({})",
                    detail()
                )),
                // One of our Functions failed in a way its checks did not
                // foresee: it may have written part of its work, so retrying
                // could count a result twice.
                Some("ERR") if source.detail().is_some_and(|d| d.contains("script: sms_")) => {
                    Self::Damaged(format!("{command} failed part-way: {}", detail()))
                }
                _ => Self::Redis { command, source },
            }
        }
    }

    /// As [`StoreError::redis`], but a key of the wrong type is named:
    /// for commands on one key, where the operator must know which to mend.
    pub(crate) fn redis_on(command: &'static str, key: &str) -> impl FnOnce(RedisError) -> Self {
        let key = key.to_owned();
        move |source| {
            if source.code() == Some("WRONGTYPE") {
                return Self::Damaged(format!(
                    "{key} is of the wrong type for {command}: see `sms-alerts repair`"
                ));
            }
            Self::redis(command)(source)
        }
    }

    /// Whether trying again later may succeed: lost or refused connections,
    /// timeouts, a Redis that is loading its data, failing over or out of
    /// memory (memory frees as senders settle and trim).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Pool(_)
            | Self::Unreachable { .. }
            | Self::Conflict { .. }
            | Self::NotReplicated { .. } => true,
            Self::Redis { source, .. } => is_transient(source),
            Self::InvalidUrl { .. }
            | Self::InvalidTls(_)
            | Self::Certificate { .. }
            | Self::Denied { .. }
            | Self::Reply { .. }
            | Self::NewerLibrary { .. }
            | Self::Lost(_)
            | Self::Damaged(_)
            | Self::Refused(_) => false,
        }
    }

    /// Whether the queue's state is lost or damaged: the process must stop
    /// (exit code 3) rather than retry or repair by guessing.
    pub fn is_queue_state(&self) -> bool {
        matches!(self, Self::Lost(_) | Self::Damaged(_))
    }

    /// Whether Redis refused a write for want of memory.
    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, Self::Redis { source, .. } if source.code() == Some("OOM"))
    }

    /// Whether the Functions library is missing (a flushed Redis, or one
    /// restarted without its data): loading it again is safe, it is code.
    pub fn needs_library(&self) -> bool {
        let Self::Redis { source, .. } = self else {
            return false;
        };
        source.detail().is_some_and(|detail| {
            detail.contains("Function not found") || detail.contains("Library not found")
        })
    }

    /// Whether Redis refused the command before running it because it went
    /// to the wrong node (`MOVED`, the slot map is read again) or the slot
    /// is being moved (`TRYAGAIN`): sending it again cannot run it twice.
    pub fn was_not_run(&self) -> bool {
        matches!(
            self,
            Self::Redis { source, .. } if matches!(
                source.kind(),
                ErrorKind::Server(ServerErrorKind::Moved | ServerErrorKind::TryAgain)
            )
        )
    }

    /// Whether the stream or the consumer group was missing (NOGROUP), or
    /// deleted under a blocked read (UNBLOCKED): the queue must be diagnosed
    /// ([`super::Store::diagnose`]), never re-created here.
    pub fn is_no_group(&self) -> bool {
        matches!(self, Self::Redis { source, .. } if matches!(source.code(), Some("NOGROUP" | "UNBLOCKED")))
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
    if matches!(err.code(), Some("OOM" | "BUSY")) {
        return true;
    }
    // A transaction refused whole for want of memory: nothing of it ran.
    if err.code() == Some("EXECABORT") && err.to_string().contains("OOM") {
        return true;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn from_reply(reply: &[u8]) -> StoreError {
        let err = redis::parse_redis_value(reply)
            .and_then(|value| value.extract_error())
            .expect_err("an error reply");
        StoreError::redis("FCALL sms_report")(err)
    }

    #[test]
    fn acl_denials_are_neither_damage_nor_transient() {
        for reply in [
            &b"-NOPERM this user has no permissions to run the 'fcall' command\r\n"[..],
            b"-ERR The user executing the script can't run this command or subcommand \
              script: sms_report, on @user_function:445.\r\n",
        ] {
            let err = from_reply(reply);
            assert!(matches!(err, StoreError::Denied { .. }), "{err:?}");
            assert!(!err.is_transient() && !err.is_queue_state(), "{err}");
            assert!(err.to_string().contains("ACL"), "{err}");
        }
        let damaged = from_reply(b"-ERR oops script: sms_report, on @user_function:1.\r\n");
        assert!(damaged.is_queue_state(), "{damaged}");
    }
}
