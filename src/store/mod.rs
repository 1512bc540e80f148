//! The Redis layer: the queue's identity ([`Store::open`] checks it; every
//! write carries its epoch), typed stream operations, typed wrappers of the
//! Functions library, the migrations, and the one place where transient
//! failures are retried.
//!
//! A [`Store`] is a handle on one partition of a queue: partition P's keys
//! share the hash tag `{prefix:P}`, so every command of a handle goes to one
//! Redis, on a cluster the primary of that slot (`topology.rs`, which also
//! follows the cluster as it changes). [`Store::partition`] gives the
//! handle of another partition over the same connections; partition 0
//! holds what belongs to the whole queue (the partition count, runs).
//!
//! Callers act through a role handle (`roles.rs`): [`Producer`], [`Sender`],
//! [`Inspector`] or [`Operator`], each with only the commands its job needs.
//! [`Store`] itself only connects, opens and migrates the queue and hands
//! out those handles.
//!
//! Two ways to Redis. Cold commands (Function calls other than reports,
//! inspection, migrations, a report's retry) go through redis-rs, on a
//! deadpool pool. The hot paths go over one pipelined connection type of our
//! own (`resp.rs`), opened in one place (`Store::resp_connection`): the
//! sender's reads and the audit's walks ([`ReadConnection`]), the sender's
//! reports ([`ReportConnection`]) and the producer's exactly-once batches
//! ([`BatchConnection`]). Its replies are framed as they arrive (strings over
//! 64 KiB dropped as they come) and read by one decoder (`frame/decode.rs`),
//! never parsed by redis-rs. A request on it is written when it is made and
//! its reply awaited later ([`PendingReply`]), so several are on the wire at
//! once, in the order they were made.
//!
//! Every connection, pooled or our own, is made from the endpoint of its
//! node (`transport.rs`): the address, the password that overrides the
//! URL's, and for `rediss://` the TLS files (`tls.rs`), the same for every
//! node, so all of them log in and verify Redis the same way.

mod batches;
mod channels;
mod endpoint;
mod error;
mod fan_out;
mod frame;
mod functions;
mod gateway;
mod identity;
mod ingest;
mod ingest_tx;
mod inspect;
mod migrate;
mod pending;
mod reader;
mod reply;
mod report;
mod resp;
mod retry;
mod roles;
mod runs;
mod streams;
mod tls;
mod topology;
mod transport;

use std::sync::Arc;
use std::time::Duration;

pub use batches::{BatchConnection, BatchWrite, CommittedBatch, PreparedBatch, StartedBatch};
pub use channels::ChannelStart;
pub use endpoint::{QueueSettings, TlsSettings};
pub use error::StoreError;
pub use functions::{
    ClaimReply, ClaimedEntry, DEAD_REASONS, NameHold, Outcome, PreparedReport, PruneOutcome,
    ReportItem, ReportReply, SnapshotFields, Trimmed,
};
pub use identity::{ForeignPartition, QueueIdentity, QueueOptions, QueueStatus, Retention};
pub use ingest::{IdempotencyRecord, IdempotencyScope, IngestConnection, Ingested};
pub use ingest_tx::TransactionConnection;
pub use inspect::{ConsumerInfo, GroupInfo, PendingRow, StreamInfo};
pub use migrate::{MIGRATIONS, Migration, MigrationReport, Step};
pub use pending::PendingReply;
pub use reader::ReadConnection;
pub use reply::is_counter;
pub use report::ReportConnection;
pub use retry::Retry;
pub use roles::{Ingester, Inspector, Operator, Producer, Sender};
pub use runs::{RUN_KEEP, RunEnd, RunInfo, RunPlan, RunRoute, RunState};
pub use streams::{StreamEntry, id_order};

use crate::channel::Channel;
use crate::keys::Keys;
use topology::{CONNECT_TIMEOUT, Conn, RESPONSE_TIMEOUT, Topology};
use transport::Endpoint;

