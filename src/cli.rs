//! What the user typed: the command line, with `SMS_*` environment overrides.
//!
//! Every option is optional here so that an option not given on the command
//! line or in the environment can still come from the config file; defaults
//! are applied in [`crate::settings`]. Values are parsed and range-checked by
//! the same functions that check the config file, so a bad flag is a clap usage
//! error (exit code 2) naming the option and the value.

// The doc comments below are clap's --help text, where `<OPTION>` and
// `<hostname>` are meant literally, not as HTML.
#![allow(rustdoc::invalid_html_tags)]

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

use crate::settings::check;

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
pub struct GlobalArgs {
    /// Redis to use; a password in it is never printed. Also read from REDIS_URL.
    /// [default: redis://127.0.0.1:6379]
    #[arg(
        long,
        global = true,
        env = "SMS_REDIS_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub redis_url: Option<String>,

    /// Prefix of every Redis key, so several queues can share one Redis. [default: sms]
    #[arg(long, global = true, env = "SMS_PREFIX", value_parser = check::key_part)]
    pub prefix: Option<String>,

    /// Consumer group the senders form on the stream. [default: senders]
    #[arg(long, global = true, env = "SMS_GROUP", value_parser = check::key_part)]
    pub group: Option<String>,

    /// TOML file with settings (see config/ for documented examples).
    #[arg(long, global = true, env = "SMS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log line format; the level comes from RUST_LOG. [default: text]
    #[arg(long, global = true, env = "SMS_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// Write logs to this file (rotated, see --log-rotation) instead of stderr.
    #[arg(long, global = true, env = "SMS_LOG_FILE", value_name = "PATH")]
    pub log_file: Option<PathBuf>,

    /// When --log-file starts a new file. [default: daily]
    #[arg(long, global = true, env = "SMS_LOG_ROTATION", value_enum)]
    pub log_rotation: Option<LogRotation>,

    /// How many rotated log files to keep; older ones are deleted. [default: 7]
    #[arg(long, global = true, env = "SMS_LOG_KEEP", value_parser = check::concurrency, allow_hyphen_values = true)]
    pub log_keep: Option<usize>,
}

/// When a log file is rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogRotation {
    /// A new file every minute (for testing rotation).
    Minutely,
    /// A new file every hour.
    Hourly,
    /// A new file every day.
    Daily,
    /// One file, never rotated.
    Never,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
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
    Trim {
        /// Print JSON instead of text.
        #[arg(long, env = "SMS_JSON")]
        json: bool,
    },
    /// List producer runs: id, state (running, finished, stopped, died) and batches
    /// written of total. A stopped or died run is finished by `produce --resume RUN`.
    Runs {
        /// Print JSON instead of a table.
        #[arg(long, env = "SMS_JSON")]
        json: bool,
    },
    /// Inspect and handle dead letters: list them, move them back into the stream,
    /// or purge old ones.
    Dead(DeadArgs),
    /// Diagnose lost or damaged queue state (gone identity, destroyed consumer
    /// group, counters that are not numbers) and print the repair; with --yes, do it.
    /// Nothing is ever repaired without --yes.
    Repair(RepairArgs),
    /// Print a shell completion script, e.g. `sms-alerts completions bash >
    /// /etc/bash_completion.d/sms-alerts`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Measure throughput, efficiency, memory and latency against Redis's own XADD
    /// ceiling (redis-benchmark, same run). Without --redis-url it starts a private
    /// redis-server; on a given Redis it uses fresh key prefixes and deletes them.
    Bench {
        /// Messages of the produce and drain runs; the ceiling runs as many XADDs, in 20
        /// rounds between produce's. [default: 1000000]
        #[arg(long, value_parser = check::count, allow_hyphen_values = true)]
        messages: Option<u64>,
        /// Messages of the simulation-efficiency run. [default: 200000]
        #[arg(long, value_parser = check::count, allow_hyphen_values = true)]
        simulation: Option<u64>,
        /// Entries pending while a claim call's Redis time is measured; 0 skips it.
        /// [default: 2000000]
        #[arg(long, value_parser = check::count_or_zero, allow_hyphen_values = true)]
        reclaim_pending: Option<u64>,
        /// Messages of the continuous runs in waves (retention 0s, then forever) whose
        /// Redis memory is sampled; 0 skips them. [default: 5000000]
        #[arg(long, value_parser = check::count_or_zero, allow_hyphen_values = true)]
        retention_messages: Option<u64>,
        /// Durability of the private redis-server: aof (append-only file, fsync every
        /// second, Redis's usual setting) or none (no persistence, as Redis is often
        /// benchmarked). Not with --redis-url: a given Redis keeps its own.
        /// [default: aof]
        #[arg(long, value_enum)]
        persistence: Option<crate::embedded::Persistence>,
    },
    /// Run a whole simulation in one process: producer, the scenario's senders and the
    /// monitor, until done, then a final report. Without --redis-url (or REDIS_URL) it
    /// starts a private redis-server for the run and removes it afterwards.
    Demo(DemoArgs),
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
        /// Only dead letters with this reason (max_attempts, malformed, deleted).
        #[arg(long, value_parser = check::key_part)]
        reason: Option<String>,
        /// Most dead letters to list. [default: 100]
        #[arg(long, value_parser = check::count, allow_hyphen_values = true)]
        limit: Option<u64>,
        /// Print JSON lines instead of a table.
        #[arg(long, env = "SMS_JSON")]
        json: bool,
    },
    /// Move dead letters back into the stream to be sent again, each atomically
    /// (counted as `requeued`). Dead letters that hold no valid message are left.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["reason", "id"])))]
    Requeue {
        /// Requeue every dead letter with this reason.
        #[arg(long, value_parser = check::key_part)]
        reason: Option<String>,
        /// Requeue these dead letters (ids of the dead stream).
        #[arg(long, num_args = 1.., value_parser = check::stream_id)]
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
    /// or an entry id (entries after it are delivered again). [default: end]
    #[arg(long, value_parser = check::group_start, value_name = "ID|end")]
    pub group_start: Option<String>,
}

