//! The Redis layer: the queue's identity ([`Store::open`] checks it; every
//! write carries its epoch), a connection pool plus dedicated connections for pipelined
//! writes, a minimal connection of our own (`resp.rs`: replies framed, not
//! parsed by redis-rs; strings over 64 KiB dropped as they arrive) carrying
//! the sender's reads and the audit's walks over stream ids and dead reasons
//! ([`ReadConnection`]) and the producer's exactly-once batches
//! ([`BatchConnection`]), typed stream operations, typed wrappers of the
//! Functions library, the migrations, the one place where transient failures are retried, and
//! [`Queued`] requests: sent now, their replies awaited later, so several are
//! on the wire at once.

mod batches;
mod endpoint;
mod error;
mod frame;
mod functions;
mod identity;
mod inspect;
mod migrate;
mod queued;
mod reader;
mod reply;
mod resp;
mod retry;
mod runs;
mod streams;

use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::{Manager, Pool, Runtime};
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;

pub use batches::{BatchConnection, BatchWrite, CommittedBatch, PreparedBatch, StartedBatch};
pub use endpoint::{QueueSettings, TlsSettings};
pub use error::StoreError;
pub use functions::{
    ClaimReply, ClaimedEntry, NameHold, Outcome, PreparedReport, PruneOutcome, ReportItem,
    ReportReply, SnapshotFields, Trimmed,
};
pub use identity::{QueueIdentity, QueueOptions, QueueStatus, Retention};
pub use inspect::{ConsumerInfo, GroupInfo, PendingRow, StreamInfo};
pub use migrate::{MIGRATIONS, Migration, MigrationReport, Step};
pub use queued::Queued;
pub use reader::ReadConnection;
pub use reply::is_counter;
pub use retry::{Backoff, FailureLog};
pub use runs::{RUN_KEEP, RunEnd, RunInfo, RunPlan, RunState};
pub use streams::StreamEntry;

use crate::keys::Keys;

/// How long a pooled request may wait for its reply before it counts as lost.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pooled connections per process; each is multiplexed, so a few carry a lot.
const POOL_SIZE: usize = 8;

/// A handle on one queue in one Redis: cheap to clone, shared by all tasks.
/// A handle from [`Store::connect`] knows no epoch; [`Store::open`] gives one
/// that checks every write against the queue's identity.
#[derive(Clone)]
pub struct Store {
    client: redis::Client,
    pool: Pool,
    keys: Keys,
    prefix: String,
    group: String,
    url: String,
    epoch: Arc<str>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("url", &self.url)
            .field("keys", &self.keys)
            .field("group", &self.group)
            .field("epoch", &self.epoch)
            .finish()
    }
}

impl Store {
    /// Connects to the queue described by `queue` and checks that Redis answers.
    /// Fails with [`StoreError::InvalidUrl`] or [`StoreError::Unreachable`]; both
    /// name the URL with its password redacted.
    pub async fn connect(queue: &QueueSettings) -> Result<Self, StoreError> {
        let url = redact_url(&queue.redis_url);
        let client = redis::Client::open(queue.redis_url.as_str()).map_err(|source| {
            StoreError::InvalidUrl {
                url: url.clone(),
                reason: source.to_string(),
            }
        })?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let manager =
            Manager::new_with_config(queue.redis_url.as_str(), config).map_err(|source| {
                StoreError::InvalidUrl {
                    url: url.clone(),
                    reason: source.to_string(),
                }
            })?;
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(RESPONSE_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|err| StoreError::InvalidUrl {
                url: url.clone(),
                reason: err.to_string(),
            })?;
        let store = Self {
            client,
            pool,
            keys: Keys::new(&queue.prefix),
            prefix: queue.prefix.clone(),
            group: queue.group.clone(),
            url,
            epoch: Arc::from(""),
        };
        store.ping().await.map_err(|err| StoreError::Unreachable {
            url: store.url.clone(),
            reason: err.to_string(),
        })?;
        Ok(store)
    }

    /// The key names of this queue.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The consumer group of this queue.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The Redis URL with any password redacted, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Checks that Redis answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(StoreError::redis("PING"))
    }

    /// A connection of its own, for pipelined writes that must not share a
    /// pooled connection (the sender's report batches): its reply timeout
    /// leaves room for `block`.
    pub async fn dedicated_connection(
        &self,
        block: Duration,
    ) -> Result<MultiplexedConnection, StoreError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(block + RESPONSE_TIMEOUT));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(StoreError::redis("connect"))
    }

    /// A read connection (see [`ReadConnection`]): its reply timeout leaves
    /// room for `block` (zero for reads that never block).
    pub async fn read_connection(&self, block: Duration) -> Result<ReadConnection, StoreError> {
        ReadConnection::open(
            self.client.get_connection_info(),
            CONNECT_TIMEOUT,
            block + RESPONSE_TIMEOUT,
        )
        .await
    }

    async fn conn(&self) -> Result<deadpool_redis::Connection, StoreError> {
        self.pool.get().await.map_err(StoreError::from)
    }
}

/// `url` with its password replaced by `***`, safe to print and log.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                // Setting a password fails only for URLs that cannot have one.
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        // Cannot tell where a password would be: hide everything before '@'.
        Err(_) => match url.rsplit_once('@') {
            Some((_, host)) => format!("***@{host}"),
            None => url.to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact_url("redis://:hunter2@db:6379/0"),
            "redis://:***@db:6379/0"
        );
        assert_eq!(redact_url("redis://user:hunter2@db"), "redis://user:***@db");
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert!(!redact_url("not a url:hunter2@db").contains("hunter2"));
    }
}
