//! What the program uses: validated settings, one struct per subcommand, with
//! the defaults as named constants.
//!
//! [`resolve`] merges the command line and environment (already merged by clap)
//! with the config file and the defaults, in that order of precedence, and
//! checks every value once. Nothing downstream sees a raw argument.

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

use crate::cli::{
    Cli, Command, DeadAction, Distribution, GlobalArgs, LogFormat, LogRotation, MonitorArgs,
    ProduceArgs, SendArgs, SendersAction,
};
use crate::config_file::{ConfigFile, MonitorFile, SendFile};
use crate::store::QueueOptions;
pub use crate::store::{QueueSettings, TlsSettings};

/// Default Redis URL.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "sms";
/// Default consumer group.
pub const DEFAULT_GROUP: &str = "senders";
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
/// Default number of dead letters `dead list` shows.
pub const DEFAULT_DEAD_LIMIT: u64 = 100;

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
    /// Alerts to raise.
    pub alerts: crate::monitor::alerts::AlertRules,
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
    /// What to produce.
    pub produce: ProduceSettings,
    /// The senders to run, each with its own name.
    pub senders: Vec<SendSettings>,
    /// How to report (always until done).
    pub monitor: MonitorSettings,
}

/// The scenario `demo` runs when none is given.
pub const DEFAULT_SCENARIO: &str = include_str!("../config/scenarios/default.toml");

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
    Bench(crate::bench::BenchSizes, crate::embedded::Persistence),
    /// `completions`: print a completion script; needs no Redis.
    Completions(clap_complete::Shell),
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
    /// `runs`.
    Runs {
        /// JSON instead of a table.
        json: bool,
    },
    /// `dead ...`.
    Dead(DeadTask),
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

/// Merges flags and environment (`cli`), the config file and the defaults, and
/// validates the result. `redis_url_env` is the plain `REDIS_URL` variable, which
/// ranks below `--redis-url` and `SMS_REDIS_URL`.
pub fn resolve(cli: &Cli, redis_url_env: Option<String>) -> Result<Settings, SettingsError> {
    let file = match &cli.global.config {
        Some(path) => Some((ConfigFile::load(path)?, path.clone())),
        None => None,
    };
    let (file, path) = match file {
        Some((file, path)) => (file, Some(path)),
        None => (ConfigFile::default(), None),
    };
    let from = FileOrigin(path);
    let redis_url_given =
        cli.global.redis_url.is_some() || redis_url_env.is_some() || file.redis_url.is_some();
    let queue = resolve_queue(&cli.global, redis_url_env, &file, &from)?;
    let g = &cli.global;
    let log = LogSettings {
        format: g.log_format.or(file.log_format).unwrap_or(LogFormat::Text),
        file: g.log_file.clone().or_else(|| file.log_file.clone()),
        rotation: g
            .log_rotation
            .or(file.log_rotation)
            .unwrap_or(LogRotation::Daily),
        keep: match g.log_keep {
            Some(keep) => keep,
            None => from
                .check("log_keep", file.log_keep, check::concurrency)?
                .unwrap_or(DEFAULT_LOG_KEEP),
        },
    };
    let task = match &cli.command {
        Command::Migrate(args) => Task::Migrate(QueueOptions {
            retention: args.retention,
            dead_retention: args.dead_retention,
        }),
        Command::Trim { json } => Task::Trim { json: *json },
        Command::Runs { json } => Task::Runs { json: *json },
        Command::Dead(args) => Task::Dead(match &args.action {
            DeadAction::List {
                reason,
                limit,
                json,
            } => DeadTask::List {
                reason: reason.clone(),
                limit: limit.unwrap_or(DEFAULT_DEAD_LIMIT),
                json: *json,
            },
            DeadAction::Requeue { reason, id } => DeadTask::Requeue {
                reason: reason.clone(),
                ids: id.clone(),
            },
            DeadAction::Purge { older_than } => DeadTask::Purge {
                older_than: *older_than,
            },
        }),
        Command::Repair(args) => Task::Repair {
            yes: args.yes,
            group_start: args.group_start.clone().unwrap_or_else(|| "end".to_owned()),
        },
        Command::Produce(args) => Task::Produce(resolve_produce(args, &file, &from)?),
        Command::Send(args) => Task::Send(resolve_send(
            args,
            &file.send,
            "send",
            &from,
            default_sender_name,
        )?),
        Command::Monitor(args) => Task::Monitor(resolve_monitor(
            args,
            &file.monitor,
            &from,
            DEFAULT_INTERVAL,
        )?),
        Command::Audit(args) => Task::Audit {
            json: args.json,
            page: args.page.unwrap_or(crate::audit::DEFAULT_PAGE),
        },
        Command::Demo(args) => Task::Demo(resolve_demo(args)?),
        Command::Completions { shell } => Task::Completions(*shell),
        Command::Bench {
            messages,
            simulation,
            reclaim_pending,
            retention_messages,
            persistence,
        } => {
            if persistence.is_some() && redis_url_given {
                return Err(SettingsError::Conflict(
                    "--persistence sets up the private redis-server of the bench; a Redis given \
                     with --redis-url (or REDIS_URL, or the config file) keeps its own settings"
                        .to_owned(),
                ));
            }
            let defaults = crate::bench::BenchSizes::default();
            Task::Bench(
                crate::bench::BenchSizes {
                    messages: messages.unwrap_or(defaults.messages),
                    simulation: simulation.unwrap_or(defaults.simulation),
                    reclaim_pending: reclaim_pending.unwrap_or(defaults.reclaim_pending),
                    retention: retention_messages.unwrap_or(defaults.retention),
                },
                persistence.unwrap_or_default(),
            )
        }
        Command::Senders(args) => match args.action {
            None => Task::ListSenders { json: args.json },
            Some(SendersAction::Prune { idle }) => Task::PruneSenders {
                json: args.json,
                idle: idle.unwrap_or(DEFAULT_PRUNE_IDLE),
            },
        },
    };
    Ok(Settings {
        queue,
        redis_url_given,
        log,
        task,
    })
}

