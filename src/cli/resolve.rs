//! Parsed options to validated settings: defaults that depend on other
//! options, the checks that span two options, secrets read from files, and
//! demo scenarios read through the same option declarations.

use std::ffi::OsString;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, FromArgMatches};

use super::args::{
    BenchArgs, Cli, Command, DeadAction, DemoArgs, GlobalArgs, MonitorArgs, ProduceArgs, SendArgs,
    SendersAction, ServeArgs,
};
use super::file::{self, Origin};
use super::{Env, one_line_error};
use crate::routing::Routing;
use crate::settings::{
    BREAKER_PROBES, BenchSizes, BreakerSettings, DEFAULT_DEMO_INTERVAL, DEFAULT_SCENARIO, DeadTask,
    DelayModel, DemoSettings, GatewaySettings, LogSettings, MAX_BREAKER_COOLDOWN_FACTOR,
    MonitorSettings, Outage, OutageSchedule, ProduceSettings, QueueSettings, SendSettings,
    ServeSettings, Settings, SettingsError, Task, TlsSettings, check,
};
use crate::store::{ChannelStart, QueueOptions, redact_url};

/// The settings of one invocation, from its parsed options.
pub(super) fn settings(
    cli: Cli,
    matches: &ArgMatches,
    env: &Env,
) -> Result<Settings, SettingsError> {
    let url_typed = matches.value_source("redis_url") != Some(ValueSource::DefaultValue);
    let redis_url_given = url_typed || env.redis_url.is_some();
    let queue = queue(&cli.global, url_typed, env)?;
    let log = LogSettings {
        format: cli.global.log_format,
        file: cli.global.log_file.clone(),
        rotation: cli.global.log_rotation,
        keep: cli.global.log_keep,
    };
    let task = task(cli.command, redis_url_given, env)?;
    Ok(Settings {
        queue,
        redis_url_given,
        log,
        task,
    })
}

fn queue(args: &GlobalArgs, url_typed: bool, env: &Env) -> Result<QueueSettings, SettingsError> {
    let redis_url = match (&env.redis_url, url_typed) {
        (Some(url), false) => url.clone(),
        _ => args.redis_url.clone(),
    };
    let password = match &args.redis_password_file {
        Some(path) => Some(read_password(path)?),
        None => env.redis_password.clone(),
    };
    let tls = TlsSettings {
        ca_cert: args.tls_ca_cert.clone(),
        cert: args.tls_cert.clone(),
        key: args.tls_key.clone(),
        insecure_skip_verify: args.tls_insecure_skip_verify,
    };
    if tls != TlsSettings::default() && !redis_url.starts_with("rediss://") {
        return Err(SettingsError::Conflict(format!(
            "the --tls-* options apply to rediss:// URLs, and the Redis URL is '{}'",
            redact_url(&redis_url)
        )));
    }
    Ok(QueueSettings {
        redis_url,
        password,
        tls,
        prefix: args.prefix.clone(),
        group: args.channel.clone().unwrap_or_default(),
    })
}

/// The password in `path`, without the line break an editor leaves.
fn read_password(path: &std::path::Path) -> Result<String, SettingsError> {
    read_secret(path, "--redis-password-file")
}

/// The secret in `path` (for `option`), without the line break an editor leaves.
fn read_secret(path: &std::path::Path, option: &str) -> Result<String, SettingsError> {
    let text = std::fs::read_to_string(path).map_err(|err| SettingsError::Invalid {
        option: option.to_owned(),
        value: path.display().to_string(),
        origin: String::new(),
        reason: err.to_string(),
    })?;
    Ok(text.trim_end_matches(['\r', '\n']).to_owned())
}

