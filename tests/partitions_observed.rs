//! Observing and administering a queue of several partitions: the monitor,
//! the metrics, the audit, `senders`, dead letters and `repair` see every
//! partition, give totals that are the partitions' sums, and name the
//! partition a figure or a problem belongs to. Messages are written into
//! each partition through its handle, and a sender runs per partition.

mod common;

use std::time::Duration;

use common::*;
use prometheus_parse::{Scrape, Value};
use sms_alerts::settings::MonitorSettings;
use sms_alerts::stats::{SenderSnapshot, Snapshot};
use sms_alerts::store::{QueueOptions, Store};
use sms_alerts::{audit, dead, metrics, monitor, repair, senders};
use tokio_util::sync::CancellationToken;

/// Messages written into partitions 0, 1 and 2.
const PER_PARTITION: [u64; 3] = [30, 20, 10];

/// Produces `count` seeded messages, every one into partition `partition`.
async fn produce_into(store: &Store, partition: u32, seed: u64, count: u64) {
    let settings = sms_alerts::settings::ProduceSettings {
        count,
        seed: Some(seed),
        batch: 100,
        routing: sms_alerts::routing::Routing::Partition(partition),
        ..sms_alerts::settings::ProduceSettings::default()
    };
    sms_alerts::produce::run(store, &settings, &CancellationToken::new())
        .await
        .expect("produces");
}

async fn partitioned(url: &str, prefix: &str, partitions: u32) -> Store {
    let options = QueueOptions {
        partitions: Some(partitions),
        ..QueueOptions::default()
    };
    let store = store_with(url, prefix, &options).await;
    assert_eq!(store.partition_count(), partitions);
    store
}