/// Names the config file in error messages.
struct FileOrigin(Option<PathBuf>);

impl FileOrigin {
    /// Checks a value read from the file with the same check a flag gets.
    fn check<T, R>(
        &self,
        option: &str,
        value: Option<R>,
        check: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, SettingsError>
    where
        R: ToString,
    {
        let Some(raw) = value else { return Ok(None) };
        let raw = raw.to_string();
        check(&raw)
            .map(Some)
            .map_err(|reason| SettingsError::Invalid {
                option: option.to_owned(),
                value: raw,
                origin: match &self.0 {
                    Some(path) => format!(" in config file '{}'", path.display()),
                    None => String::new(),
                },
                reason,
            })
    }
}

fn resolve_queue(
    args: &GlobalArgs,
    redis_url_env: Option<String>,
    file: &ConfigFile,
    from: &FileOrigin,
) -> Result<QueueSettings, SettingsError> {
    let file_prefix = from.check("prefix", file.prefix.as_ref(), check::key_part)?;
    let file_group = from.check("group", file.group.as_ref(), check::key_part)?;
    Ok(QueueSettings {
        password: None,
        tls: TlsSettings::default(),
        redis_url: args
            .redis_url
            .clone()
            .or(redis_url_env)
            .or_else(|| file.redis_url.clone())
            .unwrap_or_else(|| DEFAULT_REDIS_URL.to_owned()),
        prefix: args
            .prefix
            .clone()
            .or(file_prefix)
            .unwrap_or_else(|| DEFAULT_PREFIX.to_owned()),
        group: args
            .group
            .clone()
            .or(file_group)
            .unwrap_or_else(|| DEFAULT_GROUP.to_owned()),
    })
}

fn resolve_produce(
    args: &ProduceArgs,
    file: &ConfigFile,
    from: &FileOrigin,
) -> Result<ProduceSettings, SettingsError> {
    let f = &file.produce;
    Ok(ProduceSettings {
        count: args
            .count
            .or(from.check("produce.count", f.count, check::count)?)
            .unwrap_or(DEFAULT_COUNT),
        seed: args.seed.or(f.seed),
        batch: args
            .batch
            .or(from.check("produce.batch", f.batch, check::batch)?)
            .unwrap_or(DEFAULT_BATCH),
        run_id: args.run_id.clone(),
        resume: args.resume.clone(),
        lease: args
            .lease
            .or(from.check("produce.lease", f.lease.as_ref(), check::lease)?)
            .unwrap_or(DEFAULT_LEASE),
    })
}

/// Resolves one sender from its flags (`args`) and a `[send]`-shaped table `f`,
/// whose keys are named `<table>.<key>` in errors.
fn resolve_send(
    args: &SendArgs,
    f: &SendFile,
    table: &str,
    from: &FileOrigin,
    default_name: impl FnOnce() -> String,
) -> Result<SendSettings, SettingsError> {
    let key = |name: &str| format!("{table}.{name}");
    let duration = |option: &str, flag: Option<Duration>, value: &Option<String>| {
        Ok::<_, SettingsError>(flag.or(from.check(
            &key(option),
            value.as_ref(),
            check::duration,
        )?))
    };
    let mean = duration("mean", args.mean, &f.mean)?.unwrap_or(DEFAULT_MEAN);
    let stddev = duration("stddev", args.stddev, &f.stddev)?.unwrap_or(mean / 4);
    let lease = args
        .lease
        .or(from.check(&key("lease"), f.lease.as_ref(), check::lease)?)
        .unwrap_or(DEFAULT_LEASE);
    let retry_backoff = duration("retry_backoff", args.retry_backoff, &f.retry_backoff)?
        .unwrap_or(DEFAULT_RETRY_BACKOFF);
    if retry_backoff > lease {
        return Err(SettingsError::Conflict(format!(
            "invalid value '{}' for '--retry-backoff': must not exceed the lease ({}), \
             because a failed message waits out its backoff as part of its lease",
            humantime::format_duration(retry_backoff),
            humantime::format_duration(lease)
        )));
    }
    let name = match args.name.clone() {
        Some(name) => name,
        None => match from.check(&key("name"), f.name.as_ref(), check::key_part)? {
            Some(name) => name,
            None => default_name(),
        },
    };
    Ok(SendSettings {
        name,
        delay: DelayModel {
            distribution: args
                .distribution
                .or(f.distribution)
                .unwrap_or(Distribution::Normal),
            mean,
            stddev,
        },
        failure_rate: args
            .failure_rate
            .or(from.check(&key("failure_rate"), f.failure_rate, check::failure_rate)?)
            .unwrap_or(0.0),
        concurrency: args
            .concurrency
            .or(from.check(&key("concurrency"), f.concurrency, check::concurrency)?)
            .unwrap_or(DEFAULT_CONCURRENCY),
        max_attempts: args
            .max_attempts
            .or(from.check(&key("max_attempts"), f.max_attempts, check::max_attempts)?)
            .unwrap_or(DEFAULT_MAX_ATTEMPTS),
        lease,
        retry_backoff,
        shutdown_timeout: duration(
            "shutdown_timeout",
            args.shutdown_timeout,
            &f.shutdown_timeout,
        )?
        .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT),
        seed: args.seed.or(f.seed),
    })
}

