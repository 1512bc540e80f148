//! A real Redis Cluster for tests, in one container of the test image.
//!
//! The container shares the host's network (`--network host`) and every node
//! binds 127.0.0.1 on ports picked free on the host, so the host reaches each
//! node at the very address the cluster announces in MOVED and ASK replies:
//! no announce-ip mapping, and no traffic to addresses off loopback. The
//! container's first process is an idle redis-server on a Unix socket that
//! only keeps the container up; each node is one more `redis-server` started
//! in it with `docker exec`, so any node can be killed without taking the
//! container down, and nodes can be added later. The test image need not hold
//! a shell or redis-cli: the host's `redis-cli --cluster create` joins the
//! nodes, and a node is killed with SIGKILL from the host.

use std::collections::BTreeSet;
use std::ops::RangeInclusive;
use std::process::Command;
use std::time::{Duration, Instant};

use redis::{Cmd, FromRedisValue, cmd};
use testcontainers::core::{ExecCommand, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

use super::{free_port, redis_image};

/// Slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// How long a cluster may take to agree after a change; failover alone takes
/// a few node timeouts.
const SETTLE_WITHIN: Duration = Duration::from_secs(40);

/// A Redis Cluster in one container, removed when dropped.
pub struct TestCluster {
    container: ContainerAsync<GenericImage>,
    /// Every node started, in start order; the first `primaries` were the
    /// primaries at creation.
    nodes: Vec<Node>,
}

/// A primary as the cluster sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Primary {
    /// `redis://127.0.0.1:port`.
    pub url: String,
    /// Its cluster node id.
    pub id: String,
    /// The slot ranges it serves, ascending; empty for a primary with no slots.
    pub slots: Vec<RangeInclusive<u16>>,
}

/// What `kill_primary_of` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failover {
    /// The primary killed.
    pub killed: String,
    /// The replica promoted in its place.
    pub promoted: String,
}

#[derive(Debug, Clone, Copy)]
struct Node {
    port: u16,
    bus_port: u16,
    alive: bool,
}

impl Node {
    fn url(&self) -> String {
        url(self.port)
    }
}

fn url(port: u16) -> String {
    format!("redis://127.0.0.1:{port}")
}

/// The port of a `redis://127.0.0.1:port` URL of this fixture.
fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("not a node URL of this cluster: {url}"))
}

impl TestCluster {
    /// Starts `primaries` primaries (at least 3, as `redis-cli --cluster
    /// create` requires) with `replicas` replicas each, and waits until every
    /// node says `cluster_state:ok`, all agree on the node table and slot map,
    /// and every replica's link to its primary is up.
    pub async fn start(primaries: usize, replicas: usize) -> Self {
        let (name, tag) = redis_image();
        let container = GenericImage::new(name.clone(), tag.clone())
            .with_wait_for(WaitFor::message_on_stdout("to accept connections"))
            .with_network("host")
            .with_cmd([
                "--port",
                "0",
                "--unixsocket",
                "/tmp/keeper.sock",
                "--save",
                "",
            ])
            .with_label("sms-alerts-test", "1")
            // .ci/test removes a run's containers when that run is over.
            .with_label("sms-alerts-test.run", run_id())
            .with_startup_timeout(Duration::from_secs(60))
            .start()
            .await
            .unwrap_or_else(|err| panic!("cannot start cluster image {name}:{tag}: {err}"));
        let mut cluster = Self {
            container,
            nodes: Vec::new(),
        };
        for _ in 0..primaries * (1 + replicas) {
            cluster.spawn_node().await;
        }
        let output = tokio::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(
                cluster
                    .nodes
                    .iter()
                    .map(|n| format!("127.0.0.1:{}", n.port)),
            )
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .await
            .expect("redis-cli runs (apt-get install redis-tools)");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        cluster.settle("the new cluster is ok", |_| None).await;
        cluster
    }

    /// The first node still running: at start, the first primary.
    pub fn seed_url(&self) -> String {
        self.live().next().expect("a node is running").url()
    }

    /// Every node still running, primaries and replicas, in start order.
    pub fn node_urls(&self) -> Vec<String> {
        self.live().map(Node::url).collect()
    }

    /// The primaries the cluster has now (those with no slots included),
    /// ordered by their first slot, as the seed node sees them.
    pub async fn primaries(&self) -> Vec<Primary> {
        let view = view(port_of(&self.seed_url()))
            .await
            .unwrap_or_else(|err| panic!("CLUSTER NODES on {}: {err}", self.seed_url()));
        let mut primaries: Vec<Primary> = view
            .into_iter()
            .filter(|n| n.primary && !n.failing)
            .map(|n| Primary {
                url: url(n.port),
                id: n.id,
                slots: n.slots,
            })
            .collect();
        primaries.sort_by_key(|p| p.slots.first().map_or(SLOTS, |r| *r.start()));
        primaries
    }

