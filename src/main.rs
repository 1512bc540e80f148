//! The `sms-alerts` binary: parses, sets up logging and signals, runs one
//! subcommand from the library and maps the result to an exit code.

use std::io::{IsTerminal, Write};
use std::num::NonZeroUsize;
use std::process::ExitCode;

use clap::CommandFactory;
use sms_alerts::cli::{Cli, CliError, Env};
use sms_alerts::demo::DemoError;
use sms_alerts::embedded::{EmbeddedCluster, EmbeddedRedis, Persistence};
use sms_alerts::exit::ExitStatus;
use sms_alerts::monitor::MonitorError;
use sms_alerts::monitor::Sink;
use sms_alerts::produce::ProduceError;
use sms_alerts::send::SendError;
use sms_alerts::serve::ServeError;
use sms_alerts::settings::{DeadTask, LogFormat, LogRotation, LogSettings, Settings, Task};
use sms_alerts::store::{
    MigrationReport, QueueIdentity, QueueOptions, QueueStatus, Store, StoreError,
};
use sms_alerts::{
    audit, bench, dead, demo, metrics, monitor, produce, repair, send, senders, serve,
};
use tokio_util::sync::CancellationToken;
use tracing_appender::rolling::Rotation;
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc's malloc: the sender's hot path allocates and
/// frees a few short-lived buffers per message (reply buffers, ids,
/// results), which mimalloc's thread-local free lists serve far more cheaply.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let settings = match sms_alerts::cli::parse_from(std::env::args_os(), &Env::from_process()) {
        Ok(settings) => settings,
        Err(CliError::Usage(err)) if err.use_stderr() => {
            eprintln!(
                "{}",
                sms_alerts::cli::one_line_error(&err.render().to_string())
            );
            return ExitStatus::Usage.into();
        }
        // --help and --version.
        Err(CliError::Usage(err)) => err.exit(),
        Err(CliError::Settings(err)) => {
            eprintln!("error: {err}");
            return ExitStatus::Usage.into();
        }
    };
    if let Some(status) = print_only(&settings) {
        return status.into();
    }
    // The demo's own report is the output; routine logs would drown it.
    let default_level = if matches!(settings.task, Task::Demo(_) | Task::Bench(..)) {
        "warn"
    } else {
        "info"
    };
    // Held until exit: dropping it flushes buffered log lines to the file.
    let _log_guard = match init_tracing(&settings.log, default_level) {
        Ok(guard) => guard,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitStatus::Usage.into();
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitStatus::Failure.into();
        }
    };
    let status = runtime.block_on(run(settings));
    // Do not wait for detached tasks (e.g. a result writer giving up).
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    status.into()
}

/// Runs the tasks that only print and need neither Redis nor logging.
fn print_only(settings: &Settings) -> Option<ExitStatus> {
    let text = match &settings.task {
        Task::Completions(shell) => completion_script(*shell),
        Task::Acl { user } => format!("{}\n", sms_alerts::acl::rule(user, &settings.queue.prefix)),
        _ => return None,
    };
    // A closed pipe (`| head`) is not an error worth a message.
    let _ = std::io::stdout().write_all(text.as_bytes());
    Some(ExitStatus::Success)
}

/// The completion script for `shell`. clap_complete's bash script spells the
/// state of a hyphenated binary's subcommands one way where it tracks them and
/// another where it matches them (clap issue 6421), so no option after a
/// subcommand would complete; the labels are rewritten to the tracked spelling.
fn completion_script(shell: clap_complete::Shell) -> String {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "sms-alerts", &mut script);
    let script = String::from_utf8_lossy(&script).into_owned();
    match shell {
        clap_complete::Shell::Bash => script.replace("sms__subcmd__alerts", "sms__alerts"),
        _ => script,
    }
}

async fn run(settings: Settings) -> ExitStatus {
    let shutdown = CancellationToken::new();
    watch_signals(shutdown.clone());
    match execute(settings, &shutdown).await {
        Ok(status) => status,
        Err(err) => {
            eprintln!("error: {err:#}");
            exit_status(&err)
        }
    }
}