fn resolve_demo(args: &crate::cli::DemoArgs) -> Result<DemoSettings, SettingsError> {
    let (text, from) = match &args.scenario {
        Some(path) => (
            std::fs::read_to_string(path).map_err(|err| SettingsError::ConfigUnreadable {
                path: path.display().to_string(),
                reason: err.to_string(),
            })?,
            FileOrigin(Some(path.clone())),
        ),
        None => (DEFAULT_SCENARIO.to_owned(), FileOrigin(None)),
    };
    let scenario = crate::config_file::ScenarioFile::parse(&text).map_err(|reason| {
        SettingsError::ConfigUnreadable {
            path: from.0.as_ref().map_or_else(
                || "built-in default scenario".to_owned(),
                |p| p.display().to_string(),
            ),
            reason,
        }
    })?;
    let produce = ProduceSettings {
        count: from
            .check("produce.count", scenario.produce.count, check::count)?
            .unwrap_or(DEFAULT_COUNT),
        seed: scenario.produce.seed,
        batch: from
            .check("produce.batch", scenario.produce.batch, check::batch)?
            .unwrap_or(DEFAULT_BATCH),
        ..ProduceSettings::default()
    };
    if scenario.senders.is_empty() {
        return Err(SettingsError::Conflict(
            "the scenario has no [[senders]]: nothing would send its messages".to_owned(),
        ));
    }
    let mut senders = Vec::with_capacity(scenario.senders.len());
    for (i, table) in scenario.senders.iter().enumerate() {
        let sender = resolve_send(
            &SendArgs::default(),
            table,
            &format!("senders[{}]", i + 1),
            &from,
            || format!("sender-{}", i + 1),
        )?;
        if senders.iter().any(|s: &SendSettings| s.name == sender.name) {
            return Err(SettingsError::Conflict(format!(
                "two senders in the scenario are named '{}': each needs its own name",
                sender.name
            )));
        }
        senders.push(sender);
    }
    // The scenario's [monitor] table, checked as the monitor's own; a demo
    // always runs until done and reports every second unless told otherwise.
    let flags = MonitorArgs {
        interval: args.interval,
        until_done: true,
        json: args.json,
        alert_failure_rate: None,
        alert_stalled: None,
        alert_held_back: None,
        metrics_addr: None,
    };
    let monitor = resolve_monitor(&flags, &scenario.monitor, &from, DEFAULT_DEMO_INTERVAL)?;
    Ok(DemoSettings {
        description: scenario.description.unwrap_or_default(),
        produce,
        senders,
        monitor,
    })
}