fn task(command: Command, redis_url_given: bool, env: &Env) -> Result<Task, SettingsError> {
    Ok(match command {
        Command::Migrate(args) => Task::Migrate(QueueOptions {
            channels: unique_channels(args.channels)?,
            retention: args.retention,
            dead_retention: args.dead_retention,
            partitions: args.partitions,
            channel_start: if args.from_start {
                ChannelStart::Beginning
            } else {
                ChannelStart::End
            },
        }),
        Command::Trim(args) => Task::Trim { json: args.json },
        Command::Pause(args) => Task::Pause {
            paused: true,
            json: args.json,
        },
        Command::Resume(args) => Task::Pause {
            paused: false,
            json: args.json,
        },
        Command::Runs(args) => Task::Runs { json: args.json },
        Command::Dead(args) => Task::Dead(dead(args.action)),
        Command::Repair(args) => Task::Repair {
            yes: args.yes,
            group_start: args.group_start,
        },
        Command::Produce(args) => Task::Produce(produce(args)),
        Command::Send(args) => Task::Send(send(args, default_sender_name)?),
        Command::Monitor(args) => Task::Monitor(monitor(args)),
        Command::Audit(args) => Task::Audit {
            json: args.json,
            page: args.page,
        },
        Command::Demo(args) => Task::Demo(demo(&args)?),
        Command::Completions { shell } => Task::Completions(shell),
        Command::Acl(args) => Task::Acl { user: args.user },
        Command::Bench(args) => bench(args, redis_url_given)?,
        Command::Serve(args) => Task::Serve(serve(args, env)?),
        Command::Senders(args) => match args.action {
            None => Task::ListSenders { json: args.json },
            Some(SendersAction::Prune { idle }) => Task::PruneSenders {
                json: args.json,
                idle: idle.into(),
            },
        },
    })
}

fn serve(args: ServeArgs, env: &Env) -> Result<ServeSettings, SettingsError> {
    let api_token = match &args.api_token_file {
        Some(path) => Some(read_secret(path, "--api-token-file")?),
        None => env.api_token.clone(),
    };
    if api_token
        .as_deref()
        .is_some_and(|token| token.trim().is_empty())
    {
        return Err(SettingsError::Conflict(
            "the API token is empty: a request could pass with no token at all".to_owned(),
        ));
    }
    Ok(ServeSettings {
        listen: args.listen,
        max_batch: args.max_batch,
        max_body: args.max_body,
        idempotency_ttl: args.idempotency_ttl.into(),
        max_lag: args.max_lag,
        api_token,
        request_timeout: args.request_timeout.into(),
        client_timeout: args.client_timeout.into(),
        topics: args.topics,
        channels: unique_channels(args.channels)?,
    })
}

/// `channels`, unless it names a channel twice.
fn unique_channels(
    channels: Vec<crate::channel::Channel>,
) -> Result<Vec<crate::channel::Channel>, SettingsError> {
    crate::channel::check_unique(&channels)
        .map_err(|reason| SettingsError::Conflict(format!("--channels: {reason}")))?;
    Ok(channels)
}

fn dead(action: DeadAction) -> DeadTask {
    match action {
        DeadAction::List {
            reason,
            limit,
            json,
        } => DeadTask::List {
            reason,
            limit,
            json,
        },
        DeadAction::Requeue { reason, id } => DeadTask::Requeue { reason, ids: id },
        DeadAction::Purge { older_than } => DeadTask::Purge { older_than },
    }
}

fn bench(args: BenchArgs, redis_url_given: bool) -> Result<Task, SettingsError> {
    if args.persistence.is_some() && redis_url_given {
        return Err(SettingsError::Conflict(
            "--persistence sets up the private redis-server of the bench; a Redis given \
             with --redis-url (or REDIS_URL, or the config file) keeps its own settings"
                .to_owned(),
        ));
    }
    Ok(Task::Bench(
        BenchSizes {
            messages: args.messages,
            simulation: args.simulation,
            reclaim_pending: args.reclaim_pending,
            retention: args.retention_messages,
            partitions: args.partitions,
            cluster: args.cluster,
        },
        args.persistence.unwrap_or_default(),
    ))
}

fn produce(args: ProduceArgs) -> ProduceSettings {
    // clap keeps these apart: at most one is given.
    let routing = match (args.key, args.no_key, args.partition) {
        (Some(key), _, _) => Routing::Key(key),
        (None, true, _) => Routing::RoundRobin,
        (None, false, Some(partition)) => Routing::Partition(partition),
        (None, false, None) => Routing::Recipient,
    };
    ProduceSettings {
        routing,
        count: args.count,
        seed: args.seed,
        batch: args.batch,
        run_id: args.run_id,
        resume: args.resume,
        lease: args.lease.into(),
    }
}

