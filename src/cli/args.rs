//! Every option, declared once: its name (the TOML key is the field name),
//! default (a constant of [`crate::settings`], shown in `--help`), help text
//! (the doc comment), environment variable and check (a value parser from
//! [`crate::settings::check`]). Config and scenario files are read through
//! these same declarations (see `file.rs`), so a value is checked the same way
//! wherever it comes from.

// The doc comments below are clap's --help text, where `<OPTION>` and
// `<hostname>` are meant literally, not as HTML.
#![allow(rustdoc::invalid_html_tags)]

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::embedded::Persistence;
use crate::settings::{
    self, DEFAULT_ALERT_HELD_BACK, DEFAULT_BATCH, DEFAULT_BENCH_MESSAGES,
    DEFAULT_BENCH_RECLAIM_PENDING, DEFAULT_BENCH_RETENTION, DEFAULT_BENCH_SIMULATION,
    DEFAULT_CLIENT_TIMEOUT, DEFAULT_CONCURRENCY, DEFAULT_COUNT, DEFAULT_DEAD_LIMIT,
    DEFAULT_GATEWAY, DEFAULT_IDEMPOTENCY_TTL, DEFAULT_INTERVAL, DEFAULT_LEASE, DEFAULT_LISTEN,
    DEFAULT_LOG_KEEP, DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_BATCH, DEFAULT_MAX_BODY, DEFAULT_MEAN,
    DEFAULT_PREFIX, DEFAULT_PRUNE_IDLE, DEFAULT_REDIS_URL, DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_RETRY_BACKOFF, DEFAULT_SHUTDOWN_TIMEOUT, Distribution, LogFormat, LogRotation, check,
};

/// A duration option's value: shown in `--help` as it is written (`200ms`).
pub type Span = humantime::Duration;

/// A check of a duration, as a value parser giving a [`Span`].
fn span(
    check: fn(&str) -> Result<Duration, String>,
) -> impl Fn(&str) -> Result<Span, String> + Clone + Send + Sync + 'static {
    move |value| check(value).map(Span::from)
}

