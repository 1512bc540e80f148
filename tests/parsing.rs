//! What the command line, a password file, a config file and a demo
//! scenario resolve to, and how each kind of bad input is refused: through
//! the library's parser, without Redis or a process.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sms_alerts::cli::{CliError, Env, parse_from};
use sms_alerts::embedded::Persistence;
use sms_alerts::settings::{BenchSizes, DEFAULT_DEMO_INTERVAL, DeadTask, Settings, Task};

fn parse(args: &[&str]) -> Result<Settings, CliError> {
    parse_from(
        std::iter::once("sms-alerts").chain(args.iter().copied()),
        &Env::default(),
    )
}

fn task(args: &[&str]) -> Task {
    parse(args)
        .unwrap_or_else(|err| panic!("{args:?} is valid, got: {err}"))
        .task
}

/// The error `args` are refused with, as the user reads it.
fn refusal(args: &[&str]) -> String {
    match parse(args) {
        Ok(settings) => panic!("{args:?} should be refused, got {settings:?}"),
        Err(err) => err.to_string(),
    }
}

/// A file of its own under the test's target directory.
fn file(name: &str, text: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "parsing-{}-{}-{name}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, text).expect("test file written");
    path.to_str().expect("utf-8 path").to_owned()
}

#[test]
fn the_bench_defaults_are_its_sizes_defaults_and_persistence_needs_a_private_redis() {
    assert_eq!(
        task(&["bench"]),
        Task::Bench(BenchSizes::default(), Persistence::Aof)
    );
    assert_eq!(
        task(&["bench", "--persistence", "none", "--messages", "10"]),
        Task::Bench(
            BenchSizes {
                messages: 10,
                ..BenchSizes::default()
            },
            Persistence::None
        )
    );
    let text = refusal(&[
        "--redis-url",
        "redis://db:6379",
        "bench",
        "--persistence",
        "none",
    ]);
    assert!(
        text.contains("--persistence") && text.contains("--redis-url"),
        "{text}"
    );
}

#[test]
fn the_password_file_loses_its_line_break_and_a_missing_one_is_named() {
    let path = file("password", "s3cret pass\r\n");
    let settings = parse(&["--redis-password-file", &path, "trim"]).expect("valid");
    assert_eq!(settings.queue.password.as_deref(), Some("s3cret pass"));
    let missing = format!("{path}.missing");
    let text = refusal(&["--redis-password-file", &missing, "trim"]);
    assert!(
        text.contains("--redis-password-file") && text.contains(&missing),
        "{text}"
    );
}

#[test]
fn every_subcommand_resolves_to_its_task() {
    assert_eq!(
        task(&["dead", "requeue", "--id", "1-1", "2-0"]),
        Task::Dead(DeadTask::Requeue {
            reason: None,
            ids: vec!["1-1".to_owned(), "2-0".to_owned()],
        })
    );
    assert_eq!(
        task(&["dead", "purge", "--older-than", "2h"]),
        Task::Dead(DeadTask::Purge {
            older_than: Duration::from_secs(7200),
        })
    );
    assert_eq!(
        task(&["senders", "prune", "--idle", "90s"]),
        Task::PruneSenders {
            json: false,
            idle: Duration::from_secs(90),
        }
    );
    assert_eq!(
        task(&["senders", "--json"]),
        Task::ListSenders { json: true }
    );
    assert_eq!(
        task(&["acl", "--user", "alerts"]),
        Task::Acl {
            user: "alerts".to_owned()
        }
    );
    assert_eq!(
        task(&["repair", "--group-start", "5-0", "--yes"]),
        Task::Repair {
            yes: true,
            group_start: "5-0".to_owned(),
        }
    );
}

#[test]
fn config_values_of_the_wrong_shape_name_key_value_and_file() {
    for (text, key, value, reason) in [
        (
            "[audit]\njson = \"yes\"\n",
            "audit.json",
            "\"yes\"",
            "expected true or false",
        ),
        (
            "[produce]\ncount = [1, 2]\n",
            "produce.count",
            "[1, 2]",
            "expected a single value",
        ),
        ("[produce]\ncount = true\n", "produce.count", "true", ""),
        ("[produce]\ncount = 2.5\n", "produce.count", "2.5", ""),
    ] {
        let path = file("shape.toml", text);
        let err = refusal(&["--config", &path, "produce"]);
        for part in [key, value, reason, path.as_str()] {
            assert!(err.contains(part), "{text:?}: '{part}' missing from: {err}");
        }
    }
    let path = file("flags.toml", "[audit]\njson = true\npage = 50\n");
    assert_eq!(
        task(&["--config", &path, "audit"]),
        Task::Audit {
            json: true,
            page: 50
        }
    );
    let path = file("syntax.toml", "prefix = \"a\"\n[send\nmean = 1\n");
    let err = refusal(&["--config", &path, "trim"]);
    assert!(err.contains("line 2") && err.contains(&path), "{err}");
}

