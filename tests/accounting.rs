//! Counting exactly once: duplicate deliveries, idempotent batch replays,
//! dead-lettering after max attempts, malformed entries.

mod common;

use std::time::Duration;

use common::*;
use sms_alerts::stats::Snapshot;
use sms_alerts::store::{Outcome, ReportItem};

#[tokio::test]
async fn a_duplicate_delivery_is_counted_once() {
    let redis = start_redis().await;
    let store = store(&redis.url, &unique_prefix("dup")).await;
    produce_n(&store, 5, 1).await;

    // Sender x reads the message; sender y takes it over (as after a lease
    // lapse); both then succeed.
    let conn = store
        .read_connection(Duration::from_secs(1))
        .await
        .expect("conn");
    let read = store
        .sender()
        .read_new(&conn, "x", 10, 100)
        .await
        .expect("read");
    assert_eq!(read.len(), 1);
    let id = read[0].id.clone();
    let claimed = store
        .sender()
        .claim("y", Duration::ZERO, None, 10, 5, None)
        .await
        .expect("claim");
    assert_eq!(claimed.claimed.len(), 1);
    assert_eq!(
        claimed.claimed[0].deliveries, 2,
        "the takeover is the second delivery"
    );

    let ok = |id: &str| ReportItem {
        id: id.to_owned(),
        outcome: Outcome::Sent,
        send_time_us: 1_000,
    };
    let first = store
        .sender()
        .report("y", 5, Duration::ZERO, "tok-y", 1, &[ok(&id)])
        .await
        .expect("report y");
    let second = store
        .sender()
        .report("x", 5, Duration::ZERO, "tok-x", 1, &[ok(&id)])
        .await
        .expect("report x");
    assert_eq!((first.sent, first.duplicates), (1, 0));
    assert_eq!((second.sent, second.duplicates), (0, 1));

    // A batch retried after a lost reply is not applied twice.
    let replay = store
        .sender()
        .report("x", 5, Duration::ZERO, "tok-x", 1, &[ok(&id)])
        .await
        .expect("replay");
    assert!(replay.replayed, "the same (token, seq) is recognised");

    let snapshot = Snapshot::read(&store).await.expect("snapshot");
    assert_eq!(
        (snapshot.sent, snapshot.duplicates, snapshot.attempts),
        (1, 1, 2)
    );
    let scan = scan(&redis.url, &store).await;
    assert_eq!(scan.pending, 0);
    assert_eq!(scan.stat("sent"), 1);
}