/// sms-alerts: a persistent job queue on Redis Streams that simulates sending very
/// large numbers of SMS alerts.
///
/// Start one producer, one monitor and any number of senders, each with its own
/// send time and failure rate. Every option can also be set in the environment
/// (SMS_<OPTION>) or in a TOML config file (--config); flags win over the
/// environment, which wins over the file, which wins over the defaults.
#[derive(Debug, Parser)]
#[command(name = "sms-alerts", version, propagate_version = true)]
pub struct Cli {
    /// Options every subcommand takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by every subcommand.
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Redis to use: redis://, rediss:// (TLS) or unix://; a password in it is never
    /// printed. Also read from REDIS_URL.
    #[arg(
        long,
        global = true,
        env = "SMS_REDIS_URL",
        hide_env_values = true,
        value_name = "URL",
        default_value = DEFAULT_REDIS_URL
    )]
    pub redis_url: String,

    /// File holding the Redis password (trailing newline ignored), so it appears
    /// neither in the URL nor in `ps`. Also read from REDIS_PASSWORD. Overrides a
    /// password in the URL.
    #[arg(long, global = true, env = "SMS_REDIS_PASSWORD_FILE", value_name = "FILE",
          value_parser = check::readable_file)]
    pub redis_password_file: Option<PathBuf>,

    /// PEM file of the certificate authorities a rediss:// server's certificate must
    /// chain to. [default: the system's roots]
    #[arg(long, global = true, env = "SMS_TLS_CA_CERT", value_name = "FILE",
          value_parser = check::readable_file)]
    pub tls_ca_cert: Option<PathBuf>,

    /// PEM client certificate for a Redis with `tls-auth-clients yes` (with --tls-key).
    #[arg(long, global = true, env = "SMS_TLS_CERT", value_name = "FILE",
          value_parser = check::readable_file, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, global = true, env = "SMS_TLS_KEY", value_name = "FILE",
          value_parser = check::readable_file, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// DANGEROUS: accept any server certificate on rediss://, so anyone on the path
    /// can read and change the queue. Only for self-signed test setups.
    #[arg(long, global = true, env = "SMS_TLS_INSECURE_SKIP_VERIFY")]
    pub tls_insecure_skip_verify: bool,

    /// Prefix of every Redis key, so several queues can share one Redis.
    #[arg(long, global = true, env = "SMS_PREFIX", value_parser = check::key_part,
          default_value = DEFAULT_PREFIX)]
    pub prefix: String,

    /// The channel to work on (send, list senders or dead letters, pause): its
    /// consumer group. [default: the queue's first channel; for a new queue `sms`]
    #[arg(long, global = true, env = "SMS_CHANNEL", value_parser = check::key_part,
          alias = "group", value_name = "NAME")]
    pub channel: Option<String>,

    /// TOML file with settings: top-level keys are the global options, tables
    /// named after the subcommands (produce, send, monitor) theirs (see config/).
    #[arg(long, global = true, env = "SMS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log line format; the level comes from RUST_LOG.
    #[arg(long, global = true, env = "SMS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Write logs to this file (rotated, see --log-rotation) instead of stderr.
    #[arg(long, global = true, env = "SMS_LOG_FILE", value_name = "PATH")]
    pub log_file: Option<PathBuf>,

    /// When --log-file starts a new file.
    #[arg(long, global = true, env = "SMS_LOG_ROTATION", value_enum,
          default_value_t = LogRotation::Daily)]
    pub log_rotation: LogRotation,

    /// How many rotated log files to keep; older ones are deleted.
    #[arg(long, global = true, env = "SMS_LOG_KEEP", value_parser = check::log_keep,
          allow_hyphen_values = true, default_value_t = DEFAULT_LOG_KEEP)]
    pub log_keep: usize,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a whole simulation in one process: producer, the scenario's senders and the
    /// monitor, until done, then a final report. Without --redis-url (or REDIS_URL) it
    /// starts a private redis-server for the run and removes it afterwards.
    Demo(DemoArgs),
    /// Create the queue (its identity, consumer group and counters) if Redis holds none
    /// under this prefix, load the Redis Functions library and later schema steps, and
    /// set the queue's retention. Safe to run again: an existing queue is kept.
    Migrate(MigrateArgs),
    /// Generate random messages and add them to the stream.
    Produce(ProduceArgs),
    /// Run one sender: read messages as a member of the consumer group and simulate sending them.
    Send(SendArgs),
    /// Print progress every interval: sent, failed, average time per message and more.
    Monitor(MonitorArgs),
    /// Reconcile the counters with the stream, the pending list and the dead stream,
    /// entry by entry; exit 0 when consistent, 1 when not. Run it on a quiet queue.
    Audit(AuditArgs),
    /// List the group's senders (pending messages, idle time, whether live); `prune`
    /// removes dead ones that hold nothing.
    Senders(SendersArgs),
    /// Apply the queue's retention now: remove settled entries and dead letters older
    /// than it (never one a consumer group still needs) and print what was removed.
    /// Senders do this in passing; this is for a queue without running senders.
    Trim(JsonArgs),
    /// Pause a channel (--channel; default the queue's first): its senders stop
    /// starting sends within a second, keeping what they hold (no attempt is spent
    /// waiting), until `resume`. Other channels go on.
    Pause(JsonArgs),
    /// Resume a channel paused by `pause`.
    Resume(JsonArgs),
    /// List producer runs: id, state (running, finished, stopped, died) and batches
    /// written of total. A stopped or died run is finished by `produce --resume RUN`.
    Runs(JsonArgs),
    /// Inspect and handle dead letters: list them, move them back into the stream,
    /// or purge old ones.
    Dead(DeadArgs),
    /// Diagnose lost or damaged queue state (gone identity, destroyed consumer
    /// group, counters that are not numbers) and print the repair; with --yes, do it.
    /// Nothing is ever repaired without --yes.
    Repair(RepairArgs),
    /// Print the one `ACL SETUSER` line that gives a Redis user exactly the commands
    /// and keys sms-alerts needs for --prefix; append `>password` before running it.
    Acl(AclArgs),
    /// Print a shell completion script, e.g. `sms-alerts completions bash >
    /// /etc/bash_completion.d/sms-alerts`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Serve the HTTP API: POST /api/v1/produce adds messages (one, or a batch,
    /// once per Idempotency-Key), GET /api/v1/stats is the monitor's JSON report;
    /// /healthz, /readyz and /metrics for operations.
    Serve(ServeArgs),
    /// Measure throughput, efficiency, memory and latency against Redis's own XADD
    /// ceiling (redis-benchmark, same run). Without --redis-url it starts a private
    /// redis-server; on a given Redis it uses fresh key prefixes and deletes them.
    Bench(BenchArgs),
}