const SENDER: &str = "[[senders]]\nname = \"one\"\nmean = \"1ms\"\n";

fn demo(scenario: &str, flags: &[&str]) -> Result<Settings, CliError> {
    let path = file("scenario.toml", scenario);
    let mut args = vec!["demo", "--scenario", path.as_str()];
    args.extend_from_slice(flags);
    parse(&args)
}

fn demo_interval(scenario: &str, flags: &[&str]) -> Duration {
    match demo(scenario, flags).map(|s| s.task) {
        Ok(Task::Demo(demo)) => demo.monitor.interval,
        other => panic!("not a demo: {other:?}"),
    }
}

#[test]
fn the_demo_interval_comes_from_the_flag_then_the_scenario_then_the_demo_default() {
    assert_eq!(demo_interval(SENDER, &[]), DEFAULT_DEMO_INTERVAL);
    let with_monitor = format!("{SENDER}[monitor]\ninterval = \"250ms\"\n");
    assert_eq!(
        demo_interval(&with_monitor, &[]),
        Duration::from_millis(250)
    );
    assert_eq!(
        demo_interval(&with_monitor, &["--interval", "2s"]),
        Duration::from_secs(2)
    );
}

#[test]
fn unusable_scenarios_are_refused_saying_why() {
    for (scenario, expected) in [
        (
            format!("colour = \"red\"\n{SENDER}"),
            "unknown or mistyped key 'colour'",
        ),
        (
            "description = \"nobody sends\"\n".to_owned(),
            "the scenario has no [[senders]]",
        ),
        (
            "senders = [1, 2]\n".to_owned(),
            "[[senders]] must be tables",
        ),
        (
            format!("{SENDER}{SENDER}"),
            "two senders in the scenario are named 'one'",
        ),
        (
            format!("{SENDER}failure_rate = 2.0\n"),
            "senders[1].failure_rate",
        ),
    ] {
        let err = demo(&scenario, &[])
            .map(|s| s.task)
            .expect_err("refused")
            .to_string();
        assert!(
            err.contains(expected),
            "{scenario:?}: expected '{expected}' in: {err}"
        );
    }
    let missing = format!("{}.missing", file("gone.toml", ""));
    let err = refusal(&["demo", "--scenario", &missing]);
    assert!(err.contains(&missing), "{err}");
}

#[test]
fn partitions_and_clusters_take_sensible_sizes_only() {
    for (args, named) in [
        (&["migrate", "--partitions", "0"][..], "partition count"),
        (&["migrate", "--partitions", "5000"][..], "1024"),
        (&["demo", "--cluster", "2"][..], "3 to 16"),
        (
            &["bench", "--partitions", "3", "--cluster", "40"][..],
            "3 to 16",
        ),
        (&["bench", "--cluster", "3"][..], "--partitions"),
        (&["send", "--read-partitions", "1,1"][..], "listed twice"),
        (
            &["send", "--read-partitions", "1,x"][..],
            "partition number",
        ),
    ] {
        let text = refusal(args);
        assert!(text.contains(named), "{args:?}: {text}");
    }
    assert_eq!(
        task(&["bench", "--partitions", "6", "--messages", "10"]),
        Task::Bench(
            BenchSizes {
                messages: 10,
                partitions: Some(6),
                cluster: 3,
                ..BenchSizes::default()
            },
            Persistence::Aof
        )
    );
    match task(&["send", "--read-partitions", "0,2,4"]) {
        Task::Send(send) => assert_eq!(send.partitions, Some(vec![0, 2, 4])),
        other => panic!("{other:?}"),
    }
    let scenario = file("cluster.toml", "cluster = 1\n[[senders]]\nname = \"a\"\n");
    let text = refusal(&["demo", "--scenario", &scenario]);
    assert!(text.contains("cluster = 1"), "{text}");
}
