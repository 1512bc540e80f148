//! What the program uses: validated settings, one struct per subcommand,
//! the defaults as named constants, the value types (`values`) and the
//! value checks ([`check`]). The command line and the config files are
//! turned into these by [`crate::cli`]; nothing downstream sees a raw
//! argument.

pub mod check;
mod values;

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

use crate::store::QueueOptions;
pub use crate::store::{QueueSettings, TlsSettings};
pub use values::{
    AlertRules, BenchSizes, DEFAULT_BENCH_MESSAGES, DEFAULT_BENCH_RECLAIM_PENDING,
    DEFAULT_BENCH_RETENTION, DEFAULT_BENCH_SIMULATION, DeadLetterId, Distribution, LogFormat,
    LogRotation,
};

/// Default Redis URL.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "sms";
/// Default number of messages a producer generates.
pub const DEFAULT_COUNT: u64 = 1000;
/// Default messages per pipelined write.
pub const DEFAULT_BATCH: usize = 1000;
/// Default mean send time.
pub const DEFAULT_MEAN: Duration = Duration::from_millis(200);
/// Default sends in progress at once.
pub const DEFAULT_CONCURRENCY: usize = 64;
/// Default deliveries before a failing message is dead-lettered.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Default lease on a message being worked on.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);
/// Default wait before a failed message may be retried.
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_secs(1);
/// Default time in-flight sends get to finish on shutdown.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Default monitor interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// Default idle time before `senders prune` removes a dead sender.
pub const DEFAULT_PRUNE_IDLE: Duration = Duration::from_secs(600);
/// Default slack beyond the retention before a group holding trimming back
/// raises an alert.
pub const DEFAULT_ALERT_HELD_BACK: Duration = Duration::from_secs(300);
/// Default entries the audit reads per round trip.
pub const DEFAULT_AUDIT_PAGE: usize = 10_000;
/// Default number of dead letters `dead list` shows.
pub const DEFAULT_DEAD_LIMIT: u64 = 100;
/// Default address `serve` listens on.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default most messages one API request may carry.
pub const DEFAULT_MAX_BATCH: usize = 1000;
/// Default largest API request body, in bytes: a full batch of messages in
/// the longer request shape fits with room to spare.
pub const DEFAULT_MAX_BODY: usize = 2 * 1024 * 1024;
/// Default time an idempotency key's answer is kept.
pub const DEFAULT_IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default time an API write may wait for Redis before the request gets 503.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time an HTTP client has to send a request's head, and then its
/// body.
pub const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A bad setting. Every one is a usage error: exit code 2.
#[derive(Debug, Error)]
pub enum SettingsError {
    /// A value is out of range or does not parse.
    #[error("invalid value '{value}' for '{option}'{origin}: {reason}")]
    Invalid {
        /// The option, as named where it was found.
        option: String,
        /// The bad value.
        value: String,
        /// Where the value came from, e.g. ` in config file 'x.toml'`.
        origin: String,
        /// What a valid value looks like.
        reason: String,
    },
    /// The config file cannot be read or parsed (includes unknown keys).
    #[error("cannot use config file '{path}': {reason}")]
    ConfigUnreadable {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Two settings contradict each other.
    #[error("{0}")]
    Conflict(String),
}

/// Settings of `produce`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProduceSettings {
    /// Messages to generate (at least 1).
    pub count: u64,
    /// Generator seed; `None` for a random one (recorded with the run).
    pub seed: Option<u64>,
    /// Messages per pipelined write (at least 1).
    pub batch: usize,
    /// The new run's id; `None` for a random one.
    pub run_id: Option<String>,
    /// A run to finish instead of starting one: its count, seed and batch
    /// size come from its record.
    pub resume: Option<String>,
    /// The liveness lease on the run: a producer gone this long is dead.
    pub lease: Duration,
    /// How a new run picks each message's partition (a resumed run routes
    /// as recorded).
    pub routing: crate::routing::Routing,
}