/// Resolves the monitor from its flags and a `[monitor]` table (of the config
/// file or of a demo scenario).
fn resolve_monitor(
    args: &MonitorArgs,
    f: &MonitorFile,
    from: &FileOrigin,
    default_interval: Duration,
) -> Result<MonitorSettings, SettingsError> {
    Ok(MonitorSettings {
        interval: args
            .interval
            .or(from.check("monitor.interval", f.interval.as_ref(), check::interval)?)
            .unwrap_or(default_interval),
        until_done: args.until_done || f.until_done.unwrap_or(false),
        json: args.json || f.json.unwrap_or(false),
        alerts: crate::monitor::alerts::AlertRules {
            failure_rate: args.alert_failure_rate.or(from.check(
                "monitor.alert_failure_rate",
                f.alert_failure_rate,
                check::failure_rate,
            )?),
            stalled_after: args.alert_stalled.or(from.check(
                "monitor.alert_stalled",
                f.alert_stalled.as_ref(),
                check::duration,
            )?),
            held_back: args
                .alert_held_back
                .or(from.check(
                    "monitor.alert_held_back",
                    f.alert_held_back.as_ref(),
                    check::duration,
                )?)
                .unwrap_or(DEFAULT_ALERT_HELD_BACK),
        },
        metrics_addr: args.metrics_addr.or(from.check(
            "monitor.metrics_addr",
            f.metrics_addr.as_ref(),
            check::socket_addr,
        )?),
    })
}

/// A name that is unique per process, for senders started without `--name`.
fn default_sender_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && check::key_part(h).is_ok())
        .unwrap_or_else(|| "local".to_owned());
    format!("sender-{host}-{}", std::process::id())
}

/// Value checks shared by the command line (as clap value parsers) and the
/// config file. Each returns a one-line reason on failure.
pub mod check {
    use std::time::Duration;

    /// A duration such as `0ms`, `250ms`, `2s`, `1m`.
    pub fn duration(value: &str) -> Result<Duration, String> {
        humantime::parse_duration(value.trim())
            .map_err(|_| "expected a non-negative duration such as 0ms, 250ms, 2s or 1m".to_owned())
    }