/// Options of `audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Print the report as one JSON object.
    #[arg(long, env = "SMS_JSON")]
    pub json: bool,
    /// Entries read per round trip. [default: 10000]
    #[arg(long, env = "SMS_PAGE", value_parser = check::batch, allow_hyphen_values = true)]
    pub page: Option<usize>,
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
        /// Least idle time of a sender to remove, e.g. 10m. [default: 10m]
        #[arg(long, env = "SMS_IDLE", value_parser = check::duration, allow_hyphen_values = true)]
        idle: Option<Duration>,
    },
}

/// Options of `produce`.
#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// How many messages to generate. [default: 1000]
    #[arg(long, env = "SMS_COUNT", value_parser = check::count, allow_hyphen_values = true)]
    pub count: Option<u64>,
    /// Seed of the random generator: the same seed produces the same messages.
    /// [default: random]
    #[arg(long, env = "SMS_SEED")]
    pub seed: Option<u64>,
    /// Messages per pipelined write. [default: 1000]
    #[arg(long, env = "SMS_BATCH", value_parser = check::batch, allow_hyphen_values = true)]
    pub batch: Option<usize>,
    /// Id of this run, printed at start and end and listed by `runs`. [default: random]
    #[arg(long, env = "SMS_RUN_ID", value_parser = check::key_part, conflicts_with = "resume")]
    pub run_id: Option<String>,
    /// Finish the run RUN whose producer died or was stopped: its count, seed and
    /// batch size come from its record, and only the batches not yet written are
    /// written, so the run ends with exactly its count.
    #[arg(long, value_parser = check::key_part, value_name = "RUN",
          conflicts_with_all = ["count", "seed", "batch"])]
    pub resume: Option<String>,
    /// How long a producer may be silent before its run counts as died (a live
    /// producer renews it). [default: 10s]
    #[arg(long, env = "SMS_LEASE", value_parser = check::lease, allow_hyphen_values = true)]
    pub lease: Option<Duration>,
}