impl Default for ProduceSettings {
    fn default() -> Self {
        Self {
            count: DEFAULT_COUNT,
            seed: None,
            batch: DEFAULT_BATCH,
            run_id: None,
            resume: None,
            lease: DEFAULT_LEASE,
            routing: crate::routing::Routing::Recipient,
        }
    }
}

/// The simulated send time: a distribution around a mean.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DelayModel {
    /// Shape of the distribution.
    pub distribution: Distribution,
    /// Mean send time; zero means no delay at all.
    pub mean: Duration,
    /// Standard deviation (normal and uniform).
    pub stddev: Duration,
}

/// When the simulated gateway is down: for `down` at the start of every
/// `every`, on the wall clock, so that every sender sees the same outages
/// (as senders sharing one real gateway would). An attempt drawn while it is
/// down fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutageSchedule {
    /// The period.
    pub every: Duration,
    /// How long each outage lasts, from the start of a period (less than
    /// `every`).
    pub down: Duration,
}

impl OutageSchedule {
    /// Whether the gateway is down at `unix_ms` (milliseconds since the Unix
    /// epoch).
    pub fn is_down_at(&self, unix_ms: u64) -> bool {
        let every = self.every.as_millis().max(1) as u64;
        unix_ms % every < self.down.as_millis() as u64
    }
}

/// The circuit breaker of a sender's gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Failed sends in a row that open it.
    pub failures: u32,
    /// How long it stays open before probing.
    pub cooldown: Duration,
    /// The longest cool-down, which doubles each time a probe fails.
    pub max_cooldown: Duration,
    /// Probes that must pass to close it (sent one at a time or together).
    pub probes: u32,
}

/// The gateway a sender sends through, and how it behaves.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GatewaySettings {
    /// Its name: senders of one gateway share its throughput cap.
    pub name: String,
    /// Most sends per second through it, over every sender sharing it;
    /// `None` for no cap.
    pub rate: Option<u32>,
    /// Its circuit breaker; `None` for none.
    pub breaker: Option<BreakerSettings>,
    /// Probability that the simulated gateway answers "throttled": the
    /// message is retried later without spending an attempt.
    pub throttle_rate: f64,
    /// Messages older than this when their turn comes are dead-lettered as
    /// `expired` instead of sent late; `None` for no limit.
    pub expire_after: Option<Duration>,
}

/// Default gateway name.
pub const DEFAULT_GATEWAY: &str = "default";
/// Default failed sends in a row that open a breaker (with --breaker).
pub const DEFAULT_BREAKER_FAILURES: u32 = 20;
/// Default cool-down of an open breaker.
pub const DEFAULT_BREAKER_COOLDOWN: Duration = Duration::from_secs(1);
/// How many times its first cool-down a breaker whose probes keep failing
/// waits at most: long enough not to probe a dead gateway every second,
/// short enough that sending resumes soon after the gateway is back.
pub const MAX_BREAKER_COOLDOWN_FACTOR: u32 = 4;
/// Probes that close a half-open breaker.
pub const BREAKER_PROBES: u32 = 3;

/// When the simulated gateway is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// On a schedule, on the wall clock.
    Every(OutageSchedule),
    /// Once, `after` the sender starts, for `down` (a scenario's timeline).
    Once {
        /// How long after the sender starts the outage begins.
        after: Duration,
        /// How long it lasts.
        down: Duration,
    },
}

