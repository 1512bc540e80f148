//! The top layer of the library: what the user typed (flags, `SMS_*`
//! environment variables, a config file) turned into validated
//! [`Settings`]. Precedence: flags, then the environment, then the config
//! file, then the defaults.
//!
//! Every option is declared once, in [`args`]. A config file is applied by
//! handing its values to clap as arguments for the options that were neither
//! typed nor set in the environment (see `file.rs`), so a file value is
//! parsed and checked exactly as a flag would be.

// The doc comments of `args` are clap's --help text, where `<OPTION>` and
// `<hostname>` are meant literally, not as HTML.
#![allow(rustdoc::invalid_html_tags)]

pub mod args;
mod file;
mod resolve;

use std::ffi::OsString;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};
use thiserror::Error;

pub use args::Cli;

use crate::settings::{Settings, SettingsError};

/// The variables read from the environment outside clap's `SMS_*` ones.
#[derive(Debug, Clone, Default)]
pub struct Env {
    /// `REDIS_URL`: ranks below `--redis-url` and `SMS_REDIS_URL`, above the file.
    pub redis_url: Option<String>,
    /// `REDIS_PASSWORD`: ranks below `--redis-password-file`.
    pub redis_password: Option<String>,
    /// `SMS_API_TOKEN`: the API token of `serve`; ranks below `--api-token-file`.
    pub api_token: Option<String>,
}

impl Env {
    /// Reads the variables of this process.
    pub fn from_process() -> Self {
        Self {
            redis_url: std::env::var("REDIS_URL").ok(),
            redis_password: std::env::var("REDIS_PASSWORD").ok(),
            api_token: std::env::var("SMS_API_TOKEN").ok(),
        }
    }
}