/// Runs the binary with `args` after the connection options; its exit code,
/// stdout and stderr.
async fn cli(url: &str, prefix: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = bin();
    cmd.args(["--redis-url", url, "--prefix", prefix])
        .args(args);
    let output = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("joins")
        .expect("runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs the monitor in this process until the queue is done; its output.
async fn monitor_until_done(store: &Store, json: bool, by_partition: bool) -> String {
    let settings = MonitorSettings {
        interval: Duration::from_millis(50),
        until_done: true,
        json,
        by_partition,
        alerts: Default::default(),
        metrics_addr: None,
    };
    let mut output = Vec::new();
    let outcome = tokio::time::timeout(
        Duration::from_secs(30),
        monitor::run(
            store,
            &settings,
            monitor::Sink::Writer(&mut output),
            &CancellationToken::new(),
        ),
    )
    .await
    .expect("the monitor ends once done")
    .expect("the monitor runs");
    assert!(matches!(outcome, monitor::MonitorOutcome::Done(_)));
    String::from_utf8(output).expect("utf-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_observers_give_each_partition_and_their_totals() {
    let redis = start_redis().await;
    let prefix = unique_prefix("observed");
    let store = partitioned(&redis.url, &prefix, 3).await;
    for (p, count) in (0..).zip(PER_PARTITION) {
        produce_into(&store, p, 10 + u64::from(p), count).await;
    }
    // A sender that took messages and went away: 2 in partition 0, 3 in 2.
    read_as(&redis.url, &store.partition(0), "ghost", 2).await;
    read_as(&redis.url, &store.partition(2), "ghost", 3).await;

    let snapshot = Snapshot::read(&store).await.expect("snapshot");
    let produced: Vec<u64> = snapshot.partitions.iter().map(|p| p.produced).collect();
    assert_eq!(produced, PER_PARTITION, "each partition's own figures");
    let pending: Vec<u64> = snapshot.partitions.iter().map(|p| p.pending).collect();
    assert_eq!(pending, [2, 0, 3]);
    let lag: Vec<Option<u64>> = snapshot.partitions.iter().map(|p| p.lag).collect();
    assert_eq!(lag, [Some(28), Some(20), Some(7)]);
    assert_eq!(
        (snapshot.produced, snapshot.pending, snapshot.lag),
        (60, 5, Some(55)),
        "totals are the sums"
    );
    let oldest = snapshot
        .partitions
        .iter()
        .filter_map(|p| p.oldest_queued_age_ms)
        .max();
    assert_eq!(snapshot.oldest_queued_age_ms.is_some(), oldest.is_some());

    let rows = senders::list(&store).await.expect("senders");
    assert_eq!(rows.len(), 1, "one row per sender: {rows:?}");
    assert_eq!(
        (rows[0].name.as_str(), rows[0].pending),
        ("ghost", 5),
        "{rows:?}"
    );
    assert_eq!(rows[0].pending_by_partition, [2, 0, 3]);
    let table = senders::to_table(&rows);
    let columns: Vec<Vec<&str>> = table
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert_eq!(
        columns[0][..5],
        ["NAME", "PENDING", "P0", "P1", "P2"],
        "{table}"
    );
    assert_eq!(columns[1][..5], ["ghost", "5", "2", "0", "3"], "{table}");

    // One sender, alpha, reads every partition; ghost's messages are
    // reclaimed after its lease.
    let running = [RunningSender::start(
        &store.partition(2),
        send_settings("alpha", 1, 0.0),
    )];
    let json = monitor_until_done(&store, true, false).await;
    for sender in running {
        sender.stop().await;
    }
    let last: serde_json::Value =
        serde_json::from_str(json.lines().last().expect("a report")).expect("a JSON line");
    assert_eq!(last["done"], true, "{last}");
    let parts = last["partitions"].as_array().expect("partitions");
    assert_eq!(parts.len(), 3, "{last}");
    for (p, part) in parts.iter().enumerate() {
        assert_eq!(part["partition"], p, "{part}");
        assert_eq!(part["produced"], PER_PARTITION[p], "{part}");
        assert_eq!(part["sent"], PER_PARTITION[p], "{part}");
        assert_eq!(
            (&part["pending"], &part["lag"]),
            (&0.into(), &0.into()),
            "{part}"
        );
    }
    assert_eq!((&last["produced"], &last["sent"]), (&60.into(), &60.into()));

    let text = monitor_until_done(&store, false, true).await;
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].contains("in 3 partitions"), "{text}");
    assert!(lines[1].contains("produced 60 | sent 60"), "{text}");
    for (p, count) in PER_PARTITION.iter().enumerate() {
        let row = lines[2 + p];
        assert!(
            row.starts_with(&format!(
                "  partition {p}: produced {count} | sent {count} |"
            )),
            "row {p}: {text}"
        );
    }

    let senders_now = SenderSnapshot::read_all(&store).await.expect("senders");
    let exposition = metrics::render(
        &Snapshot::read(&store).await.expect("snapshot"),
        &senders_now,
    );
    let scrape = Scrape::parse(exposition.lines().map(|l| Ok(l.to_owned())))
        .expect("valid exposition format");
    let sent: Vec<(String, f64)> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "sms_sent_total")
        .map(|s| {
            let Value::Counter(v) = s.value else {
                panic!("{s:?}")
            };
            (s.labels.get("partition").unwrap_or("-").to_owned(), v)
        })
        .collect();
    assert_eq!(
        sent,
        [
            ("0".to_owned(), 30.0),
            ("1".to_owned(), 20.0),
            ("2".to_owned(), 10.0)
        ],
        "one series per partition:\n{exposition}"
    );
    let alpha = scrape
        .samples
        .iter()
        .find(|s| s.metric == "sms_sender_sent_total")
        .expect("a sender series");
    assert_eq!(alpha.labels.get("sender"), Some("alpha"));
    assert_eq!(
        alpha.labels.get("partition"),
        None,
        "a sender is one series"
    );

    let pruned = senders::prune(&store, Duration::ZERO)
        .await
        .expect("prunes");
    assert!(
        pruned.pruned.contains(&"ghost".to_owned()) && pruned.pruned_in.is_empty(),
        "ghost leaves every partition: {pruned:?}"
    );
    assert!(
        senders::list(&store)
            .await
            .expect("senders")
            .iter()
            .all(|r| r.name != "ghost"),
        "ghost is gone"
    );

    let report = audit::run(&store, 7).await.expect("audits");
    assert!(report.is_consistent(), "{}", report.to_text());
    assert_eq!(report.partitions.len(), 3);
    assert_eq!(report.produced, 60);
    assert!(
        report.to_text().contains("partition 2: consistent"),
        "{}",
        report.to_text()
    );

    // Partition 2's books no longer balance; the others still do.
    let _: i64 = redis::cmd("HINCRBY")
        .arg(store.partition(2).keys().stats())
        .arg("sent")
        .arg(1)
        .query_async(&mut raw(&redis.url).await)
        .await
        .expect("HINCRBY");
    let report = audit::run(&store, 7).await.expect("audits");
    assert_eq!(
        report.inconsistent_partitions(),
        [2],
        "{}",
        report.to_text()
    );
    let text = report.to_text();
    assert!(
        text.contains("INCONSISTENT in partition 2:")
            && report
                .problems
                .iter()
                .all(|p| p.starts_with("partition 2: "))
            && text.contains("partition 0: consistent"),
        "{text}"
    );
    let (code, stdout, _) = cli(&redis.url, &prefix, &["audit"]).await;
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("INCONSISTENT in partition 2:"), "{stdout}");
}