/// A handle on one partition of a queue: cheap to clone, shared by all
/// tasks. A handle from [`Store::connect`] is on partition 0 and knows no
/// epoch; [`Store::open`] gives one that checks every write against the
/// queue's identity and knows how many partitions the queue has;
/// [`Store::partition`] gives the handle of another partition, which shares
/// every connection.
#[derive(Clone)]
pub struct Store {
    /// Which server serves each partition (one Redis, or a cluster's
    /// primaries), with a pool per server: shared by all partitions.
    topology: Arc<Topology>,
    keys: Keys,
    prefix: String,
    group: String,
    url: String,
    epoch: Arc<str>,
    /// The queue's partition count, as read when it was opened (1 before).
    partitions: u32,
    /// The queue's channels, first one first, as read when it was opened
    /// (before: the one asked for).
    channels: Arc<[Channel]>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("url", &self.url)
            .field("keys", &self.keys)
            .field("group", &self.group)
            .field("epoch", &self.epoch)
            .field("partitions", &self.partitions)
            .field("topology", &self.topology)
            .finish()
    }
}

impl Store {
    /// Connects to the queue described by `queue` and checks that Redis answers.
    /// Every connection, pooled or our own, uses its password (over the URL's)
    /// and, for `rediss://`, its TLS settings. Fails with
    /// [`StoreError::InvalidUrl`], [`StoreError::InvalidTls`],
    /// [`StoreError::Certificate`] or [`StoreError::Unreachable`]; all name
    /// the URL with its password redacted.
    pub async fn connect(queue: &QueueSettings) -> Result<Self, StoreError> {
        let endpoint = Endpoint::new(queue)?;
        let url = endpoint.url().to_owned();
        let unreachable = |err: StoreError| match err {
            StoreError::Certificate { .. } | StoreError::InvalidUrl { .. } => err,
            _ => StoreError::Unreachable {
                url: url.clone(),
                reason: err.to_string(),
            },
        };
        let topology = Topology::discover(endpoint).await.map_err(unreachable)?;
        let store = Self {
            topology,
            keys: Keys::new(&queue.prefix),
            prefix: queue.prefix.clone(),
            group: queue.group.clone(),
            url: url.clone(),
            epoch: Arc::from(""),
            partitions: 1,
            channels: Arc::from(Vec::new()),
        };
        let store = Store {
            channels: Arc::from(vec![store.first_channel(&[])]),
            ..store
        };
        store.ping().await.map_err(unreachable)?;
        Ok(store)
    }

    /// The handle of partition `partition` of the same queue: same
    /// connections, epoch and partition count, that partition's keys.
    pub fn partition(&self, partition: u32) -> Store {
        Store {
            keys: self.keys.on_partition(partition),
            ..self.clone()
        }
    }

    /// A handle on another queue (`prefix`) of the same Redis or cluster,
    /// over the same connections: not opened yet (no epoch, one partition),
    /// as [`Store::connect`] gives.
    pub fn other_queue(&self, prefix: &str) -> Store {
        Store {
            keys: Keys::new(prefix),
            prefix: prefix.to_owned(),
            epoch: Arc::from(""),
            partitions: 1,
            channels: Arc::from(vec![Channel::sms(crate::channel::DEFAULT_CHANNEL)]),
            group: String::new(),
            ..self.clone()
        }
    }

    /// Whether Redis holds a queue under this handle's prefix (its
    /// partition 0's identity hash), without opening it.
    pub async fn queue_exists(&self) -> Result<bool, StoreError> {
        let mut conn = self.partition(0).conn().await?;
        let exists: u64 = redis::cmd("EXISTS")
            .arg(Keys::new(&self.prefix).queue())
            .query_async(&mut conn)
            .await
            .map_err(StoreError::redis("EXISTS"))?;
        Ok(exists == 1)
    }

    /// The handles of every partition of the queue, in order.
    pub fn partitions(&self) -> Vec<Store> {
        (0..self.partitions).map(|p| self.partition(p)).collect()
    }

    /// How many partitions the queue had when this handle opened it
    /// (see [`Store::read_partition_count`] for the count now).
    pub fn partition_count(&self) -> u32 {
        self.partitions
    }

    /// This handle's partition.
    pub fn partition_id(&self) -> u32 {
        self.keys.partition()
    }