#[tokio::test]
async fn report_batches_landing_out_of_order_each_apply_exactly_once() {
    // A sender has several report calls in flight, and retries a failed one
    // after later ones landed: every batch must count once, in any order.
    let redis = start_redis().await;
    let store = store(&redis.url, &unique_prefix("window")).await;
    produce_n(&store, 40, 40).await;
    let conn = store
        .read_connection(Duration::from_secs(1))
        .await
        .expect("conn");
    let read = store
        .sender()
        .read_new(&conn, "w", 40, 100)
        .await
        .expect("read");
    assert_eq!(read.len(), 40);
    let batch = |seq: usize| -> Vec<ReportItem> {
        read[(seq - 1) * 4..seq * 4]
            .iter()
            .map(|entry| ReportItem {
                id: entry.id.clone(),
                outcome: Outcome::Sent,
                send_time_us: 0,
            })
            .collect()
    };
    let report = |seq: usize| {
        let store = store.clone();
        let items = batch(seq);
        async move {
            store
                .sender()
                .report("w", 5, Duration::ZERO, "tok-w", seq as u64, &items)
                .await
                .expect("report")
        }
    };
    // 3 lands before 1 and 2 (they were retried); then 10 jumps ahead.
    for seq in [3, 1, 2, 10, 5, 4] {
        let reply = report(seq).await;
        assert!(!reply.replayed, "batch {seq} is new");
        assert_eq!(reply.sent, 4, "batch {seq} acknowledges its 4");
    }
    // Retries of any of them after a lost reply are recognised.
    for seq in [1, 2, 3, 4, 5, 10] {
        let reply = report(seq).await;
        assert!(reply.replayed, "batch {seq} is a replay");
        assert_eq!(reply.sent, 0);
    }
    // The gaps below the highest batch still apply once.
    for seq in [9, 6, 8, 7] {
        assert!(!report(seq).await.replayed, "batch {seq} is new");
        assert!(report(seq).await.replayed, "batch {seq} again is a replay");
    }
    let snapshot = Snapshot::read(&store).await.expect("snapshot");
    assert_eq!((snapshot.sent, snapshot.duplicates), (40, 0));
    assert_eq!(scan(&redis.url, &store).await.pending, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_that_keep_failing_go_to_the_dead_stream_after_max_attempts() {
    let redis = start_redis().await;
    let store = store(&redis.url, &unique_prefix("maxatt")).await;
    produce_n(&store, 5, 20).await;
    let mut settings = send_settings("hopeless", 1, 1.0);
    settings.max_attempts = 3;
    let sender = RunningSender::start(&store, settings);
    wait_until("all 20 are dead", Duration::from_secs(30), || async {
        Snapshot::read(&store)
            .await
            .map(|s| s.dead == 20 && s.pending == 0)
            .unwrap_or(false)
    })
    .await;
    sender.stop().await;

    let scan = scan(&redis.url, &store).await;
    assert_eq!(scan.stat("failed"), 60, "three failed attempts each");
    assert_eq!(scan.stat("sent"), 0);
    assert_eq!(scan.stat("dead_max_attempts"), 20);
    assert_eq!(scan.dead_length, 20);
    for entry in dead_entries(&redis.url, &store).await {
        assert_eq!(
            entry.get("dead_reason").map(String::as_str),
            Some("max_attempts"),
            "{entry:?}"
        );
        assert_eq!(
            entry.get("dead_attempts").map(String::as_str),
            Some("3"),
            "{entry:?}"
        );
        assert_eq!(
            entry.get("dead_consumer").map(String::as_str),
            Some("hopeless"),
            "{entry:?}"
        );
        assert!(
            entry.get("recipient").is_some_and(|r| r.starts_with('+')),
            "original fields kept: {entry:?}"
        );
        assert!(
            entry.contains_key("body") && entry.contains_key("dead_message_id"),
            "{entry:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_entries_go_to_the_dead_stream_and_the_sender_carries_on() {
    let redis = start_redis().await;
    let store = store(&redis.url, &unique_prefix("malformed")).await;
    produce_n(&store, 5, 10).await;
    let mut conn = raw(&redis.url).await;
    let stream = store.keys().messages();
    let long_body = "x".repeat(101);
    let bad: Vec<Vec<(&[u8], &[u8])>> = vec![
        vec![(b"recipient", b"+15551234567"), (b"created_ms", b"1")],
        vec![
            (b"recipient", b"not-a-number"),
            (b"body", b"hi"),
            (b"created_ms", b"1"),
        ],
        vec![
            (b"recipient", b"+15551234567"),
            (b"body", b"\xff\xfe\xfd"),
            (b"created_ms", b"1"),
        ],
        vec![
            (b"recipient", b"+15551234567"),
            (b"body", long_body.as_bytes()),
            (b"created_ms", b"1"),
        ],
        vec![(b"\xffodd-field", b"x")],
    ];
    for fields in &bad {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&stream).arg("*");
        for (k, v) in fields {
            cmd.arg(*k).arg(*v);
        }
        let _: String = cmd.query_async(&mut conn).await.expect("XADD");
    }
    produce_n(&store, 5, 10).await;

    let sender = RunningSender::start(&store, send_settings("tolerant", 1, 0.0));
    wait_until("everything is settled", Duration::from_secs(30), || async {
        Snapshot::read(&store)
            .await
            .map(|s| s.pending == 0 && s.lag == Some(0) && s.settled() == 25)
            .unwrap_or(false)
    })
    .await;
    sender.stop().await;

    let scan = scan(&redis.url, &store).await;
    assert_eq!(scan.entries_added, 25);
    assert_eq!(
        scan.stat("sent"),
        20,
        "the good messages around the bad ones were sent"
    );
    assert_eq!(scan.stat("dead_malformed"), 5);
    assert_eq!(scan.dead_length, 5);
    let dead = dead_entries(&redis.url, &store).await;
    assert!(
        dead.iter()
            .all(|e| e.get("dead_reason").map(String::as_str) == Some("malformed")),
        "{dead:?}"
    );
    assert!(
        dead.iter()
            .any(|e| e.get("recipient").map(String::as_str) == Some("not-a-number")),
        "fields kept"
    );
}