/// Settings of `send`.
#[derive(Debug, Clone, PartialEq)]
pub struct SendSettings {
    /// Consumer name in the group.
    pub name: String,
    /// Simulated send time.
    pub delay: DelayModel,
    /// Probability that one attempt fails, in [0, 1].
    pub failure_rate: f64,
    /// Most sends in progress at once (at least 1).
    pub concurrency: usize,
    /// Deliveries before a failing message is dead-lettered (at least 1).
    pub max_attempts: u32,
    /// Lease on a message being worked on.
    pub lease: Duration,
    /// Wait before a failed message may be retried (at most the lease).
    pub retry_backoff: Duration,
    /// Time in-flight sends get to finish on shutdown.
    pub shutdown_timeout: Duration,
    /// Seed of send times and failures; `None` for a random one.
    pub seed: Option<u64>,
    /// The partitions to read; `None` for all of them, including those
    /// added while the sender runs.
    pub partitions: Option<Vec<u32>>,
    /// When the simulated gateway is down; `None` for never.
    pub outage: Option<Outage>,
    /// The gateway it sends through.
    pub gateway: GatewaySettings,
    /// The channel it sends for, when not the one its queue handle is on
    /// (a scenario's senders, which share one handle).
    pub channel: Option<String>,
}

/// Settings of `monitor`.
#[derive(Debug, Clone, PartialEq)]
pub struct MonitorSettings {
    /// Time between two reports.
    pub interval: Duration,
    /// Exit once everything produced is settled.
    pub until_done: bool,
    /// JSON lines instead of text.
    pub json: bool,
    /// A row per partition after the totals, in text and the live display.
    pub by_partition: bool,
    /// Alerts to raise.
    pub alerts: AlertRules,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// Where and how logs are written.
#[derive(Debug, Clone, PartialEq)]
pub struct LogSettings {
    /// Line format.
    pub format: LogFormat,
    /// A file instead of stderr.
    pub file: Option<PathBuf>,
    /// When the file is rotated.
    pub rotation: LogRotation,
    /// Rotated files kept.
    pub keep: usize,
}

/// Default number of rotated log files kept.
pub const DEFAULT_LOG_KEEP: usize = 7;

/// Settings of `demo`.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoSettings {
    /// What the scenario shows.
    pub description: String,
    /// Run on a private cluster of this many primaries (none: one Redis).
    pub cluster: Option<u32>,
    /// The queue's partitions.
    pub partitions: u32,
    /// The queue's channels (none: the default one).
    pub channels: Vec<crate::channel::Channel>,
    /// What to produce.
    pub produce: ProduceSettings,
    /// The senders to run, each with its own name.
    pub senders: Vec<SendSettings>,
    /// How to report (always until done).
    pub monitor: MonitorSettings,
}

/// The scenario `demo` runs when none is given.
pub const DEFAULT_SCENARIO: &str = include_str!("../../config/scenarios/default.toml");

/// Default demo report interval.
pub const DEFAULT_DEMO_INTERVAL: Duration = Duration::from_secs(1);

/// What `dead` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadTask {
    /// List dead letters.
    List {
        /// Only this reason.
        reason: Option<String>,
        /// Most to list.
        limit: u64,
        /// JSON lines.
        json: bool,
    },
    /// Move dead letters back into the stream: those with a reason, or by id.
    Requeue {
        /// Every dead letter with this reason.
        reason: Option<String>,
        /// These dead letters.
        ids: Vec<String>,
    },
    /// Delete dead letters older than this.
    Purge {
        /// Age of the youngest to delete.
        older_than: Duration,
    },
}