    /// A retention: a duration such as `0s`, `1h`, `7d`, or `forever`.
    pub fn retention(value: &str) -> Result<crate::store::Retention, String> {
        if value.trim().eq_ignore_ascii_case("forever") {
            return Ok(crate::store::Retention::Forever);
        }
        humantime::parse_duration(value.trim())
            .map(crate::store::Retention::Keep)
            .map_err(|_| "expected a duration such as 0s, 1h or 7d, or 'forever'".to_owned())
    }

    /// A stream entry id such as `1700000000000-0`.
    pub fn stream_id(value: &str) -> Result<String, String> {
        let valid = value
            .split_once('-')
            .is_some_and(|(ms, seq)| ms.parse::<u64>().is_ok() && seq.parse::<u64>().is_ok());
        if valid {
            Ok(value.to_owned())
        } else {
            Err("expected a stream entry id such as 1700000000000-0".to_owned())
        }
    }

    /// Where a re-created group starts: `end` or a stream entry id.
    pub fn group_start(value: &str) -> Result<String, String> {
        if value == "end" {
            return Ok(value.to_owned());
        }
        stream_id(value)
            .map_err(|_| "expected 'end' or a stream entry id such as 1700000000000-0".to_owned())
    }

    /// A socket address such as `127.0.0.1:9464`.
    pub fn socket_addr(value: &str) -> Result<std::net::SocketAddr, String> {
        value
            .trim()
            .parse()
            .map_err(|_| "expected an address such as 127.0.0.1:9464".to_owned())
    }

    /// A lease: a duration of at least 100ms.
    pub fn lease(value: &str) -> Result<Duration, String> {
        let lease = duration(value)?;
        if lease < Duration::from_millis(100) {
            return Err("the lease must be at least 100ms".to_owned());
        }
        Ok(lease)
    }

    /// A monitor interval: a duration of at least 10ms.
    pub fn interval(value: &str) -> Result<Duration, String> {
        let interval = duration(value)?;
        if interval < Duration::from_millis(10) {
            return Err("the interval must be at least 10ms".to_owned());
        }
        Ok(interval)
    }

    /// A probability in [0, 1].
    pub fn failure_rate(value: &str) -> Result<f64, String> {
        let rate: f64 = value
            .trim()
            .parse()
            .map_err(|_| "expected a number between 0 and 1".to_owned())?;
        if !(0.0..=1.0).contains(&rate) {
            return Err("expected a number between 0 and 1".to_owned());
        }
        Ok(rate)
    }