/// Options of subcommands whose only option is JSON output.
#[derive(Debug, Args)]
pub struct JsonArgs {
    /// Print JSON instead of text.
    #[arg(long, env = "SMS_JSON")]
    pub json: bool,
}

/// Options of `acl`.
#[derive(Debug, Args)]
pub struct AclArgs {
    /// The Redis user the rule is for.
    #[arg(long, value_parser = check::key_part)]
    pub user: String,
}

/// Options of `bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Messages of the produce and drain runs; the ceiling runs as many XADDs, in 20
    /// rounds between produce's.
    #[arg(long, value_parser = check::count, allow_hyphen_values = true,
          default_value_t = DEFAULT_BENCH_MESSAGES)]
    pub messages: u64,
    /// Messages of the simulation-efficiency run.
    #[arg(long, value_parser = check::count, allow_hyphen_values = true,
          default_value_t = DEFAULT_BENCH_SIMULATION)]
    pub simulation: u64,
    /// Entries pending while a claim call's Redis time is measured; 0 skips it.
    #[arg(long, value_parser = check::count_or_zero, allow_hyphen_values = true,
          default_value_t = DEFAULT_BENCH_RECLAIM_PENDING)]
    pub reclaim_pending: u64,
    /// Messages of the continuous runs in waves (retention 0s, then forever) whose
    /// Redis memory is sampled; 0 skips them.
    #[arg(long, value_parser = check::count_or_zero, allow_hyphen_values = true,
          default_value_t = DEFAULT_BENCH_RETENTION)]
    pub retention_messages: u64,
    /// Durability of the private redis-server: aof (append-only file, fsync every
    /// second, Redis's usual setting) or none (no persistence, as Redis is often
    /// benchmarked). Not with --redis-url: a given Redis keeps its own. [default: aof]
    #[arg(long, value_enum)]
    pub persistence: Option<Persistence>,
    /// Compare partitions instead of the usual figures: produce and drain
    /// --messages on 1 partition and on N partitions of one Redis, and on N
    /// partitions of a private cluster of --cluster primaries, with each
    /// primary's share of the cluster's Redis CPU.
    #[arg(long, value_parser = check::partitions, value_name = "N")]
    pub partitions: Option<u32>,
    /// Primaries of the private cluster the partitions are compared on.
    #[arg(long, value_parser = check::cluster_primaries, value_name = "PRIMARIES",
          default_value_t = 3, requires = "partitions")]
    pub cluster: u32,
}

/// Options of `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Scenario file (see config/scenarios/). [default: the built-in copy of
    /// config/scenarios/default.toml]
    #[arg(long, env = "SMS_SCENARIO", value_name = "FILE")]
    pub scenario: Option<PathBuf>,
    /// Time between two progress reports. [default: the scenario's, else 1s]
    #[arg(long, env = "SMS_INTERVAL", value_parser = check::interval, allow_hyphen_values = true)]
    pub interval: Option<Duration>,
    /// Print progress as JSON lines instead of text.
    #[arg(long, env = "SMS_JSON")]
    pub json: bool,
    /// Run on a private Redis Cluster of this many primaries (at least 3)
    /// instead of one private Redis; not with --redis-url. [default: the
    /// scenario's `cluster`, else none]
    #[arg(long, env = "SMS_CLUSTER", value_parser = check::cluster_primaries, value_name = "PRIMARIES")]
    pub cluster: Option<u32>,
}