/// The exit code an error calls for: 3 for lost or damaged queue state, 2 for
/// a bad URL or a request the queue refuses (an unknown run id, a partition
/// it does not have, a dead letter named ambiguously), else 1.
fn exit_status(err: &anyhow::Error) -> ExitStatus {
    let refused_partition = matches!(
        err.downcast_ref::<SendError>(),
        Some(SendError::NoSuchPartition { .. })
    );
    if refused_partition
        || err
            .downcast_ref::<ProduceError>()
            .is_some_and(ProduceError::is_usage)
    {
        return ExitStatus::Usage;
    }
    let store_error = err
        .downcast_ref::<StoreError>()
        .or_else(|| err.downcast_ref::<SendError>()?.store_error())
        .or_else(|| err.downcast_ref::<MonitorError>()?.store_error())
        .or_else(|| err.downcast_ref::<DemoError>()?.store_error())
        .or_else(|| err.downcast_ref::<ProduceError>()?.store_error())
        .or_else(|| err.downcast_ref::<ServeError>()?.store_error());
    match store_error {
        Some(err) if err.is_queue_state() => ExitStatus::QueueState,
        Some(
            StoreError::InvalidUrl { .. } | StoreError::InvalidTls(_) | StoreError::Refused(_),
        ) => ExitStatus::Usage,
        _ => ExitStatus::Failure,
    }
}

async fn execute(
    mut settings: Settings,
    shutdown: &CancellationToken,
) -> anyhow::Result<ExitStatus> {
    // A demo without a Redis of the user's runs on a private one (or a
    // private cluster), removed afterwards.
    let embedded = match (&settings.task, settings.redis_url_given) {
        (Task::Demo(demo), false) => match demo.cluster {
            Some(primaries) => {
                let primaries = NonZeroUsize::new(primaries as usize).unwrap_or(NonZeroUsize::MIN);
                let cluster = EmbeddedCluster::start(primaries, Persistence::Aof).await?;
                settings.queue.redis_url = cluster.seed_url().to_owned();
                Some(Private::Cluster(cluster))
            }
            None => {
                let server = EmbeddedRedis::start(Persistence::Aof).await?;
                settings.queue.redis_url = server.url().to_owned();
                Some(Private::Redis(Box::new(server)))
            }
        },
        (Task::Bench(_, persistence), false) => {
            let server = EmbeddedRedis::start(*persistence).await?;
            settings.queue.redis_url = server.url().to_owned();
            Some(Private::Redis(Box::new(server)))
        }
        _ => None,
    };
    let status = execute_on(settings, shutdown).await;
    match embedded {
        Some(Private::Redis(server)) => (*server).stop().await,
        Some(Private::Cluster(cluster)) => cluster.stop().await,
        None => {}
    }
    status
}

/// A private Redis a task runs on, stopped when it ends.
enum Private {
    Redis(Box<EmbeddedRedis>),
    Cluster(EmbeddedCluster),
}

/// Connects and opens the queue as the task needs it: `migrate` and `demo`
/// create it; inspection tools open it without writing (they must
/// work on a Redis at `maxmemory`); `audit` and `repair` take it as it is
/// (lost state is what they report); every other task opens it, so its
/// writes are checked against the queue's identity. Redis failures are
/// waited out; `None` if a signal came first.
async fn open(settings: &Settings, shutdown: &CancellationToken) -> anyhow::Result<Option<Store>> {
    let start = async {
        let store = Store::connect(&settings.queue).await?;
        // Reachable a moment ago: from here on, Redis failures are waited out.
        let store = match &settings.task {
            Task::Migrate(options) => {
                let (store, report, identity) = store
                    .retrying("create the queue", || store.migrate(options))
                    .await?;
                print_migration(&store, &report, &identity);
                store
            }
            Task::Demo(demo) => {
                let options = QueueOptions {
                    partitions: Some(demo.partitions),
                    channels: demo.channels.clone(),
                    ..QueueOptions::default()
                };
                store
                    .retrying("create the queue", || store.migrate(&options))
                    .await?
                    .0
            }
            // The bench works on queues of its own, under fresh prefixes.
            Task::Audit { .. }
            | Task::Repair { .. }
            | Task::Completions(_)
            | Task::Acl { .. }
            | Task::Bench(..) => store,
            task if task.is_read_only() => {
                store
                    .retrying("open the queue", || store.open_read_only())
                    .await?
            }
            _ => store.retrying("open the queue", || store.open()).await?,
        };
        Ok::<_, StoreError>(store)
    };
    // The first signal stops a process still starting at once: it has
    // started nothing yet.
    tokio::select! {
        store = start => Ok(Some(store?)),
        () = shutdown.cancelled() => Ok(None),
    }
}

