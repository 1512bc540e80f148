//! The reclaim scan is bounded: up to 20,000 pending, one claim call has
//! XPENDING's IDLE filter find the stale entries from its cursor on (in C);
//! over that, it looks at no more than 1,000 rows of the pending list. Either
//! way it claims no more than 200 entries and returns a cursor; walking it
//! finds stale work however deep in the list it lies. (The Redis time of a
//! call over 2,000,000 pending is measured by `sms-alerts bench`.)

mod common;

use std::time::Duration;

use common::*;

/// Makes `ids`, pending under `holder`, idle for an hour.
async fn make_stale(url: &str, store: &sms_alerts::store::Store, ids: &[String]) {
    let mut claim = redis::cmd("XCLAIM");
    claim
        .arg(store.keys().messages())
        .arg(store.group())
        .arg("holder")
        .arg(0)
        .arg(ids)
        .arg("IDLE")
        .arg(3_600_000)
        .arg("JUSTID");
    claim
        .query_async::<redis::Value>(&mut raw(url).await)
        .await
        .expect("make them stale");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_call_finds_stale_entries_among_live_ones_at_once() {
    let redis = start_redis().await;
    let store = store(&redis.url, &unique_prefix("idle")).await;
    produce_n(&store, 20, 5_000).await;
    let held = read_as(&redis.url, &store, "holder", 5_000).await;
    // Every 50th is stale (idle an hour); the others are live.
    let stale: Vec<String> = held.iter().step_by(50).cloned().collect();
    make_stale(&redis.url, &store, &stale).await;

    let reply = store
        .sender()
        .claim("taker", Duration::from_secs(60), None, 1_000, 3, None)
        .await
        .expect("claim");
    let claimed: Vec<String> = reply.claimed.into_iter().map(|c| c.entry.id).collect();
    assert_eq!(claimed, stale, "exactly the stale entries, in order");
    assert_eq!(reply.cursor, None, "one call walked the whole list");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_call_over_a_long_list_scans_a_bounded_slice() {
    let redis = start_redis().await;
    let store = store(&redis.url, &unique_prefix("slice")).await;
    produce_n(&store, 21, 25_000).await;
    let held = read_as(&redis.url, &store, "holder", 25_000).await;
    // The last 100 are stale; the 24,900 before them are live.
    let stale = &held[24_900..];
    make_stale(&redis.url, &store, stale).await;

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
        assert!(calls <= 40, "the walk ends");
    }
    // 25 full slices of 1,000; a full slice cannot tell it was the last,
    // so a 26th call finds the end (as SCAN does).
    assert_eq!(calls, 26, "25,000 rows in slices of 1,000");
    assert_eq!(claimed, stale, "exactly the stale entries, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_dead_letters_a_stale_entry_gone_from_the_stream() {
    let redis = start_redis().await;
    let store = store(&redis.url, &unique_prefix("gone")).await;
    produce_n(&store, 24, 10).await;
    let held = read_as(&redis.url, &store, "holder", 10).await;
    make_stale(&redis.url, &store, &held).await;
    let mut conn = raw(&redis.url).await;
    let _: i64 = redis::cmd("XDEL")
        .arg(store.keys().messages())
        .arg(&held[..3])
        .query_async(&mut conn)
        .await
        .expect("XDEL");

    let reply = store
        .sender()
        .claim("taker", Duration::from_secs(60), None, 100, 3, None)
        .await
        .expect("claim");
    assert_eq!(reply.dead, 3);
    let claimed: Vec<String> = reply.claimed.into_iter().map(|c| c.entry.id).collect();
    assert_eq!(claimed, &held[3..]);
    let dead = dead_entries(&redis.url, &store).await;
    assert_eq!(dead.len(), 3);
    for (letter, id) in dead.iter().zip(&held) {
        assert_eq!(
            letter.get("dead_reason").map(String::as_str),
            Some("deleted")
        );
        assert_eq!(letter.get("dead_message_id"), Some(id));
        assert_eq!(
            letter.get("dead_consumer").map(String::as_str),
            Some("holder")
        );
        assert_eq!(letter.get("dead_attempts").map(String::as_str), Some("1"));
    }
    let scan = scan(&redis.url, &store).await;
    assert_eq!(scan.stat("dead_deleted"), 3);
    assert_eq!(scan.pending, 7, "the deleted ones left the pending list");
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
