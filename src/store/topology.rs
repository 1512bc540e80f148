//! Which Redis serves each partition. A standalone Redis serves all of them.
//! On Redis Cluster, partition P's keys share the hash tag `{prefix:P}`, so
//! they live on one slot, and every command of that partition, pooled or on
//! a connection of our own, goes to the primary that owns the slot.
//!
//! The slot map comes from `CLUSTER SLOTS` on any node that answers. It is
//! corrected as the cluster changes under running processes: a `MOVED`
//! reply, seen on any connection, points its slot at the node it names at
//! once and has the whole map read again (a failover moves many slots); a
//! lost connection or a cluster that says it is down has the map read again
//! before the next connection is opened. An `ASK` reply (a slot half-way
//! through a migration, the key already moved) changes no map: a pooled
//! command follows it once, to the node it names, after `ASKING`; on our
//! own pipelined connections (reads, reports, batches) the call is retried
//! like any transient failure, as is a call over several keys of the slot
//! that meets `TRYAGAIN`, until the migration ends. A report that fails so
//! is written again on a pooled connection, which follows the `ASK`.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use deadpool_redis::{Manager, Pool, Runtime};
use redis::{AsyncConnectionConfig, ErrorKind, RedisError, ServerErrorKind, Value};

use super::StoreError;
use super::transport::Endpoint;
use crate::keys::CLUSTER_SLOTS;

/// How long a pooled request may wait for its reply before it counts as lost.
pub(super) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long opening a connection may take.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pooled connections per node and process; each is multiplexed, so a few
/// carry a lot.
const POOL_SIZE: usize = 8;
/// The map is read again at most this often, however many calls fail.
const REFRESH_AT_MOST_EVERY: Duration = Duration::from_millis(200);
/// A slot no known node serves.
const UNKNOWN: u16 = u16::MAX;

/// One Redis server: how to reach it, and a pool of connections to it.
pub(super) struct Node {
    endpoint: Arc<Endpoint>,
    pool: Pool,
}

impl Node {
    fn new(endpoint: Endpoint) -> Result<Arc<Self>, StoreError> {
        let invalid_url = |reason: String| StoreError::InvalidUrl {
            url: endpoint.url().to_owned(),
            reason,
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let manager = Manager::new_with_config(endpoint.info().clone(), config)
            .map_err(|source| invalid_url(source.to_string()))?;
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(RESPONSE_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|err| invalid_url(err.to_string()))?;
        Ok(Arc::new(Self {
            endpoint: Arc::new(endpoint),
            pool,
        }))
    }

    /// How to reach this server.
    pub(super) fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// A pooled connection to this server.
    pub(super) async fn pooled(&self) -> Result<deadpool_redis::Connection, StoreError> {
        // A certificate problem is no transient failure: it is named as one.
        self.pool
            .get()
            .await
            .map_err(|err| self.endpoint.classify(StoreError::from(err)))
    }
}

/// Where the queue's partitions are served: one Redis, or a cluster's
/// primaries by slot.
pub(super) struct Topology {
    /// The server of the configured URL.
    seed: Arc<Node>,
    /// On Redis Cluster: which node owns which slot.
    cluster: Option<ClusterMap>,
}

impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topology")
            .field("seed", &self.seed.endpoint.url())
            .field("cluster", &self.cluster.is_some())
            .finish()
    }
}

/// A cluster's slot map and the nodes known so far.
struct ClusterMap {
    map: Mutex<SlotMap>,
    /// One refresh at a time; holds when the last one ended.
    refresh: tokio::sync::Mutex<Option<Instant>>,
}

struct SlotMap {
    /// Per slot, the index of its owner in `nodes`, or [`UNKNOWN`].
    owners: Vec<u16>,
    /// Every node seen, by `host:port`; never removed, so a pool survives a
    /// node's absence.
    nodes: Vec<(String, Arc<Node>)>,
    /// Set when something showed the map may be out of date.
    stale: bool,
}

impl SlotMap {
    fn index_of(&mut self, addr: &str, seed: &Endpoint) -> Result<u16, StoreError> {
        if let Some(index) = self.nodes.iter().position(|(known, _)| known == addr) {
            return Ok(index as u16);
        }
        let (host, port) = split_addr(addr).ok_or_else(|| StoreError::Reply {
            command: "CLUSTER SLOTS",
            detail: format!("a node address that is no host:port: {addr}"),
        })?;
        self.nodes
            .push((addr.to_owned(), Node::new(seed.at(host, port))?));
        Ok((self.nodes.len() - 1) as u16)
    }