/// Why the command line gave no settings.
#[derive(Debug, Error)]
pub enum CliError {
    /// A usage error, or `--help`/`--version` (clap prints those itself).
    #[error("{0}")]
    Usage(#[from] clap::Error),
    /// A value or file that clap accepted but the settings refuse.
    #[error(transparent)]
    Settings(#[from] SettingsError),
}

/// Parses `args` (the first being the program name) with `env` into settings.
pub fn parse_from<I, T>(args: I, env: &Env) -> Result<Settings, CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let argv: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let command = Cli::command();
    let matches = command.clone().try_get_matches_from(&argv)?;
    let cli = Cli::from_arg_matches(&matches)?;
    let Some(path) = cli.global.config.clone() else {
        return Ok(resolve::settings(cli, &matches, env)?);
    };
    let extra = file_arguments(&command, &matches, &path, env)?;
    let argv: Vec<OsString> = argv.into_iter().chain(extra).collect();
    let matches = command.try_get_matches_from(&argv)?;
    let cli = Cli::from_arg_matches(&matches)?;
    Ok(resolve::settings(cli, &matches, env)?)
}

/// The config file's values as arguments: every key is checked, but only the
/// top-level keys and the running subcommand's table are applied, each only
/// where neither a flag nor the environment set the option.
fn file_arguments(
    command: &clap::Command,
    matches: &ArgMatches,
    path: &std::path::Path,
    env: &Env,
) -> Result<Vec<OsString>, SettingsError> {
    let origin = file::Origin::File(path.to_owned());
    let table = file::load(path)?;
    let mut argv = file::arguments(command, &table, "", &origin, |arg| {
        given(matches, arg.get_id().as_str())
            || (arg.get_id() == "redis_url" && env.redis_url.is_some())
    })?;
    let running = matches.subcommand();
    for (name, value) in &table {
        let Some(section) = value.as_table() else {
            continue;
        };
        let Some(sub) = command.find_subcommand(name) else {
            return Err(origin.unusable(format!(
                "unknown table [{name}]; tables are named after subcommands, e.g. [send]"
            )));
        };
        let applies = running.filter(|(running, sub_matches)| {
            *running == name && sub_matches.subcommand().is_none()
        });
        let section_argv = file::arguments(sub, section, &format!("{name}."), &origin, |arg| {
            applies.is_none_or(|(_, sub_matches)| {
                given(sub_matches, arg.get_id().as_str())
                    || conflicts_with_given(sub, arg, sub_matches)
            })
        })?;
        argv.extend(section_argv);
    }
    Ok(argv)
}

/// Whether `arg` conflicts, either way round, with an option that was given.
fn conflicts_with_given(command: &clap::Command, arg: &clap::Arg, matches: &ArgMatches) -> bool {
    command.get_arguments().any(|other| {
        given(matches, other.get_id().as_str())
            && (command
                .get_arg_conflicts_with(other)
                .iter()
                .any(|c| c.get_id() == arg.get_id())
                || command
                    .get_arg_conflicts_with(arg)
                    .iter()
                    .any(|c| c.get_id() == other.get_id()))
    })
}

/// Whether the option `id` was typed or set in the environment.
fn given(matches: &ArgMatches, id: &str) -> bool {
    matches!(
        matches.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::routing::Routing;
    use crate::settings::{
        DEFAULT_COUNT, DEFAULT_LEASE, DEFAULT_MEAN, DEFAULT_PRUNE_IDLE, DEFAULT_REDIS_URL, Task,
    };

    fn parse(args: &[&str]) -> Result<Settings, CliError> {
        parse_from(args, &Env::default())
    }

    fn config(name: &str, text: &str) -> String {
        let dir = std::env::temp_dir().join(format!("sms-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path.to_str().expect("utf-8 path").to_owned()
    }

    #[test]
    fn defaults_apply_when_nothing_is_given() {
        let settings = parse(&["sms-alerts", "send", "--name", "a"]).expect("valid");
        let Task::Send(send) = settings.task else {
            panic!("not send")
        };
        assert_eq!(send.delay.mean, DEFAULT_MEAN);
        assert_eq!(send.delay.stddev, DEFAULT_MEAN / 4);
        assert_eq!(settings.queue.redis_url, DEFAULT_REDIS_URL);
        assert!(!settings.redis_url_given);
    }

    #[test]
    fn flags_beat_file_and_file_beats_defaults() {
        let path = config(
            "precedence.toml",
            "prefix = \"filepfx\"\n[send]\nmean = \"50ms\"\nconcurrency = 8\n\
             [produce]\ncount = 5\n",
        );
        let settings = parse(&[
            "sms-alerts",
            "--config",
            &path,
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
        assert_eq!(send.delay.mean, Duration::from_millis(50), "file wins");
        assert_eq!(settings.queue.prefix, "filepfx");
        let Task::Produce(produce) = parse(&["sms-alerts", "--config", &path, "produce"])
            .expect("valid")
            .task
        else {
            panic!("not produce")
        };
        assert_eq!(produce.count, 5);
        let Task::Produce(resumed) =
            parse(&["sms-alerts", "--config", &path, "produce", "--resume", "r1"])
                .expect("a file count does not conflict with --resume")
                .task
        else {
            panic!("not produce")
        };
        assert_eq!(resumed.count, DEFAULT_COUNT);
    }

    #[test]
    fn routing_comes_from_one_flag_or_the_file() {
        let produce = |args: &[&str]| {
            let Task::Produce(produce) = parse(args).expect("valid").task else {
                panic!("not produce")
            };
            produce.routing
        };
        let path = config("routing.toml", "[produce]\nkey = \"region-7\"\n");
        assert_eq!(
            produce(&["sms-alerts", "--config", &path, "produce"]),
            Routing::Key("region-7".to_owned())
        );
        // A file's key does not conflict with --resume, which routes as recorded.
        produce(&["sms-alerts", "--config", &path, "produce", "--resume", "r1"]);
        let path = config("no-key.toml", "[produce]\nno_key = true\n");
        assert_eq!(
            produce(&["sms-alerts", "--config", &path, "produce"]),
            Routing::RoundRobin
        );
        assert_eq!(
            produce(&["sms-alerts", "produce", "--partition", "3"]),
            Routing::Partition(3)
        );
        assert_eq!(produce(&["sms-alerts", "produce"]), Routing::Recipient);
    }

    #[test]
    fn redis_url_env_ranks_below_the_flag_and_above_the_file() {
        let path = config("url.toml", "redis_url = \"redis://file:1\"\n");
        let env = Env {
            redis_url: Some("redis://env:2".to_owned()),
            redis_password: Some("s3cret".to_owned()),
            api_token: None,
        };
        let from_env = parse_from(["sms-alerts", "--config", &path, "trim"], &env).expect("ok");
        assert_eq!(from_env.queue.redis_url, "redis://env:2");
        assert_eq!(from_env.queue.password.as_deref(), Some("s3cret"));
        assert!(!format!("{from_env:?}").contains("s3cret"), "{from_env:?}");
        let typed = ["sms-alerts", "--redis-url", "redis://flag:3", "trim"];
        assert_eq!(
            parse_from(typed, &env).expect("ok").queue.redis_url,
            "redis://flag:3"
        );
        let from_file = parse(&["sms-alerts", "--config", &path, "trim"]).expect("ok");
        assert_eq!(from_file.queue.redis_url, "redis://file:1");
        assert!(from_file.redis_url_given);
    }

    #[test]
    fn file_problems_name_the_key_the_value_and_the_file() {
        let bad = config("bad.toml", "[send]\nfailure_rate = 1.5\n");
        let text = parse(&["sms-alerts", "--config", &bad, "monitor"])
            .expect_err("invalid even for another subcommand")
            .to_string();
        assert!(
            text.contains("send.failure_rate") && text.contains("1.5") && text.contains(&bad),
            "{text}"
        );
        let unknown = config("unknown.toml", "[send]\nfailure_rat = 0.2\n");
        let text = parse(&["sms-alerts", "--config", &unknown, "send"])
            .expect_err("unknown key")
            .to_string();
        assert!(
            text.contains("failure_rat") && text.contains("[send]"),
            "{text}"
        );
        let table = config("table.toml", "[sned]\nmean = \"1s\"\n");
        let text = parse(&["sms-alerts", "--config", &table, "send"])
            .expect_err("unknown table")
            .to_string();
        assert!(text.contains("[sned]"), "{text}");
        let enum_value = config("enum.toml", "[send]\ndistribution = \"pareto\"\n");
        let text = parse(&["sms-alerts", "--config", &enum_value, "send"])
            .expect_err("bad enum")
            .to_string();
        assert!(text.contains("pareto") && text.contains("normal"), "{text}");
    }

    #[test]
    fn backoff_longer_than_lease_is_refused() {
        let err = parse(&[
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
    fn tls_options_need_a_tls_url() {
        let ca = env!("CARGO_MANIFEST_PATH");
        let err = parse(&["sms-alerts", "--tls-ca-cert", ca, "trim"]).expect_err("conflict");
        assert!(err.to_string().contains("rediss://"), "{err}");
        let ok = parse(&[
            "sms-alerts",
            "--redis-url",
            "rediss://db:6380",
            "--tls-ca-cert",
            ca,
            "trim",
        ])
        .expect("valid");
        assert_eq!(
            ok.queue.tls.ca_cert.as_deref(),
            Some(std::path::Path::new(ca))
        );
    }

    #[test]
    fn help_shows_the_defaults_of_the_constants() {
        let mut command = Cli::command();
        command.build();
        let mut checked = 0;
        for sub in command.get_subcommands() {
            for arg in sub.get_arguments() {
                let Some(default) = arg.get_default_values().first() else {
                    continue;
                };
                if !arg.get_action().takes_values() {
                    continue;
                }
                let shown = format!("[default: {}]", default.to_string_lossy());
                let help = sub.clone().render_long_help().to_string();
                assert!(
                    help.contains(&shown),
                    "{} --help lacks {shown}",
                    sub.get_name()
                );
                checked += 1;
            }
        }
        assert!(checked > 20, "only {checked} defaults found");
        let mut send = command.find_subcommand("send").expect("send").clone();
        let help = send.render_long_help().to_string();
        for shown in [
            format!("[default: {}]", humantime::format_duration(DEFAULT_MEAN)),
            format!("[default: {}]", humantime::format_duration(DEFAULT_LEASE)),
        ] {
            assert!(help.contains(&shown), "send --help lacks {shown}");
        }
        let mut prune = command
            .find_subcommand("senders")
            .and_then(|s| s.find_subcommand("prune"))
            .expect("senders prune")
            .clone();
        let shown = format!(
            "[default: {}]",
            humantime::format_duration(DEFAULT_PRUNE_IDLE)
        );
        assert!(prune.render_long_help().to_string().contains(&shown));
    }

    #[test]
    fn demo_comes_first_in_help() {
        let command = Cli::command();
        let first = command.get_subcommands().next().expect("subcommands");
        assert_eq!(first.get_name(), "demo");
    }

    #[test]
    fn usage_errors_fold_into_one_line() {
        let err = Cli::command()
            .try_get_matches_from(["sms-alerts", "send", "--distribution", "pareto"])
            .expect_err("invalid");
        let line = one_line_error(&err.render().to_string());
        assert_eq!(
            line,
            "error: invalid value 'pareto' for '--distribution <DISTRIBUTION>' \
             [possible values: normal, exponential, uniform, constant]"
        );
    }
}
