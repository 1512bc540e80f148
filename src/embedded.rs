//! A private `redis-server` for `demo`: a child process on a free loopback port,
//! with its data (AOF on) in a temporary directory, gone when the demo ends;
//! and a private Redis Cluster of such servers, one primary each.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::process::{Child, Command};

/// How long the server may take to answer PING.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// How long the cluster's nodes may take to meet and agree on the slot map.
const CLUSTER_READY_WITHIN: Duration = Duration::from_secs(30);

/// Slots in a Redis Cluster.
const CLUSTER_SLOTS: usize = 16384;

/// Why the private Redis could not be started.
#[derive(Debug, Error)]
pub enum EmbeddedError {
    /// No `redis-server` on PATH.
    #[error(
        "redis-server is not installed, and no --redis-url was given. Install it \
         (Debian/Ubuntu: apt-get install redis-server; Fedora: dnf install redis; macOS: brew install redis), \
         or point --redis-url (or REDIS_URL) at a Redis 7"
    )]
    NotInstalled,
    /// The process or its directory could not be set up.
    #[error("cannot start redis-server ({path}): {source}")]
    Start {
        /// The binary.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// It started but did not answer; its log says why.
    #[error("redis-server did not become ready within {READY_WITHIN:?}; its log: {log}")]
    NotReady {
        /// The end of its log.
        log: String,
    },
    /// A command that forms the cluster failed on one node.
    #[error("cannot form the cluster: {command} on {url}: {source}")]
    Cluster {
        /// The command, e.g. `CLUSTER MEET`.
        command: &'static str,
        /// The node it was sent to.
        url: String,
        /// What the node or the connection said.
        source: redis::RedisError,
    },
    /// The nodes did not all reach `cluster_state:ok` in time.
    #[error("the cluster was not ok within {CLUSTER_READY_WITHIN:?}: {state}")]
    ClusterNotReady {
        /// What the last node asked said of itself.
        state: String,
    },
}

/// How the private Redis keeps its data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Persistence {
    /// Append-only file, fsync every second.
    // Fine for a demo or a benchmark; a deployment that must lose nothing
    // acknowledged runs `appendfsync always`, as docker-compose.yml does
    // (README, Guarantees).
    #[default]
    Aof,
    /// No persistence at all.
    None,
}

impl Persistence {
    /// The redis-server options that set it up.
    fn options(self) -> [&'static str; 6] {
        let aof = match self {
            Self::Aof => "yes",
            Self::None => "no",
        };
        [
            "--appendonly",
            aof,
            "--appendfsync",
            "everysec",
            "--save",
            "",
        ]
    }

    /// A few words for reports.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Aof => "AOF on, fsync every second",
            Self::None => "no persistence",
        }
    }
}

/// A running private Redis. Dropping it kills the server and removes its data.
#[derive(Debug)]
pub struct EmbeddedRedis {
    child: Child,
    url: String,
    // Removed on drop, after the child is killed.
    _dir: tempfile::TempDir,
}

impl EmbeddedRedis {
    /// Starts `redis-server` from PATH with `persistence` and waits until it
    /// answers.
    pub async fn start(persistence: Persistence) -> Result<Self, EmbeddedError> {
        let port = free_port().map_err(start_error)?;
        Self::start_with(persistence, port, &[]).await
    }

