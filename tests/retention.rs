//! Retention: settled entries and dead letters leave Redis once older than
//! the queue's retention, never one a consumer group still needs (pending,
//! or not yet delivered); what was trimmed is counted and the audit balances
//! with it; a group that stops consuming holds trimming back and the monitor
//! says so.

mod common;

use std::time::Duration;

use common::*;
use sms_alerts::audit;
use sms_alerts::stats::Snapshot;
use sms_alerts::store::{QueueOptions, Retention, Store};

fn keep(retention: Duration) -> QueueOptions {
    QueueOptions {
        retention: Some(Retention::Keep(retention)),
        ..QueueOptions::default()
    }
}

async fn consistent(store: &Store) -> audit::AuditReport {
    let report = audit::run(store, 1_000).await.expect("audit");
    assert!(report.is_consistent(), "{}", report.to_text());
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settled_entries_are_trimmed_as_soon_as_retention_allows() {
    let redis = start_redis().await;
    let store = store_with(&redis.url, &unique_prefix("zero"), &keep(Duration::ZERO)).await;
    produce_n(&store, 1, 5_000).await;
    let sender = RunningSender::start(&store, send_settings("s", 0, 0.0));
    wait_until("all sent and trimmed", Duration::from_secs(30), || async {
        Snapshot::read(&store)
            .await
            .is_ok_and(|s| s.sent == 5_000 && s.stream_length < 200)
    })
    .await;
    sender.stop().await;
    let s = Snapshot::read(&store).await.expect("snapshot");
    assert_eq!(
        s.trimmed + s.stream_length,
        5_000,
        "every entry is in the stream or counted as trimmed"
    );
    let report = consistent(&store).await;
    assert_eq!(report.counters.trimmed, s.trimmed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_younger_than_the_retention_is_trimmed() {
    let redis = start_redis().await;
    let prefix = unique_prefix("hour");
    let store = store(&redis.url, &prefix).await;
    produce_n(&store, 2, 3_000).await;
    let sender = RunningSender::start(&store, send_settings("s", 0, 0.0));
    wait_until("all sent", Duration::from_secs(30), || {
        all_settled(&store, 3_000)
    })
    .await;
    sender.stop().await;
    let trim = bin()
        .args(["--redis-url", &redis.url, "--prefix", &prefix, "trim"])
        .output()
        .expect("trim runs");
    assert_eq!(trim.status.code(), Some(0), "{trim:?}");
    assert_eq!(
        String::from_utf8_lossy(&trim.stdout).trim(),
        "trimmed 0 settled entries and 0 dead letters"
    );
    assert_eq!(
        stream_length(&redis.url, &store.keys().messages()).await,
        3_000
    );
}

/// The ids of the stream's entries, oldest first.
async fn stream_ids(url: &str, store: &Store) -> Vec<String> {
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(store.keys().messages())
        .arg("-")
        .arg("+")
        .query_async(&mut raw(url).await)
        .await
        .expect("XRANGE");
    entries.into_iter().map(|(id, _)| id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_and_undelivered_entries_are_never_trimmed() {
    let redis = start_redis().await;
    let prefix = unique_prefix("keep");
    let store = store_with(&redis.url, &prefix, &keep(Duration::ZERO)).await;
    // 2,000 settled, then a sender dies holding messages (they stay
    // pending), then 2,000 more arrive that nobody reads.
    produce_n(&store, 3, 2_000).await;
    let sender = RunningSender::start(&store, send_settings("first", 0, 0.0));
    wait_until("the first 2,000 sent", Duration::from_secs(30), || {
        all_settled(&store, 2_000)
    })
    .await;
    sender.stop().await;
    let settled_ids = stream_ids(&redis.url, &store).await;
    produce_n(&store, 4, 2_000).await;
    let mut doomed = spawn_sender_process(
        &redis.url,
        &prefix,
        "doomed",
        &["--mean", "60s", "--concurrency", "300"],
    );
    wait_until("doomed holds messages", Duration::from_secs(30), || async {
        pending_of(&redis.url, &store, "doomed").await >= 300
    })
    .await;
    doomed.kill().expect("SIGKILL");
    doomed.wait().expect("reaped");
    produce_n(&store, 5, 2_000).await;
    // A second group, created in the middle of the last 2,000, never reads.
    let kept_ids: Vec<String> = stream_ids(&redis.url, &store)
        .await
        .into_iter()
        .filter(|id| !settled_ids.contains(id))
        .collect();
    assert_eq!(kept_ids.len(), 4_000);
    let mut conn = raw(&redis.url).await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(store.keys().messages())
        .arg("late")
        .arg(&kept_ids[3_000])
        .query_async(&mut conn)
        .await
        .expect("a second group");

    let trim = bin()
        .args([
            "--redis-url",
            &redis.url,
            "--prefix",
            &prefix,
            "trim",
            "--json",
        ])
        .output()
        .expect("trim runs");
    let printed: serde_json::Value =
        serde_json::from_slice(&trim.stdout).expect("trim prints JSON");
    let left = stream_ids(&redis.url, &store).await;
    let s = Snapshot::read(&store).await.expect("snapshot");
    assert!(
        printed["trimmed"].is_u64() && printed["dead_trimmed"].is_u64(),
        "trim prints what it removed: {printed}"
    );
    assert!(
        s.trimmed >= 1_900,
        "the settled entries below the pending ones are trimmed (whole nodes, by the senders \
         in passing and by `trim`): {}",
        s.trimmed
    );
    let missing: Vec<&String> = kept_ids.iter().filter(|id| !left.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "pending and undelivered entries were trimmed: {} of {}, first {:?}",
        missing.len(),
        kept_ids.len(),
        missing.first()
    );
    assert_eq!(
        left.len() as u64 + s.trimmed,
        6_000,
        "what is left is every entry not trimmed"
    );

    // Drained by a live sender, everything is settled and the books balance.
    let _: () = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(store.keys().messages())
        .arg("late")
        .query_async(&mut conn)
        .await
        .expect("destroy the second group");
    let sender = RunningSender::start(&store, {
        let mut settings = send_settings("finisher", 0, 0.0);
        settings.lease = Duration::from_millis(500);
        settings
    });
    wait_until("all sent", Duration::from_secs(30), || {
        all_settled(&store, 6_000)
    })
    .await;
    sender.stop().await;
    consistent(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_moved_back_keeps_what_it_will_deliver_again() {
    let redis = start_redis().await;
    let store = store_with(&redis.url, &unique_prefix("setid"), &keep(Duration::ZERO)).await;
    produce_n(&store, 6, 300).await;
    let read = read_as(&redis.url, &store, "c1", 300).await;
    let mut conn = raw(&redis.url).await;
    let items: Vec<sms_alerts::store::ReportItem> = read[..250]
        .iter()
        .map(|id| sms_alerts::store::ReportItem {
            id: id.clone(),
            outcome: sms_alerts::store::Outcome::Sent,
            send_time_us: 10,
        })
        .collect();
    store
        .sender()
        .report("c1", 3, Duration::ZERO, "t", 1, &items)
        .await
        .expect("250 sent, 50 pending");
    // The group is moved back to the start: it delivers all 300 again.
    let _: () = redis::cmd("XGROUP")
        .arg("SETID")
        .arg(store.keys().messages())
        .arg(store.group())
        .arg("0")
        .query_async(&mut conn)
        .await
        .expect("SETID");
    let trimmed = store.sender().trim().await.expect("trim").entries;
    assert_eq!(
        trimmed, 0,
        "nothing the group will deliver again is trimmed"
    );
    assert_eq!(stream_ids(&redis.url, &store).await.len(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_that_stops_consuming_holds_trimming_back_and_is_named() {
    let redis = start_redis().await;
    let prefix = unique_prefix("held");
    let store = store_with(&redis.url, &prefix, &keep(Duration::ZERO)).await;
    produce_n(&store, 5, 1_000).await;
    let mut conn = raw(&redis.url).await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(store.keys().messages())
        .arg("analytics")
        .arg("0")
        .query_async(&mut conn)
        .await
        .expect("a foreign group");
    let sender = RunningSender::start(&store, send_settings("s", 0, 0.0));
    wait_until("all sent", Duration::from_secs(30), || {
        all_settled(&store, 1_000)
    })
    .await;
    sender.stop().await;
    assert_eq!(
        store.sender().trim().await.expect("trim").entries,
        0,
        "analytics needs them all"
    );
    assert_eq!(
        stream_length(&redis.url, &store.keys().messages()).await,
        1_000
    );

    let monitor = bin()
        .args([
            "--redis-url",
            &redis.url,
            "--prefix",
            &prefix,
            "monitor",
            "--until-done",
            "--interval",
            "100ms",
            "--alert-held-back",
            "0s",
        ])
        .output()
        .expect("monitor runs");
    let out = String::from_utf8_lossy(&monitor.stdout);
    assert_eq!(monitor.status.code(), Some(0), "{out}");
    assert!(
        out.contains(
            "ALERT group 'analytics' holds trimming back: the oldest entry it still needs is"
        ) && out.contains("(retention 0s); 1000 entries are kept"),
        "{out}"
    );
    // Our own group, caught up, holds nothing back however old its last entry.
    assert!(!out.contains("group 'senders'"), "{out}");

    let _: () = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(store.keys().messages())
        .arg("analytics")
        .query_async(&mut conn)
        .await
        .expect("destroy the foreign group");
    let trimmed = store.sender().trim().await.expect("trim").entries;
    assert!(trimmed >= 900, "trimmed once the group is gone: {trimmed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_dead_letters_are_trimmed_and_counted() {
    let redis = start_redis().await;
    let store = store_with(
        &redis.url,
        &unique_prefix("dead"),
        &QueueOptions {
            dead_retention: Some(Retention::Keep(Duration::ZERO)),
            ..QueueOptions::default()
        },
    )
    .await;
    produce_n(&store, 6, 600).await;
    let sender = RunningSender::start(&store, {
        let mut settings = send_settings("s", 0, 1.0);
        settings.max_attempts = 1;
        settings
    });
    wait_until("all dead and trimmed", Duration::from_secs(30), || async {
        Snapshot::read(&store)
            .await
            .is_ok_and(|s| s.dead == 600 && s.dead_trimmed >= 500)
    })
    .await;
    sender.stop().await;
    let s = Snapshot::read(&store).await.expect("snapshot");
    assert_eq!(s.dead_length + s.dead_trimmed, s.dead);
    assert_eq!(s.trimmed, 0, "settled entries are kept an hour");
    consistent(&store).await;
}