fn print_migration(store: &Store, report: &MigrationReport, identity: &QueueIdentity) {
    let what = match identity.status {
        QueueStatus::Created => "created queue",
        QueueStatus::Adopted => "gave an identity to queue",
        QueueStatus::Existing => "queue",
    };
    let applied = if report.applied.is_empty() {
        "up to date".to_owned()
    } else {
        format!("applied {}", report.applied.join(", "))
    };
    let (before, after) = identity.partitions;
    let partitions = match (before, after) {
        (1, 1) => String::new(),
        (before, after) if before == after || identity.status == QueueStatus::Created => {
            format!(", {after} partitions")
        }
        (before, after) => format!(", {after} partitions (grown from {before})"),
    };
    let channels: Vec<String> = identity
        .channels
        .iter()
        .map(|channel| {
            let added = identity.added_channels.contains(&channel.name);
            format!("{channel}{}", if added { " (added)" } else { "" })
        })
        .collect();
    println!(
        "{what} '{}'{partitions}, channels {} (epoch {}): settled messages kept {}, dead \
         letters kept {}; {applied}: Functions library version {}",
        store.keys().messages(),
        channels.join(", "),
        identity.epoch,
        identity.retention,
        identity.dead_retention,
        report.library_version
    );
}

async fn execute_on(
    settings: Settings,
    shutdown: &CancellationToken,
) -> anyhow::Result<ExitStatus> {
    let Some(store) = open(&settings, shutdown).await? else {
        return Ok(ExitStatus::Success);
    };
    match settings.task {
        Task::Migrate(_) | Task::Completions(_) | Task::Acl { .. } => {}
        Task::Produce(produce_settings) => {
            return produce_task(&store, produce_settings, shutdown).await;
        }
        Task::Send(send_settings) => {
            send::run(store, send_settings, shutdown.clone()).await?;
        }
        Task::Monitor(monitor_settings) => {
            if let Some(addr) = monitor_settings.metrics_addr {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|err| anyhow::anyhow!("cannot serve metrics on {addr}: {err}"))?;
                tokio::spawn(metrics::serve(store.clone(), listener, shutdown.clone()));
            }
            let mut stdout = std::io::stdout();
            let sink = sink_for(&mut stdout, monitor_settings.json);
            monitor::run(&store, &monitor_settings, sink, shutdown).await?;
        }
        Task::Serve(serve_settings) => {
            let added = store.ensure_channels(&serve_settings.channels).await?;
            let store = if added.is_empty() {
                store
            } else {
                tracing::info!(channels = ?added, "added channels the queue lacked");
                store.open().await?
            };
            let addr = serve_settings.listen;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|err| anyhow::anyhow!("cannot serve HTTP on {addr}: {err}"))?;
            serve::run(store, serve_settings, listener, shutdown.clone()).await?;
        }
        Task::Demo(demo_settings) => {
            let mut stdout = std::io::stdout();
            let sink = sink_for(&mut stdout, demo_settings.monitor.json);
            let report = demo::run(&store, &demo_settings, sink, shutdown).await?;
            print!("{}", report.to_text());
            if !report.audit.is_consistent() {
                return Ok(ExitStatus::Failure);
            }
        }
        Task::Bench(sizes, persistence) => {
            let server = if settings.redis_url_given {
                "a given Redis".to_owned()
            } else {
                format!("a private redis-server, {}", persistence.describe())
            };
            println!(
                "sms-alerts bench on {} ({server}; {} cores)",
                store.url(),
                std::thread::available_parallelism().map_or(0, |n| n.get())
            );
            bench::run(
                &settings.queue.redis_url,
                sizes,
                persistence,
                &mut std::io::stdout(),
            )
            .await?;
        }
        task => {
            // A one-shot command stops at the first signal: it has no work of
            // its own to finish, and what it did is done (a repair step is
            // one transaction). 130: it did not finish.
            return tokio::select! {
                status = one_shot(&store, task) => status,
                () = shutdown.cancelled() => {
                    eprintln!("stopped by a signal before it finished");
                    Ok(ExitStatus::Interrupted)
                }
            };
        }
    }
    Ok(ExitStatus::Success)
}

