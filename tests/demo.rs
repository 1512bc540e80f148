//! The demo: a whole run in one process, on a given Redis or on a private one.

mod common;

use std::time::Duration;

use common::*;
use sms_alerts::demo;
use sms_alerts::settings::{DEFAULT_SCENARIO, DemoSettings};
use tokio_util::sync::CancellationToken;

fn scenario_file(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, text).expect("scenario written");
    path
}

const SMALL: &str = r#"
description = "a small test run"
[produce]
count = 300
seed = 4
[[senders]]
name = "quick"
mean = "2ms"
failure_rate = 0.2
retry_backoff = "50ms"
[[senders]]
name = "slower"
mean = "5ms"
distribution = "exponential"
[monitor]
interval = "100ms"
"#;

fn settings_from(text: &str) -> DemoSettings {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = scenario_file(&format!("scenario-{}-{n}.toml", std::process::id()), text);
    let args = [
        "sms-alerts",
        "demo",
        "--scenario",
        path.to_str().expect("utf-8"),
    ];
    match sms_alerts::cli::parse_from(args, &sms_alerts::cli::Env::default())
        .expect("valid")
        .task
    {
        sms_alerts::settings::Task::Demo(demo) => demo,
        other => panic!("not a demo: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scenario_runs_to_the_end_and_the_audit_agrees() {
    let redis = start_redis().await;
    let store = store(&redis.url, &unique_prefix("demo")).await;
    let settings = settings_from(SMALL);
    let mut output = Vec::new();
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        demo::run(
            &store,
            &settings,
            sms_alerts::monitor::Sink::Writer(&mut output),
            &CancellationToken::new(),
        ),
    )
    .await
    .expect("the demo finishes within 60s")
    .expect("the demo runs");
    assert!(report.finished);
    assert!(report.audit.is_consistent(), "{}", report.to_text());
    assert_eq!(report.audit.counters.sent + report.audit.counters.dead, 300);
    let names: Vec<&str> = report.senders.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["quick", "slower"]);
    let text = report.to_text();
    assert!(
        text.contains("finished in") && text.contains("audit: consistent"),
        "{text}"
    );
    let progress = String::from_utf8(output).expect("utf-8");
    assert!(
        progress.contains("scenario: a small test run") && progress.contains("| done"),
        "{progress}"
    );
}

#[test]
fn the_shipped_scenarios_are_valid() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/scenarios");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("config/scenarios") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("readable");
        let settings = settings_from(&text);
        assert!(!settings.senders.is_empty(), "{path:?}");
        names.push(
            path.file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned(),
        );
    }
    names.sort();
    assert_eq!(
        names,
        [
            "cluster.toml",
            "default.toml",
            "emergency-burst.toml",
            "emergency.toml",
            "flaky-gateway.toml"
        ]
    );
    assert_eq!(settings_from(DEFAULT_SCENARIO).produce.count, 1_000);
    assert_eq!(
        settings_from(&std::fs::read_to_string(dir.join("emergency-burst.toml")).expect("burst"))
            .produce
            .count,
        1_000_000
    );
}

/// Runs the binary with `args`; its output, once it succeeded.
fn run_ok(args: &[&std::ffi::OsStr]) -> String {
    let output = bin().args(args).output().expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    stdout
}

#[test]
fn the_binary_runs_demos_on_a_private_redis_and_cluster_and_removes_them() {
    let stdout = run_ok(&["demo".as_ref(), "--interval".as_ref(), "200ms".as_ref()]);
    assert!(stdout.contains("produced 1000 messages"), "{stdout}");
    assert!(stdout.contains("audit: consistent"), "{stdout}");
    for sender in ["fast", "slow", "flaky"] {
        assert!(
            stdout.lines().any(|l| l.starts_with(sender)),
            "{sender} in the report: {stdout}"
        );
    }
    // On a private cluster of three primaries, over four partitions.
    let scenario = scenario_file(
        &format!("cluster-{}.toml", std::process::id()),
        &format!("partitions = 4\n{SMALL}"),
    );
    let stdout = run_ok(&[
        "demo".as_ref(),
        "--cluster".as_ref(),
        "3".as_ref(),
        "--scenario".as_ref(),
        scenario.as_os_str(),
    ]);
    assert!(stdout.contains("in 4 partitions"), "{stdout}");
    assert!(stdout.contains("audit: consistent"), "{stdout}");
    let leftovers = std::process::Command::new("pgrep")
        .args(["-f", "sms-alerts-redis-"])
        .output()
        .expect("pgrep");
    assert!(
        leftovers.stdout.is_empty(),
        "a private redis-server was left running"
    );
}

#[test]
fn without_redis_server_the_demo_says_what_to_install() {
    let empty = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("empty-path");
    std::fs::create_dir_all(&empty).expect("dir");
    let output = bin()
        .args(["demo"])
        .env("PATH", &empty)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("redis-server is not installed")
            && stderr.contains("apt-get install redis-server"),
        "{stderr}"
    );
}

#[test]
fn a_scenario_with_duplicate_sender_names_is_a_usage_error() {
    let path = scenario_file(
        "dup-names.toml",
        "[[senders]]\nname = \"a\"\n[[senders]]\nname = \"a\"\n",
    );
    let output = bin()
        .args(["demo", "--scenario", path.to_str().expect("utf-8")])
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("'a'"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_redis_url_the_demo_uses_that_redis() {
    let redis = start_redis().await;
    let prefix = unique_prefix("demo-url");
    let path = scenario_file(&format!("{prefix}.toml"), SMALL);
    let output = bin()
        .args([
            "--redis-url",
            &redis.url,
            "--prefix",
            &prefix,
            "demo",
            "--scenario",
        ])
        .arg(&path)
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("audit: consistent"), "{stdout}");
    let store = store(&redis.url, &prefix).await;
    let snapshot = sms_alerts::stats::Snapshot::read(&store)
        .await
        .expect("snapshot");
    assert_eq!(
        snapshot.produced, 300,
        "the run happened in the given Redis"
    );
    assert_eq!(snapshot.sent + snapshot.dead, 300);
}