    fn owner(&self, slot: u16) -> Option<Arc<Node>> {
        match self.owners[usize::from(slot)] {
            UNKNOWN => None,
            index => Some(self.nodes[usize::from(index)].1.clone()),
        }
    }
}

impl Topology {
    /// Reaches the server of `endpoint` and finds out whether it is part of
    /// a cluster; if so, reads the slot map.
    pub(super) async fn discover(endpoint: Endpoint) -> Result<Arc<Self>, StoreError> {
        let seed = Node::new(endpoint)?;
        let mut conn = seed.pooled().await?;
        let info: String = redis::cmd("INFO")
            .arg("cluster")
            .query_async(&mut conn)
            .await
            .map_err(StoreError::redis("INFO cluster"))?;
        drop(conn);
        let clustered = info.lines().any(|line| line.trim() == "cluster_enabled:1");
        let topology = Arc::new(Self {
            cluster: clustered.then(|| ClusterMap {
                map: Mutex::new(SlotMap {
                    owners: vec![UNKNOWN; usize::from(CLUSTER_SLOTS)],
                    nodes: Vec::new(),
                    stale: true,
                }),
                refresh: tokio::sync::Mutex::new(None),
            }),
            seed,
        });
        if topology.cluster.is_some() {
            topology.refresh().await?;
        }
        Ok(topology)
    }

    /// Whether the queue lives on Redis Cluster.
    pub(super) fn is_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    /// The node that serves `slot` now: the one server of a standalone
    /// Redis; on a cluster, the slot's primary, after reading the map again
    /// if something showed it out of date.
    pub(super) async fn node(&self, slot: u16) -> Result<Arc<Node>, StoreError> {
        let Some(cluster) = &self.cluster else {
            return Ok(self.seed.clone());
        };
        let (stale, owner) = {
            let map = cluster.map.lock().unwrap_or_else(PoisonError::into_inner);
            (map.stale, map.owner(slot))
        };
        match owner {
            Some(node) if !stale => Ok(node),
            _ => {
                self.refresh().await?;
                let map = cluster.map.lock().unwrap_or_else(PoisonError::into_inner);
                map.owner(slot).ok_or_else(|| {
                    StoreError::redis("cluster slot map")(RedisError::from((
                        ErrorKind::Server(ServerErrorKind::ClusterDown),
                        "no primary serves the slot",
                        format!("slot {slot}"),
                    )))
                })
            }
        }
    }

    /// Every primary that owns slots, as the map knows them now: where the
    /// Functions library must be loaded.
    pub(super) async fn primaries(&self) -> Result<Vec<Arc<Node>>, StoreError> {
        let Some(cluster) = &self.cluster else {
            return Ok(vec![self.seed.clone()]);
        };
        self.refresh().await?;
        let map = cluster.map.lock().unwrap_or_else(PoisonError::into_inner);
        let mut owners: Vec<u16> = map
            .owners
            .iter()
            .copied()
            .filter(|&o| o != UNKNOWN)
            .collect();
        owners.sort_unstable();
        owners.dedup();
        Ok(owners
            .into_iter()
            .map(|index| map.nodes[usize::from(index)].1.clone())
            .collect())
    }