/// The subcommand to run, with its validated settings.
#[derive(Debug, Clone, PartialEq)]
pub enum Task {
    /// `migrate`.
    Migrate(QueueOptions),
    /// `produce`.
    Produce(ProduceSettings),
    /// `send`.
    Send(SendSettings),
    /// `monitor`.
    Monitor(MonitorSettings),
    /// `audit`: JSON output, entries per round trip.
    Audit {
        /// JSON instead of text.
        json: bool,
        /// Entries read per round trip.
        page: usize,
    },
    /// `senders`: list them.
    ListSenders {
        /// JSON instead of a table.
        json: bool,
    },
    /// `demo`.
    Demo(DemoSettings),
    /// `bench`.
    Bench(BenchSizes, crate::embedded::Persistence),
    /// `completions`: print a completion script; needs no Redis.
    Completions(clap_complete::Shell),
    /// `acl`: print the ACL rule of a least-privileged user; needs no Redis.
    Acl {
        /// The user's name.
        user: String,
    },
    /// `senders prune`.
    PruneSenders {
        /// JSON instead of text.
        json: bool,
        /// Least idle time of a sender to remove.
        idle: Duration,
    },
    /// `trim`.
    Trim {
        /// JSON instead of text.
        json: bool,
    },
    /// `pause` (`true`) or `resume`.
    Pause {
        /// Pause, or resume.
        paused: bool,
        /// JSON instead of text.
        json: bool,
    },
    /// `runs`.
    Runs {
        /// JSON instead of a table.
        json: bool,
    },
    /// `dead ...`.
    Dead(DeadTask),
    /// `serve`.
    Serve(ServeSettings),
    /// `repair`.
    Repair {
        /// Do it, rather than only print it.
        yes: bool,
        /// Where a re-created group starts: `end` or an entry id.
        group_start: String,
    },
}

impl Task {
    /// Whether the task only reads the queue, so it must start and work on
    /// a Redis that refuses writes (at `maxmemory`).
    pub fn is_read_only(&self) -> bool {
        matches!(
            self,
            Self::Monitor(_)
                | Self::Audit { .. }
                | Self::ListSenders { .. }
                | Self::Runs { .. }
                | Self::Dead(DeadTask::List { .. })
        )
    }
}

/// Settings of `serve`.
#[derive(Clone, PartialEq)]
pub struct ServeSettings {
    /// Where to listen.
    pub listen: std::net::SocketAddr,
    /// Most messages one request may carry.
    pub max_batch: usize,
    /// Largest request body, in bytes.
    pub max_body: usize,
    /// How long an idempotency key's answer is kept.
    pub idempotency_ttl: Duration,
    /// Unsettled messages in a queue over which writes get 429; `None`: no limit.
    pub max_lag: Option<u64>,
    /// The bearer token every `/api/` request must carry; `None`: no auth.
    pub api_token: Option<String>,
    /// How long a write may wait for Redis before the request gets 503.
    pub request_timeout: Duration,
    /// How long a client has to send a request's head (else the connection
    /// is closed), and then its body (else 408).
    pub client_timeout: Duration,
    /// The only other queues a request may name in `topic_name`; `None`:
    /// any queue on the same Redis.
    pub topics: Option<Vec<String>>,
    /// Channels the queue must have, added at boot when it lacks them.
    pub channels: Vec<crate::channel::Channel>,
}

impl std::fmt::Debug for ServeSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeSettings")
            .field("listen", &self.listen)
            .field("max_batch", &self.max_batch)
            .field("max_body", &self.max_body)
            .field("idempotency_ttl", &self.idempotency_ttl)
            .field("max_lag", &self.max_lag)
            .field("api_token", &self.api_token.as_ref().map(|_| "***"))
            .field("request_timeout", &self.request_timeout)
            .field("client_timeout", &self.client_timeout)
            .field("topics", &self.topics)
            .field("channels", &self.channels)
            .finish()
    }
}

impl Default for ServeSettings {
    fn default() -> Self {
        Self {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_batch: DEFAULT_MAX_BATCH,
            max_body: DEFAULT_MAX_BODY,
            idempotency_ttl: DEFAULT_IDEMPOTENCY_TTL,
            max_lag: None,
            api_token: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            client_timeout: DEFAULT_CLIENT_TIMEOUT,
            topics: None,
            channels: Vec::new(),
        }
    }
}

/// Everything the binary needs to run one invocation.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Where the queue lives.
    pub queue: QueueSettings,
    /// Whether the Redis URL was given (flag, environment or file) rather than
    /// defaulted: `demo` starts a private Redis when it was not.
    pub redis_url_given: bool,
    /// Where and how logs are written.
    pub log: LogSettings,
    /// What to run.
    pub task: Task,
}
