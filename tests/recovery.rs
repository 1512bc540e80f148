//! Crashes and restarts: a killed sender's work is resumed under its name or
//! reclaimed by others after the lease; a live sender's work is not stolen;
//! graceful shutdown; one live process per name; Redis restarting under load.

mod common;

use std::time::Duration;

use common::*;
use sms_alerts::stats::Snapshot;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_sender_restarted_under_its_name_resumes_its_work() {
    let redis = start_redis().await;
    let prefix = unique_prefix("resume");
    let store = store(&redis.url, &prefix).await;
    produce_n(&store, 21, 400).await;
    let args = [
        "--mean",
        "300ms",
        "--concurrency",
        "100",
        "--lease",
        "2s",
        "--seed",
        "1",
    ];

    let mut first = spawn_sender_process(&redis.url, &prefix, "alpha", &args);
    wait_until(
        "alpha holds work and has sent some",
        Duration::from_secs(30),
        || async {
            let snapshot = Snapshot::read(&store).await.expect("snapshot");
            snapshot.sent > 0 && pending_of(&redis.url, &store, "alpha").await >= 50
        },
    )
    .await;
    first.kill().expect("SIGKILL");
    first.wait().expect("reaped");
    let left = pending_of(&redis.url, &store, "alpha").await;
    assert!(
        left >= 50,
        "the killed sender left its work pending ({left})"
    );

    // Restarted at once under the same name: it waits for the dead process's
    // name lease, then finishes that work first.
    let mut second = spawn_sender_process(&redis.url, &prefix, "alpha", &args);
    wait_until("everything is settled", Duration::from_secs(60), || {
        all_settled(&store, 400)
    })
    .await;
    terminate(&second);
    let status = wait_exit(&mut second, Duration::from_secs(15)).await;
    assert!(status.success(), "graceful exit, got {status:?}");

    let scan = scan(&redis.url, &store).await;
    assert_eq!(scan.pending, 0);
    assert_eq!(scan.stat("sent") + scan.stat("dead"), 400, "nothing lost");
    assert_eq!(
        scan.stat("duplicates"),
        0,
        "killed work was never acknowledged, so nothing is a duplicate"
    );
    let mut conn = raw(&redis.url).await;
    let consumers: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(store.keys().messages())
        .arg(store.group())
        .query_async(&mut conn)
        .await
        .expect("XINFO CONSUMERS");
    assert_eq!(
        consumers.len(),
        1,
        "only 'alpha' ever worked: the restart resumed its own work"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_sender_reclaims_a_dead_senders_messages_after_the_lease() {
    let redis = start_redis().await;
    let prefix = unique_prefix("reclaim");
    let store = store(&redis.url, &prefix).await;
    produce_n(&store, 21, 60).await;

    let args = [
        "--mean",
        "60s",
        "--distribution",
        "constant",
        "--concurrency",
        "30",
        "--lease",
        "1s",
    ];
    let mut doomed = spawn_sender_process(&redis.url, &prefix, "doomed", &args);
    wait_until(
        "doomed holds 30 messages",
        Duration::from_secs(30),
        || async { pending_of(&redis.url, &store, "doomed").await == 30 },
    )
    .await;
    doomed.kill().expect("SIGKILL");
    doomed.wait().expect("reaped");

    let mut rescuer = send_settings("rescuer", 1, 0.0);
    rescuer.lease = Duration::from_secs(1);
    let killed_at = std::time::Instant::now();
    let rescuer = RunningSender::start(&store, rescuer);
    wait_until("everything is settled", Duration::from_secs(30), || {
        all_settled(&store, 60)
    })
    .await;
    let took = killed_at.elapsed();
    println!(
        "reclaim: a dead sender's 30 messages were all settled {:.2}s after the kill (lease 1s)",
        took.as_secs_f64()
    );
    let summary = rescuer.stop().await;

    assert_eq!(
        summary.dispatched.reclaimed, 30,
        "the dead sender's 30 were reclaimed: {summary:?}"
    );
    assert_eq!(summary.flushed.sent, 60);
    assert_eq!(pending_of(&redis.url, &store, "doomed").await, 0);
    assert!(
        took < Duration::from_secs(10),
        "recovered within a few leases, took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_sender_keeps_its_slow_sends_by_renewing_their_lease() {
    let redis = start_redis().await;
    let store = store(&redis.url, &unique_prefix("renew")).await;
    produce_n(&store, 21, 10).await;

    // Sends take 3 leases; a second, idle sender must not steal them.
    let mut slow = send_settings("slow", 3_000, 0.0);
    slow.delay.distribution = sms_alerts::settings::Distribution::Constant;
    slow.lease = Duration::from_secs(1);
    let slow = RunningSender::start(&store, slow);
    wait_until("slow holds all 10", Duration::from_secs(10), || async {
        pending_of(&redis.url, &store, "slow").await == 10
    })
    .await;
    let mut thief = send_settings("thief", 1, 0.0);
    thief.lease = Duration::from_secs(1);
    let thief = RunningSender::start(&store, thief);
    wait_until("all 10 are sent", Duration::from_secs(20), || {
        all_settled(&store, 10)
    })
    .await;
    let thief = thief.stop().await;
    let slow = slow.stop().await;

    assert_eq!(
        thief.dispatched.reclaimed, 0,
        "live work was not reclaimed: {thief:?}"
    );
    assert_eq!(slow.flushed.sent, 10);
    assert_eq!(
        Snapshot::read(&store).await.expect("snapshot").duplicates,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_sends_and_leaves_nothing_unaccounted() {
    let redis = start_redis().await;
    let prefix = unique_prefix("sigterm");
    let store = store(&redis.url, &prefix).await;
    produce_n(&store, 21, 1_000).await;
    let mut child = spawn_sender_process(
        &redis.url,
        &prefix,
        "graceful",
        &[
            "--mean",
            "400ms",
            "--concurrency",
            "200",
            "--failure-rate",
            "0",
        ],
    );
    wait_until(
        "at least 150 sends in flight",
        Duration::from_secs(30),
        || async { pending_of(&redis.url, &store, "graceful").await >= 150 },
    )
    .await;
    terminate(&child);
    let status = wait_exit(&mut child, Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "graceful shutdown exits 0");

    let scan = scan(&redis.url, &store).await;
    let snapshot = Snapshot::read(&store).await.expect("snapshot");
    assert_eq!(scan.pending, 0, "in-flight sends finished and were written");
    assert!(
        scan.stat("sent") >= 150,
        "the in-flight sends completed: {}",
        scan.stat("sent")
    );
    let unread = snapshot.lag.expect("lag is known");
    assert_eq!(
        scan.stat("sent") + unread,
        1_000,
        "sent + never read = produced"
    );

    let report = sms_alerts::audit::run(&store, 1_000).await.expect("audit");
    assert!(report.is_consistent(), "{}", report.to_text());

    // Nothing was lost: a new sender finishes the rest.
    let rest = RunningSender::start(&store, send_settings("finisher", 1, 0.0));
    wait_until("everything is settled", Duration::from_secs(30), || {
        all_settled(&store, 1_000)
    })
    .await;
    rest.stop().await;
    let report = sms_alerts::audit::run(&store, 1_000).await.expect("audit");
    assert!(
        report.is_consistent() && report.acknowledged == 1_000,
        "{}",
        report.to_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_with_130() {
    let redis = start_redis().await;
    let prefix = unique_prefix("sigtwice");
    let store = store(&redis.url, &prefix).await;
    produce_n(&store, 21, 10).await;
    let mut child = spawn_sender_process(
        &redis.url,
        &prefix,
        "stubborn",
        &["--mean", "60s", "--distribution", "constant"],
    );
    wait_until("10 sends in flight", Duration::from_secs(30), || async {
        pending_of(&redis.url, &store, "stubborn").await == 10
    })
    .await;
    terminate(&child);
    tokio::time::sleep(Duration::from_millis(200)).await;
    terminate(&child);
    let status = wait_exit(&mut child, Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(130));
    assert_eq!(
        pending_of(&redis.url, &store, "stubborn").await,
        10,
        "unfinished work stays pending"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_held_by_a_live_process_is_refused() {
    let redis = start_redis().await;
    let prefix = unique_prefix("names");
    let store = store(&redis.url, &prefix).await;
    let live = RunningSender::start(&store, send_settings("taken", 1, 0.0));
    wait_until("the name is held", Duration::from_secs(10), || {
        name_is_held(&store, "taken")
    })
    .await;
    let output = bin()
        .args([
            "--redis-url",
            &redis.url,
            "--prefix",
            &prefix,
            "send",
            "--name",
            "taken",
            "--lease",
            "2s",
        ])
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("'taken' is in use by another live process"),
        "stderr: {stderr}"
    );
    live.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_whose_name_is_taken_over_stops_with_an_error() {
    let redis = start_redis().await;
    let store = store(&redis.url, &unique_prefix("takeover")).await;
    let mut settings = send_settings("paused", 1, 0.0);
    settings.lease = std::time::Duration::from_millis(600);
    let sender = RunningSender::start(&store, settings);
    let lease_key = store.keys().sender_lease("paused");
    wait_until("the name is held", Duration::from_secs(10), || {
        name_is_held(&store, "paused")
    })
    .await;
    // What another process does once this one's lease has run out.
    let mut conn = raw(&redis.url).await;
    let _: () = redis::cmd("SET")
        .arg(&lease_key)
        .arg("someone-else")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut conn)
        .await
        .expect("SET");
    let result = sender.join(Duration::from_secs(10)).await;
    assert!(
        matches!(result, Err(sms_alerts::send::SendError::NameLost { ref name }) if name == "paused"),
        "{result:?}"
    );
}
