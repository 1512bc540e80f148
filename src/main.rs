//! The `sms-alerts` binary: parses, sets up logging and signals, runs one
//! subcommand from the library and maps the result to an exit code.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::CommandFactory;
use clap::Parser;
use sms_alerts::cli::{Cli, LogFormat, LogRotation};
use sms_alerts::embedded::{EmbeddedRedis, Persistence};
use sms_alerts::exit::ExitStatus;
use sms_alerts::monitor::Sink;
use sms_alerts::settings::LogSettings;
use sms_alerts::settings::{self, Settings, Task};
use sms_alerts::store::{Store, StoreError};
use sms_alerts::{audit, bench, demo, metrics, monitor, produce, send, senders};
use tokio_util::sync::CancellationToken;
use tracing_appender::rolling::Rotation;
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc's malloc: the sender's hot path allocates a few
/// short-lived buffers per message (reply parsing, ids, results), and a
/// profile of a 20 ms simulation showed glibc's malloc and free at about a
/// fifth of the sender's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if err.use_stderr() => {
            eprintln!(
                "{}",
                sms_alerts::cli::one_line_error(&err.render().to_string())
            );
            return ExitStatus::Usage.into();
        }
        // --help and --version.
        Err(err) => err.exit(),
    };
    let settings = match settings::resolve(&cli, std::env::var("REDIS_URL").ok()) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitStatus::Usage.into();
        }
    };
    if let Task::Completions(shell) = settings.task {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "sms-alerts", &mut script);
        // A closed pipe (`| head`) is not an error worth a message.
        let _ = std::io::stdout().write_all(&script);
        return ExitStatus::Success.into();
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

async fn run(settings: Settings) -> ExitStatus {
    let shutdown = CancellationToken::new();
    watch_signals(shutdown.clone());
    match execute(settings, &shutdown).await {
        Ok(status) => status,
        Err(err) => {
            eprintln!("error: {err:#}");
            match err.downcast_ref::<StoreError>() {
                Some(StoreError::InvalidUrl { .. }) => ExitStatus::Usage,
                _ => ExitStatus::Failure,
            }
        }
    }
}

async fn execute(
    mut settings: Settings,
    shutdown: &CancellationToken,
) -> anyhow::Result<ExitStatus> {
    // A demo without a Redis of the user's runs on a private one, removed afterwards.
    let embedded = match (&settings.task, settings.redis_url_given) {
        (Task::Demo(_), false) => {
            let server = EmbeddedRedis::start(Persistence::Aof).await?;
            settings.queue.redis_url = server.url().to_owned();
            Some(server)
        }
        (Task::Bench(_, persistence), false) => {
            let server = EmbeddedRedis::start(*persistence).await?;
            settings.queue.redis_url = server.url().to_owned();
            Some(server)
        }
        _ => None,
    };
    let status = execute_on(settings, shutdown).await;
    if let Some(server) = embedded {
        server.stop().await;
    }
    status
}

async fn execute_on(
    settings: Settings,
    shutdown: &CancellationToken,
) -> anyhow::Result<ExitStatus> {
    let store = Store::connect(&settings.queue).await?;
    // Reachable a moment ago: from here on, Redis failures are waited out.
    let migrations = store
        .retrying("apply migrations", || store.prepare())
        .await?;
    match settings.task {
        Task::Migrate => {
            if migrations.applied.is_empty() {
                println!(
                    "up to date: Functions library version {}",
                    migrations.library_version
                );
            } else {
                println!(
                    "applied {}: Functions library version {}",
                    migrations.applied.join(", "),
                    migrations.library_version
                );
            }
        }
        Task::Produce(produce_settings) => {
            let summary = produce::run(&store, &produce_settings, shutdown).await?;
            println!(
                "produced {} messages in {:.3}s ({:.0} msg/s){}",
                summary.count,
                summary.elapsed.as_secs_f64(),
                summary.rate_per_s(),
                if summary.interrupted {
                    ", stopped early by a signal"
                } else {
                    ""
                }
            );
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
        Task::Audit { json, page } => {
            let report = audit::run(&store, page).await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", report.to_text());
            }
            if !report.is_consistent() {
                return Ok(ExitStatus::Failure);
            }
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
        Task::Completions(_) => {}
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
            bench::run(&settings.queue.redis_url, sizes, &mut std::io::stdout()).await?;
        }
        Task::ListSenders { json } => {
            let rows = senders::list(&store).await?;
            if json {
                println!("{}", serde_json::to_string(&rows)?);
            } else {
                print!("{}", senders::to_table(&rows));
            }
        }
        Task::PruneSenders { json, idle } => {
            let report = senders::prune(&store, idle).await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", report.to_text());
            }
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
/// 130 at once.
fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    tokio::spawn(async move {
        let (Ok(mut interrupt), Ok(mut terminate)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            tracing::warn!("cannot listen for signals; Ctrl-C will stop the process at once");
            return;
        };
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
        let builder = builder.with_writer(std::io::stderr);
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
