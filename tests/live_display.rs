//! The monitor's live display, tested in a real terminal (tmux): progress bar
//! with ETA, status line with percentiles, per-sender table, alerts.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn tmux(args: &[&str]) -> String {
    let output = Command::new("tmux")
        .args(args)
        .output()
        .expect("tmux runs (installed by .ci/test)");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_terminal_shows_a_progress_bar_a_sender_table_and_alerts() {
    let redis = start_redis().await;
    let prefix = unique_prefix("live");
    let store = store(&redis.url, &prefix).await;
    produce_n(&store, 8, 3_000).await;
    let mut flaky = send_settings("alpha", 20, 0.4);
    flaky.concurrency = 20;
    let flaky = RunningSender::start(&store, flaky);
    let mut steady = send_settings("bravo", 40, 0.0);
    steady.concurrency = 20;
    let steady = RunningSender::start(&store, steady);

    let session = format!("sms-live-{}", std::process::id());
    let command = format!(
        "RUST_LOG=warn {} --redis-url {} --prefix {prefix} monitor --interval 300ms --alert-failure-rate 0.2; sleep 60",
        env!("CARGO_BIN_EXE_sms-alerts"),
        redis.url
    );
    tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "160",
        "-y",
        "24",
        &command,
    ]);
    let mut screen = String::new();
    wait_until(
        "the live display shows everything",
        Duration::from_secs(30),
        || {
            screen = tmux(&["capture-pane", "-p", "-t", &session]);
            let ready = screen.contains("settled (")
                && screen.contains("ETA")
                && screen.contains("p50/p95/p99")
                && screen.contains("oldest queued")
                && screen.contains("live senders 2")
                && screen.contains("dead: deleted 0, expired 0, malformed 0, max_attempts")
                && screen.lines().any(|l| l.trim_start().starts_with("alpha"))
                && screen.lines().any(|l| l.trim_start().starts_with("bravo"))
                && screen.contains("ALERT failure rate");
            async move { ready }
        },
    )
    .await;
    tmux(&["kill-session", "-t", &session]);
    flaky.stop().await;
    steady.stop().await;
    assert!(
        screen.contains("sender") && screen.contains("pending"),
        "table header:\n{screen}"
    );
    let bar = screen
        .lines()
        .find(|l| l.contains("settled ("))
        .expect("a progress line");
    assert!(
        bar.contains("/3000 settled"),
        "the bar counts against what was produced:\n{screen}"
    );
}
