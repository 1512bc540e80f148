//! The reclaim scan is bounded: one claim call looks at no more
//! than 1,000 rows of the pending list and claims no more than 200 entries,
//! whatever the list's length, and returns a cursor; walking it finds stale
//! work however deep in the list it lies. (The Redis time of a call over
//! 2,000,000 pending is measured by `sms-alerts bench`.)

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_call_scans_a_bounded_slice_and_the_cursor_finds_stale_work_deep_down() {
    let redis = start_redis().await;
    let store = store(&redis.url, &unique_prefix("slice")).await;
    produce_n(&store, 21, 5_000).await;
    let held = read_as(&redis.url, &store, "holder", 5_000).await;
    // The last 100 are stale (idle an hour); the 4,900 before them are live.
    let stale = &held[4_900..];
    let mut claim = redis::cmd("XCLAIM");
    claim
        .arg(store.keys().messages())
        .arg(store.group())
        .arg("holder")
        .arg(0)
        .arg(stale)
        .arg("IDLE")
        .arg(3_600_000)
        .arg("JUSTID");
    claim
        .query_async::<redis::Value>(&mut raw(&redis.url).await)
        .await
        .expect("make them stale");

    let lease = Duration::from_secs(60);
    let first = store
        .sender()
        .claim("taker", lease, None, 1_000, 3, None)
        .await
        .expect("claim");
    assert!(first.claimed.is_empty(), "nothing stale in the first slice");
    assert_eq!(
        first.cursor.as_deref(),
        Some(format!("({}", held[999]).as_str()),
        "the first call looked at exactly the first 1,000 rows"
    );
    let mut cursor = first.cursor;
    let mut calls = 1;
    let mut claimed = Vec::new();
    while let Some(at) = cursor {
        let reply = store
            .sender()
            .claim("taker", lease, Some(&at), 1_000, 3, None)
            .await
            .expect("claim");
        claimed.extend(reply.claimed.into_iter().map(|c| c.entry.id));
        cursor = reply.cursor;
        calls += 1;
        assert!(calls <= 10, "the walk ends");
    }
    // Five full slices of 1,000; a full slice cannot tell it was the last,
    // so a sixth call finds the end (as SCAN does).
    assert_eq!(calls, 6, "5,000 rows in slices of 1,000");
    assert_eq!(claimed, stale, "exactly the stale entries, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_call_takes_at_most_200_entries() {
    let redis = start_redis().await;
    let store = store(&redis.url, &unique_prefix("cap")).await;
    produce_n(&store, 22, 1_000).await;
    let held = read_as(&redis.url, &store, "holder", 1_000).await;
    let reply = store
        .sender()
        .claim("taker", Duration::ZERO, None, 1_000, 3, None)
        .await
        .expect("claim");
    assert_eq!(reply.claimed.len(), 200);
    assert_eq!(reply.cursor, Some(format!("({}", held[199])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_takes_over_a_dead_consumers_long_pending_list() {
    let redis = start_redis().await;
    let prefix = unique_prefix("takeover");
    let store = store(&redis.url, &prefix).await;
    produce_n(&store, 23, 3_500).await;
    // A consumer that read 3,000 messages and died without a word.
    read_as(&redis.url, &store, "holder", 3_000).await;
    let mut sender = spawn_sender_process(
        &redis.url,
        &prefix,
        "taker",
        &[
            "--mean",
            "0ms",
            "--lease",
            "500ms",
            "--retry-backoff",
            "100ms",
        ],
    );
    wait_until("all 3,500 settled", Duration::from_secs(60), || {
        all_settled(&store, 3_500)
    })
    .await;
    terminate(&sender);
    assert_eq!(
        wait_exit(&mut sender, Duration::from_secs(15)).await.code(),
        Some(0)
    );
    assert_eq!(pending_of(&redis.url, &store, "holder").await, 0);
    let report = sms_alerts::audit::run(&store, 1_000).await.expect("audit");
    assert!(report.is_consistent(), "{}", report.to_text());
    assert_eq!(report.counters.sent, 3_500);
    assert_eq!(report.counters.duplicates, 0);
}