/// Options of `migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// How long settled messages are kept before retention removes them, e.g. 1h, 0s
    /// (as soon as every consumer group is done with them) or `forever`. Stored in
    /// Redis with the queue. [default: the queue's, 1h for a new queue]
    #[arg(long, env = "SMS_RETENTION", value_parser = check::retention, value_name = "AGE")]
    pub retention: Option<crate::store::Retention>,
    /// How long dead letters are kept, e.g. 7d or `forever`.
    /// [default: the queue's, 7d for a new queue]
    #[arg(long, env = "SMS_DEAD_RETENTION", value_parser = check::retention, value_name = "AGE")]
    pub dead_retention: Option<crate::store::Retention>,
    /// How many partitions the queue has: each is a stream of its own, on a
    /// Redis Cluster slot of its own, so N partitions spread over the primaries.
    /// It may grow later (senders follow), never shrink. Choose a few times the
    /// number of primaries. [default: the queue's, 1 for a new queue]
    #[arg(long, env = "SMS_PARTITIONS", value_parser = check::partitions, value_name = "N")]
    pub partitions: Option<u32>,
    /// Channels the queue has, each a consumer group fed by every message:
    /// NAME or NAME:KIND, KIND `sms` (to the phone number) or `email` (to the
    /// e-mail address); a bare `email` is of the e-mail kind, any other bare
    /// name of the SMS kind. Channels the queue lacks are added (never taken
    /// away). [default: the queue's, `sms` for a new queue]
    #[arg(long, env = "SMS_CHANNELS", value_delimiter = ',', value_parser = check::channel,
          value_name = "NAME[:KIND],...")]
    pub channels: Vec<crate::channel::Channel>,
    /// A channel added now begins with the oldest message the queue still holds,
    /// instead of after the newest (the messages already there are not its own).
    #[arg(long, requires = "channels")]
    pub from_start: bool,
}

/// Options of `dead`.
#[derive(Debug, Args)]
pub struct DeadArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: DeadAction,
}

/// Actions of `dead`.
#[derive(Debug, Subcommand)]
pub enum DeadAction {
    /// List dead letters, newest first: id, reason, attempts, message id, recipient.
    List {
        /// Only dead letters with this reason (max_attempts, malformed, deleted, expired).
        #[arg(long, value_parser = check::dead_reason)]
        reason: Option<String>,
        /// Most dead letters to list.
        #[arg(long, value_parser = check::count, allow_hyphen_values = true,
              default_value_t = DEFAULT_DEAD_LIMIT)]
        limit: u64,
        /// Print JSON lines instead of a table.
        #[arg(long, env = "SMS_JSON")]
        json: bool,
    },
    /// Move dead letters back into the stream to be sent again, each atomically
    /// (counted as `requeued`). Dead letters that hold no valid message are left.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["reason", "id"])))]
    Requeue {
        /// Requeue every dead letter with this reason (max_attempts, malformed,
        /// deleted, expired).
        #[arg(long, value_parser = check::dead_reason)]
        reason: Option<String>,
        /// Requeue these dead letters: ID, as `dead list` shows it, or P/ID for
        /// the dead letter ID of partition P (e.g. 2/1733200000000-0). A plain
        /// ID is looked up in every partition; found in several, it must be
        /// named with its partition.
        #[arg(long, num_args = 1.., value_parser = check::dead_letter_id, value_name = "[P/]ID")]
        id: Vec<String>,
    },
    /// Delete dead letters older than AGE (counted as `dead_purged`).
    Purge {
        /// Age of the youngest dead letter to delete, e.g. 30d.
        #[arg(long, value_parser = check::duration, allow_hyphen_values = true, value_name = "AGE")]
        older_than: Duration,
    },
}

