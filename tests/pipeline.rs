//! The whole pipeline: producer, several senders and the monitor, checked
//! against an independent scan of Redis.

mod common;

use std::time::Duration;

use common::*;
use sms_alerts::monitor::{self, MonitorOutcome};
use sms_alerts::produce;
use sms_alerts::settings::Distribution;
use sms_alerts::settings::{MonitorSettings, ProduceSettings};
use sms_alerts::stats::Snapshot;
use sms_alerts::store::BatchWrite;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_senders_until_done_match_an_independent_scan() {
    let redis = start_redis().await;
    let prefix = unique_prefix("full");
    let store = store(&redis.url, &prefix).await;
    let never = CancellationToken::new();

    let produced = produce::run(
        &store,
        &ProduceSettings {
            count: 3_000,
            seed: Some(11),
            batch: 500,
            ..ProduceSettings::default()
        },
        &never,
    )
    .await
    .expect("produces");
    assert_eq!(produced.count, 3_000);

    let senders = vec![
        RunningSender::start(&store, send_settings("fast", 2, 0.0)),
        RunningSender::start(&store, send_settings("medium", 5, 0.1)),
        RunningSender::start(&store, {
            let mut s = send_settings("flaky", 10, 0.3);
            s.delay.distribution = Distribution::Exponential;
            s
        }),
    ];

    let mut output = Vec::new();
    let settings = MonitorSettings {
        interval: Duration::from_millis(100),
        until_done: true,
        json: true,
        by_partition: false,
        alerts: Default::default(),
        metrics_addr: None,
    };
    let outcome = tokio::time::timeout(
        Duration::from_secs(90),
        monitor::run(
            &store,
            &settings,
            monitor::Sink::Writer(&mut output),
            &never,
        ),
    )
    .await
    .expect("the run finishes within 90s")
    .expect("the monitor runs");
    let MonitorOutcome::Done(done) = outcome else {
        panic!("monitor stopped without finishing: {outcome:?}")
    };
    let mut summaries = Vec::new();
    for sender in senders {
        summaries.push(sender.stop().await);
    }

    let scan = scan(&redis.url, &store).await;
    assert_eq!(scan.entries_added, 3_000, "entries added to the stream");
    assert_eq!(scan.pending, 0, "nothing pending");
    assert_eq!(
        scan.dead_length,
        scan.stat("dead"),
        "dead stream length = dead counter"
    );
    assert_eq!(
        scan.stat("sent") + scan.stat("dead"),
        3_000,
        "sent + dead = produced"
    );
    assert_eq!(scan.stat("produced"), 3_000, "the producer's own record");
    assert!(
        scan.stat("failed") > 0,
        "failures happened and were retried"
    );
    assert_eq!(
        scan.stat("attempts"),
        scan.stat("sent") + scan.stat("failed") + scan.stat("duplicates"),
        "every attempt is a send, a failure or a duplicate"
    );
    assert_eq!(done.sent, scan.stat("sent"));
    let per_sender: u64 = summaries.iter().map(|s| s.flushed.sent).sum();
    assert_eq!(
        per_sender,
        scan.stat("sent"),
        "per-sender results add up to the total"
    );
    assert!(
        summaries.iter().all(|s| s.flushed.sent > 0),
        "every sender did work: {summaries:?}"
    );

    // The monitor printed JSON lines with the documented fields, the last one done.
    let text = String::from_utf8(output).expect("utf-8 output");
    let last: serde_json::Value =
        serde_json::from_str(text.lines().last().expect("a line")).expect("json line");
    for key in [
        "produced",
        "sent",
        "failed",
        "dead",
        "pending",
        "duplicates",
        "avg_send_ms",
        "rate_per_s",
        "elapsed_s",
    ] {
        assert!(last.get(key).is_some(), "missing {key} in {last}");
    }
    assert_eq!(last["produced"], 3_000);
    assert_eq!(last["done"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn average_send_time_is_within_five_percent_of_the_mean() {
    let redis = start_redis().await;
    let store = store(&redis.url, &unique_prefix("avg")).await;
    let never = CancellationToken::new();
    let settings = ProduceSettings {
        count: 2_000,
        seed: Some(3),
        batch: 1_000,
        ..ProduceSettings::default()
    };
    produce::run(&store, &settings, &never)
        .await
        .expect("produces");
    let mut sender = send_settings("timer", 200, 0.0);
    sender.concurrency = 1_000;
    sender.seed = Some(1234);
    let sender = RunningSender::start(&store, sender);
    wait_until("all 2000 are sent", Duration::from_secs(60), || async {
        Snapshot::read(&store)
            .await
            .map(|s| s.sent == 2_000)
            .unwrap_or(false)
    })
    .await;
    sender.stop().await;
    let snapshot = Snapshot::read(&store).await.expect("snapshot");
    assert_eq!(snapshot.attempts, 2_000);
    let avg = snapshot.avg_send_ms().expect("an average");
    assert!(
        (avg - 200.0).abs() <= 10.0,
        "average {avg:.2} ms is not within 5% of 200 ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_seed_produces_the_same_messages() {
    let redis = start_redis().await;
    let never = CancellationToken::new();
    let mut runs = Vec::new();
    for run in 0..2 {
        let store = store(&redis.url, &unique_prefix(&format!("seed{run}"))).await;
        // Many small batches, so that several are always in flight at once:
        // the order of the stream is part of what must repeat.
        let settings = ProduceSettings {
            count: 5_000,
            seed: Some(99),
            batch: 50,
            ..ProduceSettings::default()
        };
        produce::run(&store, &settings, &never)
            .await
            .expect("produces");
        let mut conn = raw(&redis.url).await;
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(store.keys().messages())
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .expect("XRANGE");
        let content: Vec<Vec<(String, String)>> = entries
            .into_iter()
            .map(|(_, fields)| {
                fields
                    .into_iter()
                    .filter(|(k, _)| k != "created_ms")
                    .collect()
            })
            .collect();
        runs.push(content);
    }
    assert_eq!(runs[0].len(), 5_000);
    assert_eq!(runs[0], runs[1], "same seed, same recipients and bodies");
    let lengths: std::collections::BTreeSet<usize> = runs[0]
        .iter()
        .map(|fields| {
            fields
                .iter()
                .find(|(k, _)| k == "body")
                .expect("body")
                .1
                .chars()
                .count()
        })
        .collect();
    assert!(lengths.len() > 20, "body lengths vary: {lengths:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sender_holds_no_more_than_it_sends_while_a_fast_one_takes_the_rest() {
    let redis = start_redis().await;
    let store = store(&redis.url, &unique_prefix("fair")).await;
    produce_n(&store, 12, 200).await;

    // Reads ahead only for sends about to end: a sender whose sends take a
    // minute holds just the ten it is sending, not ten more waiting behind.
    let mut slow = send_settings("slow", 60_000, 0.0);
    slow.delay.distribution = Distribution::Constant;
    slow.concurrency = 10;
    slow.lease = Duration::from_secs(30);
    let slow = RunningSender::start(&store, slow);
    wait_until("slow holds ten", Duration::from_secs(10), || async {
        pending_of(&redis.url, &store, "slow").await == 10
    })
    .await;
    let mut fast = send_settings("fast", 1, 0.0);
    fast.concurrency = 10;
    let fast = RunningSender::start(&store, fast);
    wait_until(
        "the fast sender settles all the rest",
        Duration::from_secs(30),
        || async {
            Snapshot::read(&store)
                .await
                .map(|s| s.settled() == 190)
                .unwrap_or(false)
        },
    )
    .await;
    assert_eq!(pending_of(&redis.url, &store, "slow").await, 10);
    fast.stop().await;
    drop(slow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_batch_sent_twice_is_added_once() {
    let redis = start_redis().await;
    let store = store(&redis.url, &unique_prefix("batch-once")).await;
    let mut generator = sms_alerts::generator::MessageGenerator::seeded(5);
    let messages: Vec<_> = (0..250).map(|_| generator.next_message(0)).collect();
    let batch = store.producer().prepare_batch("run-a", 1, &messages);
    // The second send stands for a retry after a lost reply, or for the first
    // try landing late, after its retry: either way the batch lands once.
    assert_eq!(
        store.producer().write_batch(&batch).await.expect("first"),
        BatchWrite::Added
    );
    assert_eq!(
        store.producer().write_batch(&batch).await.expect("again"),
        BatchWrite::AlreadyWritten
    );
    // The same seq of another run is another batch.
    let other = store.producer().prepare_batch("run-b", 1, &messages[..10]);
    assert_eq!(
        store.producer().write_batch(&other).await.expect("other"),
        BatchWrite::Added
    );

    let snapshot = Snapshot::read(&store).await.expect("snapshot");
    assert_eq!(snapshot.produced, 260);
    let length = stream_length(&redis.url, &store.keys().messages()).await;
    assert_eq!(length, 260, "250 + 10 entries, none twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_first_try_of_a_batch_is_aborted_by_its_retry_and_a_connection_goes_on_after_a_discard()
 {
    let redis = start_redis().await;
    let store = store(&redis.url, &unique_prefix("batch-fence")).await;
    let mut generator = sms_alerts::generator::MessageGenerator::seeded(6);
    let messages: Vec<_> = (0..300).map(|_| generator.next_message(0)).collect();
    let batch = store.producer().prepare_batch("run-f", 1, &messages[..200]);

    // The first try has watched its run and queued its commands, but its
    // EXEC is not sent yet: it stands for a try whose reply was lost.
    let first = store.producer().batch_connection().await.expect("connects");
    let watched_before = command_calls(&store, "watch").await;
    let late = first.start(&batch);
    wait_until(
        "the first try's WATCH ran",
        Duration::from_secs(10),
        || async { command_calls(&store, "watch").await > watched_before },
    )
    .await;
    // Its retry lands meanwhile.
    assert_eq!(
        store.producer().write_batch(&batch).await.expect("retry"),
        BatchWrite::Added
    );
    // Now the first try's EXEC runs: its WATCH saw the retry's mark.
    let outcome = late
        .commit()
        .await
        .expect("the check had passed")
        .outcome()
        .await;
    let err = outcome.expect_err("the late first try is aborted");
    assert!(err.is_transient(), "tried again, it finds the mark: {err}");
    assert_eq!(
        store
            .producer()
            .write_batch(&batch)
            .await
            .expect("once more"),
        BatchWrite::AlreadyWritten
    );

    // A connection that found a batch marked (DISCARD) writes the next one.
    let conn = store.producer().batch_connection().await.expect("connects");
    assert_eq!(
        conn.write(&batch).await.expect("marked"),
        BatchWrite::AlreadyWritten
    );
    let next = store.producer().prepare_batch("run-f", 2, &messages[200..]);
    assert_eq!(conn.write(&next).await.expect("next"), BatchWrite::Added);

    let snapshot = Snapshot::read(&store).await.expect("snapshot");
    assert_eq!(snapshot.produced, 300);
    let length = stream_length(&redis.url, &store.keys().messages()).await;
    assert_eq!(length, 300, "each batch once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_concurrent_starts_on_an_empty_redis_are_safe() {
    let redis = start_redis().await;
    let prefix = unique_prefix("migrate");
    let mut starts = Vec::new();
    for _ in 0..10 {
        let url = redis.url.clone();
        let prefix = prefix.clone();
        starts.push(tokio::spawn(async move {
            let store = sms_alerts::store::Store::connect(&queue(&url, &prefix))
                .await
                .expect("connects");
            store
                .migrate(&sms_alerts::store::QueueOptions::default())
                .await
                .expect("migrate succeeds under concurrency")
                .0
        }));
    }
    let mut stores = Vec::new();
    for start in starts {
        stores.push(start.await.expect("no panic"));
    }
    let store = &stores[0];
    let latest = sms_alerts::store::MIGRATIONS
        .iter()
        .map(|m| m.version)
        .max()
        .expect("migrations");
    assert_eq!(
        store.library_version().await.expect("version"),
        i64::from(latest)
    );
    let mut conn = raw(&redis.url).await;
    let recorded: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(store.keys().migrations())
        .query_async(&mut conn)
        .await
        .expect("HGETALL");
    assert!(
        recorded.contains_key("0001_functions"),
        "recorded: {recorded:?}"
    );
    let epochs: std::collections::HashSet<&str> = stores.iter().map(|s| s.epoch()).collect();
    assert_eq!(epochs.len(), 1, "one queue, one identity: {epochs:?}");
    let (_, again, identity) = store
        .migrate(&sms_alerts::store::QueueOptions::default())
        .await
        .expect("migrate again");
    assert!(again.applied.is_empty(), "nothing left to apply: {again:?}");
    assert_eq!(identity.status, sms_alerts::store::QueueStatus::Existing);
    assert_eq!(identity.epoch, store.epoch());
}

/// Requests made one after another reach Redis in that order, however their
/// replies are awaited: many one-entry reads on the wire at once each get the
/// entry after the one the read made before it got, and of many reports of
/// the same send only the first made acknowledges it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_redis_in_the_order_they_are_made() {
    const READS: usize = 300;
    const REPORTS: u64 = 50;
    let redis = start_redis().await;
    let store = store(&redis.url, &unique_prefix("order")).await;
    produce_n(&store, 21, READS as u64).await;

    let conn = store
        .read_connection(Duration::ZERO)
        .await
        .expect("connects");
    let reads: Vec<_> = (0..READS)
        .map(|_| store.sender().read_new(&conn, "orderly", 1, 1))
        .collect();
    // Awaited last first: only the order they were made in may count.
    let mut got = Vec::new();
    for read in reads.into_iter().rev() {
        let entries = read.await.expect("a read");
        assert_eq!(entries.len(), 1, "each read gets one entry: {entries:?}");
        got.push(entries[0].id.clone());
    }
    got.reverse();
    // Each read takes the entry after the last one delivered: ids that grow
    // in the order the reads were made mean they ran in that order.
    let order: Vec<(u64, u64)> = got
        .iter()
        .map(|id| {
            let (ms, seq) = id.split_once('-').expect("an entry id");
            (ms.parse().expect("ms"), seq.parse().expect("seq"))
        })
        .collect();
    assert!(
        order.windows(2).all(|pair| pair[0] < pair[1]),
        "read i got the stream's entry i: {got:?}"
    );

    let reports = store.sender().report_connection().await.expect("connects");
    let item = sms_alerts::store::ReportItem {
        id: got[0].clone(),
        outcome: sms_alerts::store::Outcome::Sent,
        send_time_us: 1_000,
    };
    let pending: Vec<_> = (1..=REPORTS)
        .map(|seq| {
            let report = store.sender().prepare_report(
                "orderly",
                3,
                Duration::from_secs(1),
                "order-token",
                seq,
                std::slice::from_ref(&item),
            );
            reports.send(&report)
        })
        .collect();
    let mut replies = Vec::new();
    for reply in pending.into_iter().rev() {
        replies.push(reply.await.expect("a report"));
    }
    replies.reverse();
    let acknowledged: Vec<u64> = replies.iter().map(|reply| reply.sent).collect();
    let mut expected = vec![0; REPORTS as usize];
    expected[0] = 1;
    assert_eq!(acknowledged, expected, "only the first report made acks");
    assert!(
        replies[1..].iter().all(|reply| reply.duplicates == 1),
        "the later ones are duplicates: {replies:?}"
    );
}