    /// Whether the queue lives on Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.topology.is_cluster()
    }

    /// How many replicas are connected to the cluster primary serving this
    /// partition now (`INFO replication`; 0 on a standalone Redis): a write
    /// that must survive a failover waits until one has it. Asked of the
    /// primary itself, as `CLUSTER SLOTS` leaves out a replica until it has
    /// synced and gossiped its offset.
    pub async fn replicas(&self) -> Result<u32, StoreError> {
        if !self.topology.is_cluster() {
            return Ok(0);
        }
        let mut conn = self.conn().await?;
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut conn)
            .await
            .map_err(StoreError::redis("INFO replication"))?;
        Ok(info
            .lines()
            .find_map(|line| line.strip_prefix("connected_slaves:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0))
    }

    /// The queue's name: its key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The key names of this handle's partition.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The consumer group this handle works in: its channel's name.
    pub fn group(&self) -> &str {
        &self.channel().name
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

    /// A read connection (see [`ReadConnection`]): its reply timeout leaves
    /// room for `block` (zero for reads that never block).
    pub async fn read_connection(&self, block: Duration) -> Result<ReadConnection, StoreError> {
        Ok(ReadConnection::new(self.resp_connection(block).await?))
    }

    /// A pipelined connection of our own (see `resp.rs`), the one way the
    /// hot paths open one: its reply timeout leaves room for `block`, the
    /// longest a request on it may block in Redis.
    async fn resp_connection(&self, block: Duration) -> Result<resp::RespConnection, StoreError> {
        let node = self.topology.node(self.keys.slot()).await?;
        resp::RespConnection::open(
            node.endpoint(),
            CONNECT_TIMEOUT,
            block + RESPONSE_TIMEOUT,
            Some(self.topology.clone()),
        )
        .await
    }

    /// A pooled connection to the server of this handle's partition.
    async fn conn(&self) -> Result<Conn, StoreError> {
        let node = self.topology.node(self.keys.slot()).await?;
        // No connection to the node, however it failed (refused, timed out
        // while a node is blackholed): the map is read again first.
        let conn = node
            .pooled()
            .await
            .inspect_err(|_| self.topology.lost_node())?;
        Ok(Conn::new(conn, self.topology.clone()))
    }
}

/// Query parameters that carry a password (`unix:///run/redis.sock?pass=…`
/// is how redis-rs takes one for a Unix socket).
const PASSWORD_PARAMS: &[&str] = &["pass", "password"];

/// `url` with its password replaced by `***`, safe to print and log: the
/// password of `redis://`, `rediss://` and any other URL with one, and a
/// `pass`/`password` query parameter.
pub fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        // Cannot tell where a password would be: hide everything before '@'
        // and every query parameter.
        let (_, rest) = url.rsplit_once('@').unwrap_or(("", url));
        let shown = match rest.split_once('?') {
            Some((before, _)) => format!("{before}?***"),
            None => rest.to_owned(),
        };
        return if url.contains('@') {
            format!("***@{shown}")
        } else {
            shown
        };
    };
    if parsed.password().is_some() {
        // Setting a password fails only for URLs that cannot have one.
        let _ = parsed.set_password(Some("***"));
    }
    let secret_query = parsed
        .query_pairs()
        .any(|(name, _)| PASSWORD_PARAMS.contains(&name.as_ref()));
    if secret_query {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(name, value)| {
                let value = if PASSWORD_PARAMS.contains(&name.as_ref()) {
                    "***".to_owned()
                } else {
                    value.into_owned()
                };
                (name.into_owned(), value)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_show() {
        let cases = [
            ("redis://:hunter2@db:6379/0", "redis://:***@db:6379/0"),
            ("redis://user:hunter2@db", "redis://user:***@db"),
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("rediss://:hunter2@db:6380", "rediss://:***@db:6380"),
            (
                "rediss://app:hunter2@db:6380/2",
                "rediss://app:***@db:6380/2",
            ),
            (
                "unix:///run/redis.sock?db=1&pass=hunter2",
                "unix:///run/redis.sock?db=1&pass=***",
            ),
            (
                "redis+unix:///run/redis.sock?user=app&pass=hunter2",
                "redis+unix:///run/redis.sock?user=app&pass=***",
            ),
            ("unix:///run/redis.sock", "unix:///run/redis.sock"),
        ];
        for (url, shown) in cases {
            assert_eq!(redact_url(url), shown, "{url}");
        }
        for url in [
            "not a url:hunter2@db",
            "redis://db:bad-port?pass=hunter2",
            "::?password=hunter2",
        ] {
            let shown = redact_url(url);
            assert!(!shown.contains("hunter2"), "{url} shown as {shown}");
        }
    }

    #[test]
    fn debug_output_never_shows_a_password() {
        let queue = super::QueueSettings {
            redis_url: "rediss://app:hunter2@db:6380".to_owned(),
            password: Some("swordfish".to_owned()),
            ..super::QueueSettings::default()
        };
        let shown = format!("{queue:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("swordfish"),
            "{shown}"
        );
    }
}