/// One sender's settings; `default_name` names it when no name was given.
fn send(
    args: SendArgs,
    default_name: impl FnOnce() -> String,
) -> Result<SendSettings, SettingsError> {
    let mean: Duration = args.mean.into();
    let lease: Duration = args.lease.into();
    let retry_backoff: Duration = args.retry_backoff.into();
    if retry_backoff > lease {
        return Err(SettingsError::Conflict(format!(
            "invalid value '{}' for '--retry-backoff': must not exceed the lease ({}), \
             because a failed message waits out its backoff as part of its lease",
            args.retry_backoff, args.lease
        )));
    }
    if let Some(list) = &args.read_partitions
        && let Some(twice) = list
            .iter()
            .enumerate()
            .find_map(|(i, p)| list[..i].contains(p).then_some(*p))
    {
        return Err(SettingsError::Conflict(format!(
            "invalid value for '--read-partitions': partition {twice} is listed twice"
        )));
    }
    let outage = match (args.outage_every, args.outage_for) {
        (None, Some(down)) => match args.outage_after {
            Some(after) => Some(Outage::Once { after, down }),
            None => {
                return Err(SettingsError::Conflict(
                    "'--outage-for' needs '--outage-every' or '--outage-after': when is the \
                     gateway down?"
                        .to_owned(),
                ));
            }
        },
        (Some(every), Some(down)) if down >= every => {
            return Err(SettingsError::Conflict(format!(
                "invalid value '{}' for '--outage-for': an outage must end before the next \
                 one starts, --outage-every {}",
                humantime::format_duration(down),
                humantime::format_duration(every)
            )));
        }
        (Some(every), Some(down)) => Some(Outage::Every(OutageSchedule { every, down })),
        _ => None,
    };
    Ok(SendSettings {
        name: args.name.unwrap_or_else(default_name),
        delay: DelayModel {
            distribution: args.distribution,
            mean,
            stddev: args.stddev.unwrap_or(mean / 4),
        },
        failure_rate: args.failure_rate,
        concurrency: args.concurrency,
        max_attempts: args.max_attempts,
        lease,
        retry_backoff,
        shutdown_timeout: args.shutdown_timeout.into(),
        seed: args.seed,
        partitions: args.read_partitions,
        outage,
        channel: None,
        gateway: GatewaySettings {
            name: args.gateway,
            rate: args.gateway_rate,
            breaker: args.breaker_failures.map(|failures| BreakerSettings {
                failures,
                cooldown: args.breaker_cooldown,
                max_cooldown: args.breaker_cooldown * MAX_BREAKER_COOLDOWN_FACTOR,
                probes: BREAKER_PROBES,
            }),
            throttle_rate: args.throttle_rate,
            expire_after: args.expire_after,
        },
    })
}