    fn positive(value: &str, what: &str) -> Result<u64, String> {
        match value.trim().parse::<u64>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(format!("{what} must be a whole number of at least 1")),
        }
    }

    /// A message count of at least 1.
    pub fn count(value: &str) -> Result<u64, String> {
        positive(value, "the count")
    }

    /// A count that may be 0 (to skip a step).
    pub fn count_or_zero(value: &str) -> Result<u64, String> {
        value
            .trim()
            .parse()
            .map_err(|_| "expected a whole number of at least 0".to_owned())
    }

    /// A batch size from 1 to 100,000.
    pub fn batch(value: &str) -> Result<usize, String> {
        let n = positive(value, "the batch size")?;
        if n > 100_000 {
            return Err("the batch size must be at most 100000".to_owned());
        }
        Ok(n as usize)
    }

    /// A concurrency from 1 to 1,000,000.
    pub fn concurrency(value: &str) -> Result<usize, String> {
        let n = positive(value, "the concurrency")?;
        if n > 1_000_000 {
            return Err("the concurrency must be at most 1000000".to_owned());
        }
        Ok(n as usize)
    }

    /// Max attempts from 1 to 1,000.
    pub fn max_attempts(value: &str) -> Result<u32, String> {
        let n = positive(value, "max attempts")?;
        u32::try_from(n)
            .ok()
            .filter(|n| *n <= 1000)
            .ok_or_else(|| "max attempts must be at most 1000".to_owned())
    }

    /// A part of a Redis key (prefix, group, sender name): 1 to 64 characters of
    /// letters, digits, `-`, `_` and `.`, so it cannot break the key layout.
    pub fn key_part(value: &str) -> Result<String, String> {
        let ok = (1..=64).contains(&value.len())
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if ok {
            Ok(value.to_owned())
        } else {
            Err("expected 1 to 64 letters, digits, '-', '_' or '.'".to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn resolve_args(args: &[&str]) -> Result<Settings, SettingsError> {
        let cli = Cli::try_parse_from(args).expect("arguments parse");
        resolve(&cli, None)
    }

    #[test]
    fn defaults_apply_when_nothing_is_given() {
        let settings = resolve_args(&["sms-alerts", "send", "--name", "a"]).expect("valid");
        let Task::Send(send) = settings.task else {
            panic!("not send")
        };
        assert_eq!(send.delay.mean, DEFAULT_MEAN);
        assert_eq!(send.delay.stddev, DEFAULT_MEAN / 4);
        assert_eq!(send.concurrency, DEFAULT_CONCURRENCY);
        assert_eq!(settings.queue.redis_url, DEFAULT_REDIS_URL);
    }

    #[test]
    fn flags_beat_file_and_file_beats_defaults() {
        let dir = std::env::temp_dir().join(format!("sms-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "prefix = \"filepfx\"\n[send]\nmean = \"50ms\"\nconcurrency = 8\n",
        )
        .expect("write");
        let p = path.to_str().expect("utf-8 path");
        let settings = resolve_args(&[
            "sms-alerts",
            "--config",
            p,
            "send",
            "--name",
            "a",
            "--concurrency",
            "3",
        ])
        .expect("valid");
        let Task::Send(send) = settings.task else {
            panic!("not send")
        };
        assert_eq!(send.concurrency, 3, "flag wins over file");
        assert_eq!(
            send.delay.mean,
            Duration::from_millis(50),
            "file wins over default"
        );
        assert_eq!(settings.queue.prefix, "filepfx");
    }

    #[test]
    fn bad_file_values_name_option_and_value() {
        let dir = std::env::temp_dir().join(format!("sms-settings-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("c.toml");
        std::fs::write(&path, "[send]\nfailure_rate = 1.5\n").expect("write");
        let p = path.to_str().expect("utf-8 path");
        let err = resolve_args(&["sms-alerts", "--config", p, "send"]).expect_err("invalid");
        let text = err.to_string();
        assert!(
            text.contains("send.failure_rate") && text.contains("1.5"),
            "{text}"
        );
    }

    #[test]
    fn backoff_longer_than_lease_is_refused() {
        let err = resolve_args(&[
            "sms-alerts",
            "send",
            "--lease",
            "1s",
            "--retry-backoff",
            "2s",
        ])
        .expect_err("conflict");
        assert!(err.to_string().contains("--retry-backoff"), "{err}");
    }

    #[test]
    fn checks() {
        assert_eq!(check::duration("0ms"), Ok(Duration::ZERO));
        assert_eq!(check::duration("1m"), Ok(Duration::from_secs(60)));
        assert!(check::duration("-5ms").is_err());
        assert!(check::duration("5 parsecs").is_err());
        assert!(check::failure_rate("1.01").is_err());
        assert!(check::failure_rate("NaN").is_err());
        assert_eq!(check::failure_rate("0"), Ok(0.0));
        assert!(check::count("0").is_err());
        assert!(check::concurrency("0").is_err());
        assert!(check::max_attempts("0").is_err());
        assert!(check::key_part("a b").is_err());
        assert!(check::key_part("{x}").is_err());
        assert_eq!(
            check::retention("forever"),
            Ok(crate::store::Retention::Forever)
        );
        assert_eq!(
            check::retention("0s"),
            Ok(crate::store::Retention::Keep(Duration::ZERO))
        );
        assert!(check::retention("-1h").is_err());
        assert!(check::stream_id("12-3").is_ok());
        assert!(check::stream_id("12").is_err());
        assert!(check::group_start("end").is_ok());
        assert!(check::group_start("start").is_err());
    }
}