    /// Learns from a failure seen on any connection: `MOVED` names the
    /// slot's new owner; a lost connection or a cluster that is down or
    /// failing over may mean a new map. Does nothing on a standalone Redis.
    pub(super) fn saw(&self, err: &RedisError) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let mut map = cluster.map.lock().unwrap_or_else(PoisonError::into_inner);
        if err.kind() == ErrorKind::Server(ServerErrorKind::Moved) {
            if let Some((addr, slot)) = err.redirect_node()
                && usize::from(slot) < map.owners.len()
                && let Ok(index) = map.index_of(addr, &self.seed.endpoint)
            {
                map.owners[usize::from(slot)] = index;
            }
            map.stale = true;
        } else if err.is_io_error()
            || err.is_connection_dropped()
            || err.is_connection_refusal()
            || err.is_timeout()
            || matches!(
                err.kind(),
                ErrorKind::Server(ServerErrorKind::ClusterDown | ServerErrorKind::MasterDown)
            )
        {
            map.stale = true;
        }
    }

    /// Sends `cmd` once to the node at `addr` after `ASKING`: how a command
    /// that met `ASK` (its slot half-way through a migration, its keys
    /// already moved) reaches them. A multi-key command whose keys are split
    /// between the nodes gets `TRYAGAIN` there, retried like any transient
    /// failure.
    async fn ask(&self, addr: &str, cmd: &redis::Cmd) -> Result<Value, RedisError> {
        let node = {
            let Some(cluster) = &self.cluster else {
                return Err(RedisError::from((
                    ErrorKind::Server(ServerErrorKind::Ask),
                    "ASK from a Redis that is not a cluster",
                )));
            };
            let mut map = cluster.map.lock().unwrap_or_else(PoisonError::into_inner);
            let index = map
                .index_of(addr, &self.seed.endpoint)
                .map_err(|err| RedisError::from((ErrorKind::Client, "ASK", err.to_string())))?;
            map.nodes[usize::from(index)].1.clone()
        };
        let mut conn = node.pool.get().await.map_err(|err| match err {
            deadpool_redis::PoolError::Backend(err) => err,
            other => RedisError::from((ErrorKind::Io, "ASK target", other.to_string())),
        })?;
        let mut pipe = redis::pipe();
        pipe.cmd("ASKING").ignore().add_command(cmd.clone());
        let mut replies: Vec<Value> = pipe.query_async(&mut conn).await?;
        tracing::debug!(node = addr, "followed an ASK redirection");
        replies.pop().ok_or_else(|| {
            RedisError::from((ErrorKind::Client, "ASK", "no reply after ASKING".to_owned()))
        })
    }

    /// A node could not be reached: the map is read again before the next
    /// connection is opened.
    pub(super) fn lost_node(&self) {
        if let Some(cluster) = &self.cluster {
            cluster
                .map
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .stale = true;
        }
    }

    /// Learns from a reply seen on a connection of our own (raw RESP):
    /// only a `MOVED` error matters, see [`Self::saw`].
    pub(super) fn saw_reply(&self, reply: &[u8]) {
        if self.cluster.is_some() && reply.starts_with(b"-MOVED ") {
            let text = String::from_utf8_lossy(&reply[1..]);
            let line = text.lines().next().unwrap_or_default();
            if let Some((_, detail)) = line.split_once(' ') {
                self.saw(&RedisError::from((
                    ErrorKind::Server(ServerErrorKind::Moved),
                    "moved",
                    detail.to_owned(),
                )));
            }
        }
    }

    /// Reads the slot map again from the first node that answers (the
    /// primaries known, then the seed, then every other node known), unless
    /// it was read moments ago.
    async fn refresh(&self) -> Result<(), StoreError> {
        let Some(cluster) = &self.cluster else {
            return Ok(());
        };
        let mut last = cluster.refresh.lock().await;
        if last.is_some_and(|at| at.elapsed() < REFRESH_AT_MOST_EVERY) {
            return Ok(());
        }
        let candidates: Vec<(String, Arc<Node>)> = {
            let map = cluster.map.lock().unwrap_or_else(PoisonError::into_inner);
            let mut owners: Vec<usize> = map
                .owners
                .iter()
                .filter(|&&o| o != UNKNOWN)
                .map(|&o| usize::from(o))
                .collect();
            owners.sort_unstable();
            owners.dedup();
            let mut list: Vec<(String, Arc<Node>)> =
                owners.iter().map(|&i| map.nodes[i].clone()).collect();
            list.push((String::new(), self.seed.clone()));
            list.extend(
                (0..map.nodes.len())
                    .filter(|i| !owners.contains(i))
                    .map(|i| map.nodes[i].clone()),
            );
            list
        };
        let mut failure = None;
        for (addr, node) in candidates {
            match read_slots(&node).await {
                Ok(ranges) => {
                    let mut map = cluster.map.lock().unwrap_or_else(PoisonError::into_inner);
                    let mut owners = vec![UNKNOWN; usize::from(CLUSTER_SLOTS)];
                    for (start, end, host, port) in ranges {
                        // No host: the node does not know its address; it
                        // is on the host we reached it at.
                        let owner = if host.is_empty() || host == "?" {
                            match split_addr(&addr).or_else(|| self.seed.endpoint.host_port()) {
                                Some((asked, _)) => format!("{asked}:{port}"),
                                None => continue,
                            }
                        } else {
                            format!("{host}:{port}")
                        };
                        let index = map.index_of(&owner, &self.seed.endpoint)?;
                        for slot in start..=end.min(CLUSTER_SLOTS - 1) {
                            owners[usize::from(slot)] = index;
                        }
                    }
                    map.owners = owners;
                    map.stale = false;
                    *last = Some(Instant::now());
                    return Ok(());
                }
                Err(err) => failure = Some(err),
            }
        }
        *last = Some(Instant::now());
        Err(failure.unwrap_or_else(|| StoreError::Pool("no cluster node answers".into())))
    }
}