fn monitor(args: MonitorArgs) -> MonitorSettings {
    MonitorSettings {
        interval: args.interval.into(),
        until_done: args.until_done,
        json: args.json,
        by_partition: args.by_partition,
        alerts: crate::settings::AlertRules {
            failure_rate: args.alert_failure_rate,
            stalled_after: args.alert_stalled,
            held_back: args.alert_held_back.into(),
        },
        metrics_addr: args.metrics_addr,
    }
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

/// The demo's settings: its scenario, read through the options' own
/// declarations, and its flags.
fn demo(args: &DemoArgs) -> Result<DemoSettings, SettingsError> {
    let (text, origin) = match &args.scenario {
        Some(path) => (
            std::fs::read_to_string(path).map_err(|err| SettingsError::ConfigUnreadable {
                path: path.display().to_string(),
                reason: err.to_string(),
            })?,
            Origin::File(path.clone()),
        ),
        None => (
            DEFAULT_SCENARIO.to_owned(),
            Origin::BuiltIn("built-in default scenario"),
        ),
    };
    let scenario = file::parse(&text, &origin)?;
    let mut description = String::new();
    let mut cluster = None;
    let mut partitions = 1;
    let mut channels = Vec::new();
    let mut produce_table = toml::Table::new();
    let mut monitor_table = toml::Table::new();
    let mut sender_tables = Vec::new();
    for (key, value) in scenario {
        match (key.as_str(), value) {
            ("description", toml::Value::String(text)) => description = text,
            ("cluster", toml::Value::Integer(n)) => {
                cluster = Some(
                    check::cluster_primaries(&n.to_string())
                        .map_err(|reason| origin.unusable(format!("cluster = {n}: {reason}")))?,
                );
            }
            ("partitions", toml::Value::Integer(n)) => {
                partitions = check::partitions(&n.to_string())
                    .map_err(|reason| origin.unusable(format!("partitions = {n}: {reason}")))?;
            }
            ("channels", toml::Value::Array(items)) => {
                for item in items {
                    let spec = item.as_str().unwrap_or_default();
                    channels.push(check::channel(spec).map_err(|reason| {
                        origin.unusable(format!("channels = {item}: {reason}"))
                    })?);
                }
                crate::channel::check_unique(&channels)
                    .map_err(|reason| origin.unusable(format!("channels: {reason}")))?;
            }
            ("produce", toml::Value::Table(table)) => produce_table = table,
            ("monitor", toml::Value::Table(table)) => monitor_table = table,
            ("senders", toml::Value::Array(items)) => sender_tables = items,
            (key, _) => {
                return Err(origin.unusable(format!(
                    "unknown or mistyped key '{key}'; a scenario has description, cluster, \
                     partitions, channels, [produce], [[senders]] and [monitor]"
                )));
            }
        }
    }
    let (produce_args, _) = scenario_args::<ProduceArgs>(&produce_table, "produce", &origin)?;
    let senders = scenario_senders(&sender_tables, &origin)?;
    let (monitor_args, monitor_matches) =
        scenario_args::<MonitorArgs>(&monitor_table, "monitor", &origin)?;
    let mut monitor = monitor(monitor_args);
    monitor.until_done = true;
    monitor.json |= args.json;
    monitor.interval = match args.interval {
        Some(interval) => interval,
        None if monitor_matches.value_source("interval") == Some(ValueSource::DefaultValue) => {
            DEFAULT_DEMO_INTERVAL
        }
        None => monitor.interval,
    };
    Ok(DemoSettings {
        description,
        cluster: args.cluster.or(cluster),
        partitions,
        channels,
        produce: produce(produce_args),
        senders,
        monitor,
    })
}

/// The scenario's senders, each named (by default `sender-N`) and unique.
fn scenario_senders(
    tables: &[toml::Value],
    origin: &Origin,
) -> Result<Vec<SendSettings>, SettingsError> {
    if tables.is_empty() {
        return Err(SettingsError::Conflict(
            "the scenario has no [[senders]]: nothing would send its messages".to_owned(),
        ));
    }
    let mut senders: Vec<SendSettings> = Vec::with_capacity(tables.len());
    for (i, table) in tables.iter().enumerate() {
        let Some(table) = table.as_table() else {
            return Err(origin.unusable("[[senders]] must be tables"));
        };
        let section = format!("senders[{}]", i + 1);
        // `channel` is a global option on the command line; in a scenario
        // each sender names its own.
        let mut table = table.clone();
        let channel = match table.remove("channel") {
            None => None,
            Some(toml::Value::String(name)) => Some(check::key_part(&name).map_err(|reason| {
                origin.unusable(format!("[[senders]] channel = {name:?}: {reason}"))
            })?),
            Some(other) => {
                return Err(origin.unusable(format!(
                    "[[senders]] channel = {other}: expected a channel's name"
                )));
            }
        };
        let (args, _) = scenario_args::<SendArgs>(&table, &section, origin)?;
        let mut sender = send(args, || format!("sender-{}", i + 1))?;
        sender.channel = channel;
        if senders.iter().any(|s| s.name == sender.name) {
            return Err(SettingsError::Conflict(format!(
                "two senders in the scenario are named '{}': each needs its own name",
                sender.name
            )));
        }
        senders.push(sender);
    }
    Ok(senders)
}

/// One scenario table parsed as the options `A` of a subcommand, without the
/// environment: a scenario says everything it means.
fn scenario_args<A: Args + FromArgMatches>(
    table: &toml::Table,
    section: &str,
    origin: &Origin,
) -> Result<(A, ArgMatches), SettingsError> {
    let command = A::augment_args(clap::Command::new("scenario"))
        .no_binary_name(true)
        .mut_args(|arg| arg.env(None::<&str>));
    let argv: Vec<OsString> =
        file::arguments(&command, table, &format!("{section}."), origin, |_| false)?;
    let unusable = |err: clap::Error| origin.unusable(one_line_error(&err.render().to_string()));
    let matches = command.try_get_matches_from(argv).map_err(unusable)?;
    let args = A::from_arg_matches(&matches).map_err(unusable)?;
    Ok((args, matches))
}