/// The commands that do one thing and end: audit, senders, trim, runs,
/// dead letters, repair.
async fn one_shot(store: &Store, task: Task) -> anyhow::Result<ExitStatus> {
    match task {
        Task::Audit { json, page } => {
            let report = audit::run(store, page).await?;
            print_json_or_text(json, &report, &report.to_text())?;
            if !report.is_consistent() {
                return Ok(ExitStatus::Failure);
            }
        }
        Task::ListSenders { json } => {
            let rows = senders::list(store).await?;
            print_json_or_text(json, &rows, &senders::to_table(&rows))?;
        }
        Task::PruneSenders { json, idle } => {
            let report = senders::prune(store, idle).await?;
            print_json_or_text(json, &report, &report.to_text())?;
        }
        Task::Trim { json } => {
            let trimmed = trim(store).await?;
            let text = format!(
                "trimmed {} settled entries and {} dead letters",
                trimmed.entries, trimmed.dead_letters
            );
            let value = serde_json::json!({
                "trimmed": trimmed.entries,
                "dead_trimmed": trimmed.dead_letters,
            });
            print_json_or_text(json, &value, &(text + "\n"))?;
        }
        Task::Pause { paused, json } => {
            let changed = store.operator().set_paused(paused).await?;
            let channel = store.group();
            let what = match (paused, changed) {
                (true, true) => "paused: its senders stop starting sends",
                (true, false) => "was paused already",
                (false, true) => "resumed: its senders go on",
                (false, false) => "was not paused",
            };
            let value =
                serde_json::json!({ "channel": channel, "paused": paused, "changed": changed });
            print_json_or_text(json, &value, &format!("channel {channel} {what}\n"))?;
        }
        Task::Runs { json } => {
            let runs = store.inspector().all_runs().await?;
            print_json_or_text(json, &runs, &runs_table(&runs))?;
        }
        Task::Dead(task) => return dead_task(store, task).await,
        Task::Repair { yes, group_start } => return repair_task(store, yes, &group_start).await,
        _ => {}
    }
    Ok(ExitStatus::Success)
}

/// Prints `value` as one JSON line, or `text` as it is.
fn print_json_or_text(json: bool, value: &impl serde::Serialize, text: &str) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(value)?);
    } else {
        print!("{text}");
    }
    Ok(())
}

/// `produce`: prints the run's id before anything is written, so that a
/// producer killed at any moment can be resumed by it, then what it did.
async fn produce_task(
    store: &Store,
    mut settings: sms_alerts::settings::ProduceSettings,
    shutdown: &CancellationToken,
) -> anyhow::Result<ExitStatus> {
    produce::check_routing(store, &settings)?;
    match &settings.resume {
        Some(run) => println!("resuming producer run {run}"),
        None => {
            let run = settings.run_id.get_or_insert_with(produce::new_run_id);
            println!("producer run {run}: {} messages", settings.count);
        }
    }
    let summary = produce::run(store, &settings, shutdown).await?;
    if !summary.started {
        println!(
            "stopped by a signal before run {} started: nothing was produced",
            summary.run_id
        );
        return Ok(ExitStatus::Success);
    }
    let tail = if summary.interrupted {
        format!(
            "; stopped early by a signal: `sms-alerts produce --resume {}` finishes it",
            summary.run_id
        )
    } else if summary.already_written > 0 {
        format!(
            "; {} more were written before it was resumed",
            summary.already_written
        )
    } else {
        String::new()
    };
    println!(
        "produced {} messages in {:.3}s ({:.0} msg/s), run {}{tail}",
        summary.count,
        summary.elapsed.as_secs_f64(),
        summary.rate_per_s(),
        summary.run_id,
    );
    Ok(ExitStatus::Success)
}

/// `repair`: prints the plan, and does it with `--yes`.
async fn repair_task(store: &Store, yes: bool, group_start: &str) -> anyhow::Result<ExitStatus> {
    let plan = repair::plan(store, group_start).await?;
    print!("{}", plan.to_text());
    if plan.steps.is_empty() {
        return Ok(ExitStatus::Success);
    }
    if !yes {
        println!("nothing was changed: run `sms-alerts repair --yes` to do the above");
        return Ok(ExitStatus::Failure);
    }
    repair::apply(store, &plan).await?;
    println!("repaired: restart every sms-alerts process of this queue");
    Ok(ExitStatus::Success)
}