/// Options of `send`.
#[derive(Debug, Default, Args)]
pub struct SendArgs {
    /// This sender's name in the consumer group. A sender restarted under the same
    /// name resumes its pending messages; two live processes cannot share one.
    /// [default: sender-<hostname>-<pid>]
    #[arg(long, env = "SMS_NAME", value_parser = check::key_part)]
    pub name: Option<String>,
    /// Mean simulated send time, e.g. 200ms, 2s; 0ms sends without delay. [default: 200ms]
    #[arg(long, env = "SMS_MEAN", value_parser = check::duration, allow_hyphen_values = true)]
    pub mean: Option<Duration>,
    /// Standard deviation of the send time (normal and uniform distributions).
    /// [default: a quarter of the mean]
    #[arg(long, env = "SMS_STDDEV", value_parser = check::duration, allow_hyphen_values = true)]
    pub stddev: Option<Duration>,
    /// Shape of the send-time distribution around the mean. [default: normal]
    #[arg(long, env = "SMS_DISTRIBUTION", value_enum)]
    pub distribution: Option<Distribution>,
    /// Probability in [0, 1] that one send attempt fails. [default: 0]
    #[arg(long, env = "SMS_FAILURE_RATE", value_parser = check::failure_rate, allow_hyphen_values = true)]
    pub failure_rate: Option<f64>,
    /// Most simulated sends in progress at once. [default: 64]
    #[arg(long, env = "SMS_CONCURRENCY", value_parser = check::concurrency, allow_hyphen_values = true)]
    pub concurrency: Option<usize>,
    /// Deliveries after which a message that still fails goes to the dead stream. [default: 3]
    #[arg(long, env = "SMS_MAX_ATTEMPTS", value_parser = check::max_attempts, allow_hyphen_values = true)]
    pub max_attempts: Option<u32>,
    /// How long a message may sit pending without progress before another sender
    /// may take it over; a live sender renews the lease of its own work. [default: 10s]
    #[arg(long, env = "SMS_LEASE", value_parser = check::lease, allow_hyphen_values = true)]
    pub lease: Option<Duration>,
    /// Wait before a failed message may be retried; at most the lease. [default: 1s]
    #[arg(long, env = "SMS_RETRY_BACKOFF", value_parser = check::duration, allow_hyphen_values = true)]
    pub retry_backoff: Option<Duration>,
    /// On Ctrl-C/SIGTERM, how long in-flight sends may take to finish. [default: 10s]
    #[arg(long, env = "SMS_SHUTDOWN_TIMEOUT", value_parser = check::duration, allow_hyphen_values = true)]
    pub shutdown_timeout: Option<Duration>,
    /// Seed for send times and failures: the same seed and input give the same run.
    /// [default: random]
    #[arg(long, env = "SMS_SEED")]
    pub seed: Option<u64>,
}

/// Options of `monitor`.
#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// Time between two reports, e.g. 1s, 500ms. [default: 5s]
    #[arg(long, env = "SMS_INTERVAL", value_parser = check::interval, allow_hyphen_values = true)]
    pub interval: Option<Duration>,
    /// Exit 0 once the producer has finished and every message is sent or dead.
    #[arg(long, env = "SMS_UNTIL_DONE")]
    pub until_done: bool,
    /// Print one JSON object per line instead of text.
    #[arg(long, env = "SMS_JSON")]
    pub json: bool,
    /// Print an alert when the failure rate over the last interval exceeds this
    /// fraction, e.g. 0.2. [default: off]
    #[arg(long, env = "SMS_ALERT_FAILURE_RATE", value_parser = check::failure_rate, allow_hyphen_values = true)]
    pub alert_failure_rate: Option<f64>,
    /// Print an alert when no message was settled for this long while messages
    /// wait, e.g. 30s. [default: off]
    #[arg(long, env = "SMS_ALERT_STALLED", value_parser = check::duration, allow_hyphen_values = true)]
    pub alert_stalled: Option<Duration>,
    /// Print an alert when a consumer group holds trimming back: the oldest entry it
    /// still needs is older than the retention by more than this, e.g. 5m. [default: 5m]
    #[arg(long, env = "SMS_ALERT_HELD_BACK", value_parser = check::duration, allow_hyphen_values = true)]
    pub alert_held_back: Option<Duration>,
    /// Serve Prometheus metrics on http://ADDR/metrics, e.g. 127.0.0.1:9464. [default: off]
    #[arg(long, env = "SMS_METRICS_ADDR", value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// Folds clap's multi-line usage error into the one line operators and scripts
/// expect, keeping what helps (possible values, tips) and dropping the generic
/// usage and "--help" hints.
pub fn one_line_error(rendered: &str) -> String {
    rendered
        .lines()
        .map(str::trim)
        .filter(|line| {
            !line.is_empty()
                && !line.starts_with("Usage:")
                && !line.starts_with("For more information")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Shape of the simulated send-time distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    /// Normal around the mean with the given standard deviation, truncated at 0.
    Normal,
    /// Exponential with the given mean (memoryless, long tail).
    Exponential,
    /// Uniform over mean ± stddev·√3 (so its standard deviation is stddev), truncated at 0.
    Uniform,
    /// Always exactly the mean.
    Constant,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_errors_fold_into_one_line() {
        let err = Cli::try_parse_from(["sms-alerts", "send", "--distribution", "pareto"])
            .expect_err("invalid");
        let line = one_line_error(&err.render().to_string());
        assert_eq!(
            line,
            "error: invalid value 'pareto' for '--distribution <DISTRIBUTION>' \
             [possible values: normal, exponential, uniform, constant]"
        );
    }
}