    /// [`Self::start`] on `port`, with more `redis-server` options (a cluster
    /// node's).
    async fn start_with(
        persistence: Persistence,
        port: u16,
        extra: &[&str],
    ) -> Result<Self, EmbeddedError> {
        let binary = find_on_path("redis-server").ok_or(EmbeddedError::NotInstalled)?;
        let start_err = |source| EmbeddedError::Start {
            path: binary.display().to_string(),
            source,
        };
        let dir = tempfile::Builder::new()
            .prefix("sms-alerts-redis-")
            .tempdir()
            .map_err(start_err)?;
        let log = dir.path().join("redis.log");
        let child = Command::new(&binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(persistence.options())
            .args(extra)
            .arg("--dir")
            .arg(dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(start_err)?;
        let url = format!("redis://127.0.0.1:{port}");
        let server = Self {
            child,
            url,
            _dir: dir,
        };
        server.wait_ready(&log).await?;
        tracing::info!(
            url = server.url,
            "started a private redis-server for this run"
        );
        Ok(server)
    }

    /// Where it listens.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stops the server and waits for it to exit.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }

    async fn wait_ready(&self, log: &Path) -> Result<(), EmbeddedError> {
        let client =
            redis::Client::open(self.url.as_str()).map_err(|err| EmbeddedError::NotReady {
                log: err.to_string(),
            })?;
        let started = Instant::now();
        while started.elapsed() < READY_WITHIN {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<()>(&mut conn)
                    .await
                    .is_ok()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        Err(EmbeddedError::NotReady {
            log: tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
        })
    }
}

/// A private Redis Cluster: `redis-server`s from PATH, primaries only, each
/// serving an even share of the slots. Dropping it kills every node and
/// removes their data.
#[derive(Debug)]
pub struct EmbeddedCluster {
    nodes: Vec<ClusterNode>,
}

#[derive(Debug)]
struct ClusterNode {
    server: EmbeddedRedis,
    port: u16,
    bus_port: u16,
}

impl EmbeddedCluster {
    /// Starts `nodes` cluster-enabled servers on free loopback ports, each in a
    /// directory of its own with `persistence`, gives each an even share of
    /// the slots, has them meet, and waits until every node says
    /// `cluster_state:ok`. Needs only `redis-server`: the cluster is formed
    /// with commands, not with redis-cli.
    pub async fn start(
        nodes: NonZeroUsize,
        persistence: Persistence,
    ) -> Result<Self, EmbeddedError> {
        let mut started = Vec::with_capacity(nodes.get());
        for _ in 0..nodes.get() {
            let port = free_port().map_err(start_error)?;
            // Named rather than the default port + 10000, which does not
            // exist for a free port above 55535.
            let bus_port = loop {
                let bus_port = free_port().map_err(start_error)?;
                if bus_port != port {
                    break bus_port;
                }
            };
            let bus = bus_port.to_string();
            let options = ["--cluster-enabled", "yes", "--cluster-port", &bus];
            let server = EmbeddedRedis::start_with(persistence, port, &options).await?;
            started.push(ClusterNode {
                server,
                port,
                bus_port,
            });
        }
        let cluster = Self { nodes: started };
        cluster.assign_slots().await?;
        cluster.meet().await?;
        cluster.wait_ok().await?;
        tracing::info!(
            nodes = cluster.nodes.len(),
            seed = cluster.seed_url(),
            "started a private Redis Cluster for this run"
        );
        Ok(cluster)
    }

    /// Where each node listens, in start order.
    pub fn urls(&self) -> Vec<&str> {
        self.nodes.iter().map(|node| node.server.url()).collect()
    }

    /// Where the first node listens: any node leads a client to the others.
    pub fn seed_url(&self) -> &str {
        self.nodes[0].server.url()
    }

    /// Stops every node and waits for each to exit.
    pub async fn stop(self) {
        for node in self.nodes {
            node.server.stop().await;
        }
    }

    /// Node `i` of `k` serves slots `i*16384/k ..= (i+1)*16384/k - 1`, and
    /// gets config epoch `i + 1`, so that no two primaries start with the same
    /// epoch and the nodes need not settle a collision.
    async fn assign_slots(&self) -> Result<(), EmbeddedError> {
        let count = self.nodes.len();
        for (i, node) in self.nodes.iter().enumerate() {
            let first = i * CLUSTER_SLOTS / count;
            let last = (i + 1) * CLUSTER_SLOTS / count - 1;
            let mut add = redis::cmd("CLUSTER");
            add.arg("ADDSLOTSRANGE").arg(first).arg(last);
            node.run::<()>("CLUSTER ADDSLOTSRANGE", &add).await?;
            let mut epoch = redis::cmd("CLUSTER");
            epoch.arg("SET-CONFIG-EPOCH").arg(i + 1);
            node.run::<()>("CLUSTER SET-CONFIG-EPOCH", &epoch).await?;
        }
        Ok(())
    }

    /// The first node meets every other; gossip tells the rest.
    async fn meet(&self) -> Result<(), EmbeddedError> {
        let Some((seed, others)) = self.nodes.split_first() else {
            return Ok(());
        };
        for node in others {
            let mut meet = redis::cmd("CLUSTER");
            meet.arg("MEET")
                .arg("127.0.0.1")
                .arg(node.port)
                .arg(node.bus_port);
            seed.run::<()>("CLUSTER MEET", &meet).await?;
        }
        Ok(())
    }

    /// Waits until every node knows all the others and says `cluster_state:ok`.
    async fn wait_ok(&self) -> Result<(), EmbeddedError> {
        let started = Instant::now();
        let known = self.nodes.len().to_string();
        loop {
            let mut problem = None;
            for node in &self.nodes {
                let mut info = redis::cmd("CLUSTER");
                info.arg("INFO");
                let info: String = node.run("CLUSTER INFO", &info).await?;
                let field = |name| info_field(&info, name).unwrap_or("?");
                if field("cluster_state") != "ok" || field("cluster_known_nodes") != known {
                    problem = Some(format!(
                        "{}: cluster_state:{}, {} of {known} nodes known",
                        node.server.url(),
                        field("cluster_state"),
                        field("cluster_known_nodes")
                    ));
                    break;
                }
            }
            let Some(state) = problem else { return Ok(()) };
            if started.elapsed() > CLUSTER_READY_WITHIN {
                return Err(EmbeddedError::ClusterNotReady { state });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl ClusterNode {
    /// Runs `command` on this node over a connection of its own.
    async fn run<T: redis::FromRedisValue>(
        &self,
        name: &'static str,
        command: &redis::Cmd,
    ) -> Result<T, EmbeddedError> {
        let client = redis::Client::open(self.server.url()).map_err(|e| self.error(name, e))?;
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| self.error(name, e))?;
        command
            .query_async(&mut conn)
            .await
            .map_err(|e| self.error(name, e))
    }

    fn error(&self, command: &'static str, source: redis::RedisError) -> EmbeddedError {
        EmbeddedError::Cluster {
            command,
            url: self.server.url().to_owned(),
            source,
        }
    }
}

/// The value of `name` in a `name:value` reply such as CLUSTER INFO.
fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// An error setting up a server before it runs (no free port).
fn start_error(source: std::io::Error) -> EmbeddedError {
    EmbeddedError::Start {
        path: "redis-server".to_owned(),
        source,
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// A loopback port nobody listens on now.
fn free_port() -> std::io::Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()
        .map(|addr| addr.port())
}