/// Trims every partition until a call removes nothing there (each call
/// does a bounded amount).
async fn trim(store: &Store) -> Result<sms_alerts::store::Trimmed, StoreError> {
    let mut total = sms_alerts::store::Trimmed::default();
    for partition in store.partitions() {
        let sender = partition.sender();
        loop {
            let once = sender.retrying("trim the stream", || sender.trim()).await?;
            total.entries += once.entries;
            total.dead_letters += once.dead_letters;
            if once.entries + once.dead_letters == 0 {
                break;
            }
        }
    }
    Ok(total)
}

fn runs_table(runs: &[sms_alerts::store::RunInfo]) -> String {
    let mut out = format!(
        "{:<20}  {:<9}  {:>12}  {:>10}\n",
        "run", "state", "batches", "messages"
    );
    for run in runs {
        out.push_str(&format!(
            "{:<20}  {:<9}  {:>12}  {:>10}\n",
            run.id,
            run.state.to_string(),
            format!("{}/{}", run.batches_written, run.batches),
            run.count
        ));
    }
    out
}

async fn dead_task(store: &Store, task: DeadTask) -> anyhow::Result<ExitStatus> {
    match task {
        DeadTask::List {
            reason,
            limit,
            json,
        } => {
            let letters = dead::list(store, reason.as_deref(), limit).await?;
            if json {
                for letter in &letters {
                    println!("{}", serde_json::to_string(letter)?);
                }
            } else {
                print!(
                    "{}",
                    dead::to_table(&letters, store.partition_count(), store.channel().kind)
                );
            }
        }
        DeadTask::Requeue { reason, ids } => {
            let selection = match reason {
                Some(reason) => dead::Selection::Reason(reason),
                None => dead::Selection::Ids(ids),
            };
            let report = dead::requeue(store, &selection).await?;
            print!("{}", report.to_text());
        }
        DeadTask::Purge { older_than } => {
            let purged = dead::purge(store, older_than).await?;
            println!("purged {purged} dead letters");
        }
    }
    Ok(ExitStatus::Success)
}

/// The live display on a terminal; plain or JSON lines otherwise.
fn sink_for(stdout: &mut std::io::Stdout, json: bool) -> Sink<'_> {
    if !json && stdout.is_terminal() {
        Sink::Terminal
    } else {
        Sink::Writer(stdout)
    }
}

/// First Ctrl-C or SIGTERM: cancel `shutdown` (drain and exit 0). Second: exit
/// 130 at once. The handlers are installed before this returns, before any
/// connection is opened: a signal that came before them would kill the
/// process without a word.
fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::warn!("cannot listen for signals; Ctrl-C will stop the process at once");
        return;
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            if shutdown.is_cancelled() {
                eprintln!("second signal: exiting now");
                std::process::exit(i32::from(ExitStatus::Interrupted.code()));
            }
            tracing::info!("shutting down gracefully; send the signal again to exit at once");
            shutdown.cancel();
        }
    });
}

/// Sets up logging to stderr, or to a rotated file. Returns the guard that
/// flushes the file writer when dropped.
fn init_tracing(
    log: &LogSettings,
    default_level: &str,
) -> Result<Option<tracing_appender::non_blocking::WorkerGuard>, String> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let Some(path) = &log.file else {
        // Colour codes are for a person at a terminal, not for a file or a pipe.
        let builder = builder
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal());
        match log.format {
            LogFormat::Text => builder.init(),
            LogFormat::Json => builder.json().init(),
        }
        return Ok(None);
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir)
        .map_err(|err| format!("invalid value '{}' for '--log-file': {err}", path.display()))?;
    let name = path.file_name().ok_or_else(|| {
        format!(
            "invalid value '{}' for '--log-file': not a file name",
            path.display()
        )
    })?;
    let appender = tracing_appender::rolling::RollingFileAppender::builder()
        .rotation(match log.rotation {
            LogRotation::Minutely => Rotation::MINUTELY,
            LogRotation::Hourly => Rotation::HOURLY,
            LogRotation::Daily => Rotation::DAILY,
            LogRotation::Never => Rotation::NEVER,
        })
        .filename_prefix(name.to_string_lossy())
        .max_log_files(log.keep)
        .build(dir)
        .map_err(|err| format!("invalid value '{}' for '--log-file': {err}", path.display()))?;
    let (writer, guard) = tracing_appender::non_blocking(appender);
    let builder = builder.with_writer(writer).with_ansi(false);
    match log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(Some(guard))
}