/// Options of `repair`.
#[derive(Debug, Args)]
pub struct RepairArgs {
    /// Do the repair printed; without it nothing is changed.
    #[arg(long)]
    pub yes: bool,
    /// Where a re-created consumer group starts: `end` (after the newest entry: nothing
    /// is sent again; messages the lost group had not settled are counted as abandoned)
    /// or an entry id (entries after it are delivered again).
    #[arg(long, value_parser = check::group_start, value_name = "ID|end", default_value = "end")]
    pub group_start: String,
}

/// Options of `audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Print the report as one JSON object.
    #[arg(long, env = "SMS_JSON")]
    pub json: bool,
    /// Entries read per round trip.
    #[arg(long, env = "SMS_PAGE", value_parser = check::batch, allow_hyphen_values = true,
          default_value_t = settings::DEFAULT_AUDIT_PAGE)]
    pub page: usize,
}

/// Options of `senders`.
#[derive(Debug, Args)]
pub struct SendersArgs {
    /// Print JSON instead of a table.
    #[arg(long, env = "SMS_JSON")]
    pub json: bool,
    /// What to do; lists the senders when omitted.
    #[command(subcommand)]
    pub action: Option<SendersAction>,
}

/// Actions of `senders`.
#[derive(Debug, Subcommand)]
pub enum SendersAction {
    /// Remove senders that no live process holds, that hold no messages and that
    /// were idle at least --idle. Senders still holding messages are kept until
    /// live senders have reclaimed them, so pruning never loses a message.
    Prune {
        /// Least idle time of a sender to remove, e.g. 10m.
        #[arg(long, env = "SMS_IDLE", value_parser = span(check::duration),
              allow_hyphen_values = true, default_value_t = DEFAULT_PRUNE_IDLE.into())]
        idle: Span,
    },
}

/// Options of `produce`.
#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// How many messages to generate.
    #[arg(long, env = "SMS_COUNT", value_parser = check::count, allow_hyphen_values = true,
          default_value_t = DEFAULT_COUNT)]
    pub count: u64,
    /// Seed of the random generator: the same seed produces the same messages.
    /// [default: random]
    #[arg(long, env = "SMS_SEED")]
    pub seed: Option<u64>,
    /// Messages per pipelined write.
    #[arg(long, env = "SMS_BATCH", value_parser = check::batch, allow_hyphen_values = true,
          default_value_t = DEFAULT_BATCH)]
    pub batch: usize,
    /// Id of this run, printed at start and end and listed by `runs`. [default: random]
    #[arg(long, env = "SMS_RUN_ID", value_parser = check::key_part, conflicts_with = "resume")]
    pub run_id: Option<String>,
    /// Finish the run RUN whose producer died or was stopped: its count, seed and
    /// batch size come from its record, and only the batches not yet written are
    /// written, so the run ends with exactly its count.
    /// The run's routing comes from its record too.
    #[arg(long, value_parser = check::key_part, value_name = "RUN",
          conflicts_with_all = ["count", "seed", "batch", "key", "no_key", "partition"])]
    pub resume: Option<String>,
    /// Route every message of the run by KEY instead of by its recipient: all of
    /// them go to the one partition KEY hashes to, in the order written.
    /// [default: each message's recipient, so one phone's alerts stay in order]
    #[arg(long, env = "SMS_KEY", value_name = "KEY", value_parser = check::route_key,
          conflicts_with_all = ["no_key", "partition"])]
    pub key: Option<String>,
    /// Route without a key: round robin over the partitions, evenly, keeping no
    /// order between one recipient's messages.
    #[arg(long, env = "SMS_NO_KEY", conflicts_with = "partition")]
    pub no_key: bool,
    /// Write every message of the run to partition P (from 0; it must be below the
    /// queue's partition count).
    #[arg(long, env = "SMS_PARTITION", value_parser = check::partition, value_name = "P")]
    pub partition: Option<u32>,
    /// How long a producer may be silent before its run counts as died (a live
    /// producer renews it).
    #[arg(long, env = "SMS_LEASE", value_parser = span(check::lease), allow_hyphen_values = true,
          default_value_t = DEFAULT_LEASE.into())]
    pub lease: Span,
}