/// `CLUSTER SLOTS` of one node: (first slot, last slot, primary host, port).
async fn read_slots(node: &Node) -> Result<Vec<(u16, u16, String, u16)>, StoreError> {
    let mut conn = node.pooled().await?;
    let reply: Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut conn)
        .await
        .map_err(StoreError::redis("CLUSTER SLOTS"))?;
    let bad = |detail: &str| StoreError::Reply {
        command: "CLUSTER SLOTS",
        detail: detail.to_owned(),
    };
    let Value::Array(ranges) = reply else {
        return Err(bad("not an array"));
    };
    let int = |value: &Value| match value {
        Value::Int(n) => u16::try_from(*n).ok(),
        _ => None,
    };
    let mut slots = Vec::with_capacity(ranges.len());
    for range in ranges {
        let Value::Array(fields) = range else {
            return Err(bad("a range that is not an array"));
        };
        let (Some(start), Some(end), Some(Value::Array(primary))) =
            (fields.first(), fields.get(1), fields.get(2))
        else {
            return Err(bad("a range without its primary"));
        };
        let host = match primary.first() {
            Some(Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
            Some(Value::SimpleString(text)) => text.clone(),
            _ => String::new(),
        };
        let (Some(start), Some(end), Some(port)) =
            (int(start), int(end), primary.get(1).and_then(int))
        else {
            return Err(bad("a range with a bad slot or port"));
        };
        slots.push((start, end, host, port));
    }
    if slots.is_empty() {
        return Err(StoreError::redis("CLUSTER SLOTS")(RedisError::from((
            ErrorKind::Server(ServerErrorKind::ClusterDown),
            "the cluster serves no slot yet",
        ))));
    }
    Ok(slots)
}

/// `host:port` (IPv6 hosts in brackets or not) as its parts.
fn split_addr(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host, port.parse().ok()?))
}

/// The node an `ASK` redirection in `result` names, if it is one.
fn ask_target(result: &Result<Value, RedisError>) -> Option<String> {
    match result {
        Err(err) if err.kind() == ErrorKind::Server(ServerErrorKind::Ask) => {
            err.redirect_node().map(|(addr, _)| addr.to_owned())
        }
        // "<slot> <host:port>"
        Ok(Value::ServerError(err)) if err.kind() == Some(ServerErrorKind::Ask) => {
            err.details()?.split_whitespace().nth(1).map(str::to_owned)
        }
        _ => None,
    }
}

/// A pooled connection whose failures teach the topology ([`Topology::saw`]),
/// and which follows an `ASK` redirection of a single command.
pub(super) struct Conn {
    inner: deadpool_redis::Connection,
    topology: Arc<Topology>,
}

impl Conn {
    pub(super) fn new(inner: deadpool_redis::Connection, topology: Arc<Topology>) -> Self {
        Self { inner, topology }
    }

    fn check<T>(&self, result: &Result<T, RedisError>, values: impl FnOnce(&T) -> Vec<&Value>) {
        match result {
            Err(err) => self.topology.saw(err),
            Ok(value) => {
                for value in values(value) {
                    if let Value::ServerError(err) = value {
                        self.topology.saw(&RedisError::from(err.clone()));
                    }
                }
            }
        }
    }
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = self.inner.req_packed_command(cmd).await;
            self.check(&result, |value| vec![value]);
            match ask_target(&result) {
                Some(addr) => self.topology.ask(&addr, cmd).await,
                None => result,
            }
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let result = self
                .inner
                .req_packed_commands(pipeline, offset, count)
                .await;
            self.check(&result, |values| values.iter().collect());
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

#[cfg(test)]
mod tests {
    use super::split_addr;

    #[test]
    fn node_addresses_split_into_host_and_port() {
        assert_eq!(split_addr("10.0.0.7:7001"), Some(("10.0.0.7", 7001)));
        assert_eq!(split_addr("redis-1:6379"), Some(("redis-1", 6379)));
        assert_eq!(split_addr("[::1]:7000"), Some(("::1", 7000)));
        assert_eq!(split_addr("nohost"), None);
        assert_eq!(split_addr("host:port"), None);
    }
}