    /// The URL of the primary serving `slot` now.
    pub async fn owner_of_slot(&self, slot: u16) -> String {
        self.primaries()
            .await
            .into_iter()
            .find(|p| p.slots.iter().any(|r| r.contains(&slot)))
            .unwrap_or_else(|| panic!("no primary serves slot {slot}"))
            .url
    }

    /// SIGKILLs the primary serving `slot`, then waits for its replica's
    /// promotion ([`Self::wait_for_promotion`]). Needs a replica per primary.
    pub async fn kill_primary_of(&mut self, slot: u16) -> Failover {
        let killed = self.owner_of_slot(slot).await;
        self.kill_node(&killed);
        let promoted = self.wait_for_promotion(slot, &killed).await;
        Failover { killed, promoted }
    }

    /// SIGKILLs the node at `url` (from the host: the test image may have no
    /// `kill`), as a crashed machine would stop, and returns at once.
    pub fn kill_node(&mut self, url: &str) {
        let port = port_of(url);
        let top = Command::new("docker")
            .args(["top", self.container.id(), "-eo", "pid,args"])
            .output()
            .expect("docker runs");
        let listing = String::from_utf8_lossy(&top.stdout);
        let needle = format!("127.0.0.1:{port} ");
        let pid = listing
            .lines()
            .find(|line| line.contains(&needle))
            .and_then(|line| line.split_whitespace().next())
            .unwrap_or_else(|| panic!("no redis-server on port {port} in:\n{listing}"));
        let status = Command::new("kill")
            .args(["-KILL", pid])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -KILL {pid} (node {url}) failed");
        let node = self.nodes.iter_mut().find(|n| n.port == port);
        node.expect("the node is this cluster's").alive = false;
    }

    /// Waits until a replica serves `slot` in place of `dead` (killed), every
    /// running node says `cluster_state:ok` and all agree; returns the new owner.
    pub async fn wait_for_promotion(&self, slot: u16, dead: &str) -> String {
        let dead_port = port_of(dead);
        self.settle("a replica is promoted", |view| {
            let owner = owner_in(view, slot);
            (owner.is_none() || owner == Some(dead_port))
                .then(|| format!("slot {slot} is still served by {owner:?}"))
        })
        .await;
        self.owner_of_slot(slot).await
    }

    /// Moves `slot` to the primary at `to` the way `redis-cli --cluster
    /// reshard` does: SETSLOT IMPORTING on the target, MIGRATING on the
    /// source, then each key of the slot MIGRATEd on its own, awaiting
    /// `between_keys(key)` after each, so the caller sees the slot half moved
    /// (the source answers ASK for a key already moved); at the end SETSLOT
    /// NODE on the target, the source and every other primary, and a wait
    /// until all nodes agree. Returns the number of keys moved.
    pub async fn migrate_slot(
        &self,
        slot: u16,
        to: &str,
        mut between_keys: impl AsyncFnMut(&str),
    ) -> usize {
        let source = port_of(&self.owner_of_slot(slot).await);
        let target = port_of(to);
        assert_ne!(source, target, "slot {slot} is already on {to}");
        let source_id: String = must(source, cmd("CLUSTER").arg("MYID")).await;
        let target_id: String = must(target, cmd("CLUSTER").arg("MYID")).await;
        let setslot = |state: &str, id: &str| {
            cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg(state)
                .arg(id)
                .clone()
        };
        must::<()>(target, &setslot("IMPORTING", &source_id)).await;
        must::<()>(source, &setslot("MIGRATING", &target_id)).await;
        let mut moved = 0;
        loop {
            let keys: Vec<String> = must(
                source,
                cmd("CLUSTER").arg("GETKEYSINSLOT").arg(slot).arg(100),
            )
            .await;
            if keys.is_empty() {
                break;
            }
            for key in keys {
                let migrate = cmd("MIGRATE")
                    .arg("127.0.0.1")
                    .arg(target)
                    .arg(&key)
                    .arg(0)
                    .arg(5000)
                    .clone();
                must::<String>(source, &migrate).await;
                moved += 1;
                between_keys(&key).await;
            }
        }
        let primaries = self.primaries().await.into_iter().map(|p| port_of(&p.url));
        let others: Vec<u16> = primaries.filter(|&p| p != source && p != target).collect();
        for port in [target, source].into_iter().chain(others) {
            must::<()>(port, &setslot("NODE", &target_id)).await;
        }
        self.settle("the slot's new owner is known to all", |view| {
            let owner = owner_in(view, slot);
            (owner != Some(target)).then(|| format!("slot {slot} is served by {owner:?}"))
        })
        .await;
        moved
    }