/// Options of `send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// This sender's name in the consumer group. A sender restarted under the same
    /// name resumes its pending messages; two live processes cannot share one.
    /// [default: sender-<hostname>-<pid>]
    #[arg(long, env = "SMS_NAME", value_parser = check::key_part)]
    pub name: Option<String>,
    /// Mean simulated send time, e.g. 200ms, 2s; 0ms sends without delay.
    #[arg(long, env = "SMS_MEAN", value_parser = span(check::duration), allow_hyphen_values = true,
          default_value_t = DEFAULT_MEAN.into())]
    pub mean: Span,
    /// Standard deviation of the send time (normal and uniform distributions).
    /// [default: a quarter of the mean]
    #[arg(long, env = "SMS_STDDEV", value_parser = check::duration, allow_hyphen_values = true)]
    pub stddev: Option<Duration>,
    /// Shape of the send-time distribution around the mean.
    #[arg(long, env = "SMS_DISTRIBUTION", value_enum, default_value_t = Distribution::Normal)]
    pub distribution: Distribution,
    /// Probability in [0, 1] that one send attempt fails.
    #[arg(long, env = "SMS_FAILURE_RATE", value_parser = check::failure_rate,
          allow_hyphen_values = true, default_value_t = 0.0)]
    pub failure_rate: f64,
    /// Take the simulated gateway down for --outage-for at the start of every such
    /// period (on the wall clock, so every sender sees the same outages), e.g. 60s.
    /// Every attempt fails while it is down. [default: never]
    #[arg(long, env = "SMS_OUTAGE_EVERY", value_parser = check::positive_duration,
          requires = "outage_for")]
    pub outage_every: Option<Duration>,
    /// How long each outage of --outage-every (or the one of --outage-after) lasts,
    /// e.g. 10s.
    #[arg(long, env = "SMS_OUTAGE_FOR", value_parser = check::positive_duration)]
    pub outage_for: Option<Duration>,
    /// Take the simulated gateway down once, this long after the sender starts, for
    /// --outage-for (a scenario's timeline), e.g. 20s.
    #[arg(long, env = "SMS_OUTAGE_AFTER", value_parser = check::duration,
          requires = "outage_for", conflicts_with = "outage_every")]
    pub outage_after: Option<Duration>,
    /// The gateway this sender sends through: senders of one gateway, in any
    /// process, share its --gateway-rate.
    #[arg(long, env = "SMS_GATEWAY", value_parser = check::key_part,
          default_value = DEFAULT_GATEWAY)]
    pub gateway: String,
    /// Most sends per second through the gateway, over every sender sharing it
    /// (a token bucket in Redis), e.g. 100/s. Messages over the cap wait without
    /// spending an attempt. [default: no cap]
    #[arg(long, env = "SMS_GATEWAY_RATE", value_parser = check::rate_per_second,
          value_name = "N/s")]
    pub gateway_rate: Option<u32>,
    /// Open the gateway's circuit breaker after this many failed sends in a row:
    /// nothing is sent through it (messages wait, spending no attempt) until
    /// probes pass after --breaker-cooldown (doubling, up to 4 times it, while
    /// probes fail; a failed probe never uses up a message's last attempt).
    /// [default: no breaker]
    #[arg(long, env = "SMS_BREAKER_FAILURES", value_parser = check::breaker_failures,
          value_name = "N")]
    pub breaker_failures: Option<u32>,
    /// How long an open breaker waits before it probes the gateway.
    #[arg(long, env = "SMS_BREAKER_COOLDOWN", value_parser = check::positive_duration,
          requires = "breaker_failures", default_value = "1s")]
    pub breaker_cooldown: Duration,
    /// Probability in [0, 1] that the simulated gateway answers "throttled": the
    /// message is retried after --retry-backoff without spending an attempt.
    #[arg(long, env = "SMS_THROTTLE_RATE", value_parser = check::failure_rate,
          allow_hyphen_values = true, default_value_t = 0.0)]
    pub throttle_rate: f64,
    /// Dead-letter a message as `expired` instead of sending it when it is older
    /// than this (alerts that would arrive too late), e.g. 10m. [default: never]
    #[arg(long, env = "SMS_EXPIRE_AFTER", value_parser = check::positive_duration,
          value_name = "AGE")]
    pub expire_after: Option<Duration>,
    /// Most simulated sends in progress at once.
    #[arg(long, env = "SMS_CONCURRENCY", value_parser = check::concurrency,
          allow_hyphen_values = true, default_value_t = DEFAULT_CONCURRENCY)]
    pub concurrency: usize,
    /// Deliveries after which a message that still fails goes to the dead stream.
    #[arg(long, env = "SMS_MAX_ATTEMPTS", value_parser = check::max_attempts,
          allow_hyphen_values = true, default_value_t = DEFAULT_MAX_ATTEMPTS)]
    pub max_attempts: u32,
    /// How long a message may sit pending without progress before another sender
    /// may take it over; a live sender renews the lease of its own work.
    #[arg(long, env = "SMS_LEASE", value_parser = span(check::lease), allow_hyphen_values = true,
          default_value_t = DEFAULT_LEASE.into())]
    pub lease: Span,
    /// Wait before a failed message may be retried; at most the lease.
    #[arg(long, env = "SMS_RETRY_BACKOFF", value_parser = span(check::duration),
          allow_hyphen_values = true, default_value_t = DEFAULT_RETRY_BACKOFF.into())]
    pub retry_backoff: Span,
    /// On Ctrl-C/SIGTERM, how long in-flight sends may take to finish.
    #[arg(long, env = "SMS_SHUTDOWN_TIMEOUT", value_parser = span(check::duration),
          allow_hyphen_values = true, default_value_t = DEFAULT_SHUTDOWN_TIMEOUT.into())]
    pub shutdown_timeout: Span,
    /// Seed for send times and failures: the same seed and input give the same run.
    /// [default: random]
    #[arg(long, env = "SMS_SEED")]
    pub seed: Option<u64>,
    /// Read only these partitions, e.g. 0,2,4 (each must exist when the sender
    /// starts). Within a partition the group shares the work among its senders.
    /// [default: every partition, and those added while it runs]
    #[arg(long, env = "SMS_READ_PARTITIONS", value_parser = check::partition,
          value_delimiter = ',', value_name = "P,...")]
    pub read_partitions: Option<Vec<u32>>,
}