/// Writes `count` messages into partition `p` and has them all die.
async fn dead_letters_in(store: &Store, p: u32, count: u64) {
    let partition = store.partition(p);
    produce_into(store, p, u64::from(p), count).await;
    let mut settings = send_settings("doomed", 0, 1.0);
    settings.max_attempts = 1;
    settings.partitions = Some(vec![p]);
    let sender = RunningSender::start(&partition, settings);
    wait_until("every message is dead", Duration::from_secs(30), || async {
        Snapshot::read_partition(&partition)
            .await
            .is_ok_and(|s| s.dead == count && s.pending == 0)
    })
    .await;
    sender.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_of_two_partitions_are_listed_and_requeued_by_partition() {
    let redis = start_redis().await;
    let prefix = unique_prefix("dead-parts");
    let store = partitioned(&redis.url, &prefix, 4).await;
    dead_letters_in(&store, 1, 3).await;
    dead_letters_in(&store, 3, 2).await;

    let letters = dead::list(&store, None, 100).await.expect("lists");
    let mut partitions: Vec<u32> = letters.iter().map(|l| l.partition).collect();
    partitions.sort_unstable();
    assert_eq!(partitions, [1, 1, 1, 3, 3], "{letters:?}");
    assert!(
        letters.windows(2).all(|w| {
            sms_alerts::store::id_order(&w[0].id) >= sms_alerts::store::id_order(&w[1].id)
        }),
        "newest first across partitions: {letters:?}"
    );
    let (code, table, stderr) = cli(&redis.url, &prefix, &["dead", "list"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    for letter in &letters {
        assert!(
            table.contains(&format!("{}/{}", letter.partition, letter.id)),
            "{table}"
        );
    }
    let (_, json, _) = cli(&redis.url, &prefix, &["dead", "list", "--json"]).await;
    let first: serde_json::Value =
        serde_json::from_str(json.lines().next().expect("a line")).expect("JSON");
    assert!(first["partition"].is_u64(), "{first}");

    // One of each partition by P/ID, one by a plain id held by one partition.
    let of = |p: u32| letters.iter().filter(move |l| l.partition == p);
    let by_partition = [
        format!("1/{}", of(1).next().expect("one").id),
        format!("3/{}", of(3).next().expect("one").id),
    ];
    let plain = of(1).nth(1).expect("a second").id.clone();
    let (code, stdout, stderr) = cli(
        &redis.url,
        &prefix,
        &[
            "dead",
            "requeue",
            "--id",
            &by_partition[0],
            &by_partition[1],
            &plain,
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("requeued 3 dead letters"), "{stdout}");
    let snapshot = Snapshot::read(&store).await.expect("snapshot");
    let requeued: Vec<u64> = snapshot.partitions.iter().map(|p| p.requeued).collect();
    assert_eq!(
        requeued,
        [0, 2, 0, 1],
        "each went back into its own partition"
    );
    let lag: Vec<Option<u64>> = snapshot.partitions.iter().map(|p| p.lag).collect();
    assert_eq!(lag, [Some(0), Some(2), Some(0), Some(1)]);

    // The same id in two partitions' dead streams must be named with one.
    for p in [0, 2] {
        let _: String = redis::cmd("XADD")
            .arg(store.partition(p).keys().dead())
            .arg("5-5")
            .arg("dead_reason")
            .arg("malformed")
            .query_async(&mut raw(&redis.url).await)
            .await
            .expect("XADD");
    }
    let (code, _, stderr) = cli(&redis.url, &prefix, &["dead", "requeue", "--id", "5-5"]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("5-5") && stderr.contains("partitions 0, 2"),
        "{stderr}"
    );
    let (code, _, stderr) = cli(&redis.url, &prefix, &["dead", "requeue", "--id", "9/5-5"]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("no partition 9"), "{stderr}");
    let (code, stdout, stderr) =
        cli(&redis.url, &prefix, &["dead", "requeue", "--id", "2/5-5"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("left 2/5-5: not a valid message"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_diagnoses_each_partition_and_names_it() {
    let redis = start_redis().await;
    let prefix = unique_prefix("repair-parts");
    let store = partitioned(&redis.url, &prefix, 3).await;
    for p in 0..3 {
        produce_into(&store, p, u64::from(p), 5).await;
    }
    let plan = repair::plan(&store, "end").await.expect("plans");
    assert!(plan.steps.is_empty(), "{plan:?}");
    assert!(
        plan.to_text().contains("in all 3 partitions"),
        "{}",
        plan.to_text()
    );

    let _: () = redis::cmd("HSET")
        .arg(store.partition(2).keys().stats())
        .arg("produced")
        .arg("many")
        .query_async(&mut raw(&redis.url).await)
        .await
        .expect("HSET");
    let plan = repair::plan(&store, "end").await.expect("plans");
    assert_eq!(plan.partitions, [2], "{plan:?}");
    assert!(
        plan.to_text()
            .starts_with("1. partition 2: set counter produced of"),
        "{}",
        plan.to_text()
    );
    repair::apply(&store, &plan).await.expect("repairs");
    assert!(
        repair::plan(&store, "end")
            .await
            .expect("plans")
            .steps
            .is_empty()
    );
    let snapshot = Snapshot::read(&store).await.expect("snapshot");
    assert_eq!(snapshot.partitions[2].produced_by_producers, 5);
}
