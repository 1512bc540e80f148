//! A private `redis-server` for `demo`: a child process on a free loopback port,
//! with its data (AOF on) in a temporary directory, gone when the demo ends.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::process::{Child, Command};

/// How long the server may take to answer PING.
const READY_WITHIN: Duration = Duration::from_secs(10);

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
        let binary = find_on_path("redis-server").ok_or(EmbeddedError::NotInstalled)?;
        let start_err = |source| EmbeddedError::Start {
            path: binary.display().to_string(),
            source,
        };
        let dir = tempfile::Builder::new()
            .prefix("sms-alerts-redis-")
            .tempdir()
            .map_err(start_err)?;
        let port = free_port().map_err(start_err)?;
        let log = dir.path().join("redis.log");
        let child = Command::new(&binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(persistence.options())
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