/// Options of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The only other queues (prefixes) a request may name in `topic_name`;
    /// any other gets 404, as a queue that does not exist. [default: any queue
    /// on this Redis]
    #[arg(long, env = "SMS_TOPICS", value_delimiter = ',', value_parser = check::key_part,
          value_name = "PREFIX,...")]
    pub topics: Option<Vec<String>>,
    /// Channels the queue must have (as `migrate --channels`): those it lacks are
    /// added at boot, after the newest message. [default: the queue's]
    #[arg(long, env = "SMS_CHANNELS", value_delimiter = ',', value_parser = check::channel,
          value_name = "NAME[:KIND],...")]
    pub channels: Vec<crate::channel::Channel>,
    /// Address to listen on, e.g. 0.0.0.0:8080.
    #[arg(long, env = "SMS_LISTEN", value_name = "ADDR", value_parser = check::socket_addr,
          default_value = DEFAULT_LISTEN)]
    pub listen: std::net::SocketAddr,
    /// Most messages one request may carry; a larger batch gets 413.
    #[arg(long, env = "SMS_MAX_BATCH", value_parser = check::batch,
          default_value_t = DEFAULT_MAX_BATCH)]
    pub max_batch: usize,
    /// Largest request body in bytes; a larger one gets 413.
    #[arg(long, env = "SMS_MAX_BODY", value_parser = check::body_size,
          default_value_t = DEFAULT_MAX_BODY)]
    pub max_body: usize,
    /// How long the answer to a request with an Idempotency-Key (or a message's
    /// request_id) is kept, up to 30 days: a repeat within it lands nothing and gets
    /// the same ids.
    #[arg(long, env = "SMS_IDEMPOTENCY_TTL", value_parser = span(check::idempotency_ttl),
          allow_hyphen_values = true, default_value_t = DEFAULT_IDEMPOTENCY_TTL.into())]
    pub idempotency_ttl: Span,
    /// Refuse writes with 429 and Retry-After while a queue holds more unsettled
    /// messages than this (its backlog). [default: no limit]
    #[arg(long, env = "SMS_MAX_LAG", value_parser = check::count)]
    pub max_lag: Option<u64>,
    /// File holding the API token (trailing newline ignored): every /api/ request
    /// must then carry `Authorization: Bearer <token>`. SMS_API_TOKEN gives the
    /// token itself. [default: no token needed]
    #[arg(long, env = "SMS_API_TOKEN_FILE", value_parser = check::readable_file)]
    pub api_token_file: Option<PathBuf>,
    /// How long a write may wait for Redis before the request gets 503.
    #[arg(long, env = "SMS_REQUEST_TIMEOUT", value_parser = span(check::positive_duration),
          allow_hyphen_values = true, default_value_t = DEFAULT_REQUEST_TIMEOUT.into())]
    pub request_timeout: Span,
    /// How long a client has to send a request's head, and then its body; a
    /// slower one is cut off (its connection closed, or 408 for a body), so
    /// that clients trickling bytes cannot hold connections open. Also how
    /// long a kept-alive connection waits for its next request (answers say a
    /// second less, in `Keep-Alive: timeout=<s>`).
    #[arg(long, env = "SMS_CLIENT_TIMEOUT", value_parser = span(check::positive_duration),
          allow_hyphen_values = true, default_value_t = DEFAULT_CLIENT_TIMEOUT.into())]
    pub client_timeout: Span,
}