    /// Starts one more node, has the cluster MEET it and waits until every
    /// node knows it: a primary with no slots and no Functions loaded.
    /// Returns its URL.
    pub async fn add_empty_primary(&mut self) -> String {
        let node = self.spawn_node().await;
        let meet = cmd("CLUSTER")
            .arg("MEET")
            .arg("127.0.0.1")
            .arg(node.port)
            .arg(node.bus_port)
            .clone();
        must::<()>(port_of(&self.seed_url()), &meet).await;
        self.settle("the new primary has joined", |_| None).await;
        node.url()
    }

    fn live(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.alive)
    }

    /// Starts a node in the container and waits until it answers PING.
    async fn spawn_node(&mut self) -> Node {
        let port = free_port();
        let bus_port = std::iter::repeat_with(free_port)
            .find(|&p| p != port)
            .expect("a second free port");
        let (port_arg, bus_arg) = (port.to_string(), bus_port.to_string());
        let args = [
            "redis-server",
            "--port",
            &port_arg,
            "--cluster-port",
            &bus_arg,
            "--bind",
            "127.0.0.1",
            "--protected-mode",
            "no",
            "--daemonize",
            "yes",
            "--cluster-enabled",
            "yes",
            "--cluster-node-timeout",
            "1000",
            // A replica whose link was down a while may still take over: tests
            // kill primaries of clusters that just started.
            "--cluster-replica-validity-factor",
            "0",
            "--appendonly",
            "no",
            "--save",
            "",
            "--enable-debug-command",
            "yes",
            // Every node shares the container's /data.
            "--cluster-config-file",
            &format!("nodes-{port}.conf"),
            "--dbfilename",
            &format!("dump-{port}.rdb"),
            "--logfile",
            &format!("node-{port}.log"),
            "--pidfile",
            &format!("node-{port}.pid"),
        ];
        self.container
            .exec(ExecCommand::new(args))
            .await
            .unwrap_or_else(|err| panic!("cannot start a node on port {port}: {err}"));
        let until = Instant::now() + Duration::from_secs(20);
        while query::<String>(port, &cmd("PING")).await.is_err() {
            assert!(
                Instant::now() < until,
                "node {port} does not answer; its log is /data/node-{port}.log in container {}",
                self.container.id()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let node = Node {
            port,
            bus_port,
            alive: true,
        };
        self.nodes.push(node);
        node
    }

    /// Waits until every running node says `cluster_state:ok`, sees exactly
    /// the running nodes as healthy, agrees with the others on roles and
    /// slots, has its replication link up if it is a replica, and passes
    /// `check` on its own view (which returns what is still wrong).
    async fn settle(&self, what: &str, check: impl Fn(&[ClusterNode]) -> Option<String>) {
        let until = Instant::now() + SETTLE_WITHIN;
        loop {
            let problem = match self.disagreement().await {
                Ok(views) => views.iter().find_map(|v| check(v)),
                Err(problem) => Some(problem),
            };
            let Some(problem) = problem else { return };
            assert!(
                Instant::now() < until,
                "timed out after {SETTLE_WITHIN:?} waiting until {what}: {problem}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every running node's view if they all agree and are ok, else what is wrong.
    async fn disagreement(&self) -> Result<Vec<Vec<ClusterNode>>, String> {
        let live: BTreeSet<u16> = self.live().map(|n| n.port).collect();
        let mut views = Vec::new();
        let mut first: Option<(u16, Vec<String>)> = None;
        for &port in &live {
            let info: String = query(port, cmd("CLUSTER").arg("INFO"))
                .await
                .map_err(|e| format!("{port}: {e}"))?;
            if !info.contains("cluster_state:ok") {
                return Err(format!("node {port} is not cluster_state:ok"));
            }
            let view = view(port).await.map_err(|e| format!("{port}: {e}"))?;
            let healthy: BTreeSet<u16> =
                view.iter().filter(|n| !n.failing).map(|n| n.port).collect();
            if healthy != live {
                return Err(format!(
                    "node {port} sees {healthy:?} healthy, running are {live:?}"
                ));
            }
            let me = view.iter().find(|n| n.myself).ok_or("no myself line")?;
            if !me.primary {
                let replication: String = query(port, cmd("INFO").arg("replication"))
                    .await
                    .map_err(|e| e.to_string())?;
                if !replication.contains("master_link_status:up") {
                    return Err(format!("replica {port} has no link to its primary yet"));
                }
            }
            let signature = signature(&view);
            match &first {
                Some((other, seen)) if *seen != signature => {
                    return Err(format!(
                        "node {port} sees {signature:?}, node {other} sees {seen:?}"
                    ));
                }
                Some(_) => {}
                None => first = Some((port, signature)),
            }
            views.push(view);
        }
        Ok(views)
    }
}

/// The label value `.ci/test` removes this run's containers by.
fn run_id() -> String {
    std::env::var("SMS_TEST_RUN_ID").unwrap_or_else(|_| "manual".to_owned())
}

/// One line of CLUSTER NODES.
#[derive(Debug, Clone)]
struct ClusterNode {
    id: String,
    port: u16,
    myself: bool,
    primary: bool,
    /// Flagged failed, possibly failed, unreachable or still in handshake.
    failing: bool,
    primary_id: Option<String>,
    slots: Vec<RangeInclusive<u16>>,
}

/// A node's CLUSTER NODES, parsed.
async fn view(port: u16) -> redis::RedisResult<Vec<ClusterNode>> {
    let text: String = query(port, cmd("CLUSTER").arg("NODES")).await?;
    Ok(text.lines().filter_map(parse_node).collect())
}

/// `<id> <ip:port@bus[,host]> <flags> <primary> <ping> <pong> <epoch> <link> <slot>...`
fn parse_node(line: &str) -> Option<ClusterNode> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let address = fields.get(1)?.split(['@', ',']).next()?;
    let flags: Vec<&str> = fields.get(2)?.split(',').collect();
    let has = |flag| flags.contains(&flag);
    // Slots being imported or migrated show as `[slot->-id]`: not served yet.
    let slots = fields
        .get(8..)
        .unwrap_or_default()
        .iter()
        .filter(|s| !s.starts_with('['));
    let slots = slots.filter_map(|s| match s.split_once('-') {
        Some((a, b)) => Some(a.parse().ok()?..=b.parse().ok()?),
        None => s.parse().ok().map(|n| n..=n),
    });
    Some(ClusterNode {
        id: fields[0].to_owned(),
        port: address.rsplit(':').next()?.parse().ok()?,
        myself: has("myself"),
        primary: has("master"),
        failing: has("fail") || has("fail?") || has("handshake") || has("noaddr"),
        primary_id: Some(fields.get(3)?)
            .filter(|id| **id != "-")
            .map(|id| (*id).to_owned()),
        slots: slots.collect(),
    })
}

/// What all nodes must agree on: each healthy node's role and slots.
fn signature(view: &[ClusterNode]) -> Vec<String> {
    let port_of_id = |id: &str| view.iter().find(|n| n.id == id).map(|n| n.port);
    let mut lines: Vec<String> = view
        .iter()
        .filter(|n| !n.failing)
        .map(|n| match &n.primary_id {
            Some(id) => format!("{} replica of {:?}", n.port, port_of_id(id)),
            None => format!("{} primary of {:?}", n.port, n.slots),
        })
        .collect();
    lines.sort();
    lines
}

/// The port of the healthy primary serving `slot` in `view`.
fn owner_in(view: &[ClusterNode], slot: u16) -> Option<u16> {
    view.iter()
        .find(|n| n.primary && !n.failing && n.slots.iter().any(|r| r.contains(&slot)))
        .map(|n| n.port)
}

/// The slot of `key`: CRC16 (XMODEM) of its hash tag (the part between the
/// first `{` and the next `}`, when not empty) or of the whole key, mod 16384.
pub fn slot_of(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tag = bytes.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &bytes[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tag.unwrap_or(bytes)) % SLOTS
}

fn crc16(data: &[u8]) -> u16 {
    data.iter().fold(0, |crc, &byte| {
        (0..8).fold(crc ^ (u16::from(byte) << 8), |crc, _| {
            if crc & 0x8000 == 0 {
                crc << 1
            } else {
                (crc << 1) ^ 0x1021
            }
        })
    })
}

/// Runs `command` on the node at `port` over a connection of its own.
pub async fn query<T: FromRedisValue>(port: u16, command: &Cmd) -> redis::RedisResult<T> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(10)));
    let mut conn = redis::Client::open(url(port))?
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    command.query_async(&mut conn).await
}

/// [`query`], panicking with the command and node if it fails.
async fn must<T: FromRedisValue>(port: u16, command: &Cmd) -> T {
    query(port, command)
        .await
        .unwrap_or_else(|err| panic!("{} on node {port}: {err}", describe(command)))
}

/// The command's words, for messages.
fn describe(command: &Cmd) -> String {
    let words = command.args_iter().map(|arg| match arg {
        redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        _ => "<cursor>".to_owned(),
    });
    words.collect::<Vec<_>>().join(" ")
}