/// Options of `monitor`.
#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// Time between two reports, e.g. 1s, 500ms.
    #[arg(long, env = "SMS_INTERVAL", value_parser = span(check::interval),
          allow_hyphen_values = true, default_value_t = DEFAULT_INTERVAL.into())]
    pub interval: Span,
    /// Exit 0 once the producer has finished and every message is sent or dead.
    #[arg(long, env = "SMS_UNTIL_DONE")]
    pub until_done: bool,
    /// Print one JSON object per line instead of text.
    #[arg(long, env = "SMS_JSON")]
    pub json: bool,
    /// After the totals, print a row per partition: produced, sent, failed,
    /// dead, pending, queued, oldest ages (JSON always has them, in
    /// `partitions`).
    #[arg(long, env = "SMS_BY_PARTITION")]
    pub by_partition: bool,
    /// Print an alert when the failure rate over the last interval exceeds this
    /// fraction, e.g. 0.2. [default: off]
    #[arg(long, env = "SMS_ALERT_FAILURE_RATE", value_parser = check::failure_rate, allow_hyphen_values = true)]
    pub alert_failure_rate: Option<f64>,
    /// Print an alert when no message was settled for this long while messages
    /// wait, e.g. 30s. [default: off]
    #[arg(long, env = "SMS_ALERT_STALLED", value_parser = check::duration, allow_hyphen_values = true)]
    pub alert_stalled: Option<Duration>,
    /// Print an alert when a consumer group holds trimming back: the oldest entry it
    /// still needs is older than the retention by more than this, e.g. 5m.
    #[arg(long, env = "SMS_ALERT_HELD_BACK", value_parser = span(check::duration),
          allow_hyphen_values = true, default_value_t = DEFAULT_ALERT_HELD_BACK.into())]
    pub alert_held_back: Span,
    /// Serve Prometheus metrics on http://ADDR/metrics, e.g. 127.0.0.1:9464. [default: off]
    #[arg(long, env = "SMS_METRICS_ADDR", value_name = "ADDR", value_parser = check::socket_addr)]
    pub metrics_addr: Option<std::net::SocketAddr>,
}
