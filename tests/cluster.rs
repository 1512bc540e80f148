//! sms-alerts on a real Redis Cluster (tests/common/cluster.rs): a queue of
//! several partitions spread over the primaries, senders pointed at
//! different nodes, a primary killed mid-run with its replica taking over,
//! a partition's slot migrated mid-run to a primary that has no Functions
//! yet. Each ends with every partition settled exactly once and the audit
//! consistent.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::cluster::TestCluster;
use common::{RunningSender, send_settings, unique_prefix};
use sms_alerts::routing::partition_of_key;
use sms_alerts::settings::ProduceSettings;
use sms_alerts::store::{BatchWrite, QueueOptions, Store, StoreError};
use tokio_util::sync::CancellationToken;

/// A queue of `partitions` partitions created through `url`.
async fn queue_at(url: &str, prefix: &str, partitions: u32) -> Store {
    let store = Store::connect(&common::queue(url, prefix))
        .await
        .expect("connects to the cluster");
    assert!(store.is_cluster(), "{url} is a cluster node");
    let options = QueueOptions {
        partitions: Some(partitions),
        ..QueueOptions::default()
    };
    store.migrate(&options).await.expect("migrates").0
}

/// The same queue opened through another node.
async fn open_at(url: &str, prefix: &str) -> Store {
    Store::connect(&common::queue(url, prefix))
        .await
        .expect("connects")
        .open()
        .await
        .expect("opens")
}

/// Produces `count` seeded messages, routed by recipient.
async fn produce(store: &Store, count: u64, seed: u64) -> u64 {
    let settings = ProduceSettings {
        count,
        seed: Some(seed),
        batch: 500,
        ..ProduceSettings::default()
    };
    sms_alerts::produce::run(store, &settings, &CancellationToken::new())
        .await
        .expect("produces")
        .count
}

/// Whether every partition is settled: nothing pending, sent + dead =
/// produced, and `total` produced in all.
async fn all_settled(store: &Store, total: u64) -> bool {
    let mut produced = 0;
    for partition in 0..store.partition_count() {
        let Ok(counts) =
            tokio::time::timeout(Duration::from_secs(5), counters_or_none(store, partition)).await
        else {
            return false;
        };
        let Some((p, sent, dead, pending)) = counts else {
            return false;
        };
        if pending != 0 || sent + dead != p {
            return false;
        }
        produced += p;
    }
    produced == total
}

/// One partition's `produced`, `sent` and `dead` counters and pending count,
/// through the queue's own routing; `None` while Redis cannot tell.
async fn counters_or_none(store: &Store, partition: u32) -> Option<(u64, u64, u64, u64)> {
    let part = store.partition(partition);
    let stats = part.operator().hash(&part.keys().stats()).await.ok()?;
    let get = |field: &str| stats.get(field).and_then(|v| v.parse().ok()).unwrap_or(0);
    let pending = part.inspector().group_info().await.ok()?.pending;
    Some((get("produced"), get("sent"), get("dead"), pending))
}

async fn wait_settled(store: &Store, total: u64, deadline: Duration) {
    common::wait_until("every partition is settled", deadline, || {
        all_settled(store, total)
    })
    .await;
}

async fn assert_audit_consistent(store: &Store) {
    let audit = sms_alerts::audit::run(store, sms_alerts::audit::DEFAULT_PAGE)
        .await
        .expect("audits");
    assert!(audit.is_consistent(), "audit: {:?}", audit.problems);
}

#[tokio::test]
async fn six_partitions_spread_over_three_primaries_and_settle_once() {
    let cluster = TestCluster::start(3, 0).await;
    let nodes = cluster.node_urls();
    let prefix = unique_prefix("spread");
    let store = queue_at(&nodes[1], &prefix, 6).await;
    let mut owners = BTreeSet::new();
    for partition in 0..6 {
        owners.insert(
            cluster
                .owner_of_slot(store.partition(partition).keys().slot())
                .await,
        );
    }
    assert_eq!(
        owners.len(),
        3,
        "every primary holds partitions: {owners:?}"
    );
    let total = produce(&store, 30_000, 5).await;
    assert_eq!(total, 30_000);
    // Three senders, each pointed at a different node.
    let mut senders = Vec::new();
    for (i, url) in nodes.iter().take(3).enumerate() {
        let at = open_at(url, &prefix).await;
        let mut settings = send_settings(&format!("node-{i}"), 1, 0.05);
        settings.concurrency = 200;
        senders.push(RunningSender::start(&at, settings));
    }
    wait_settled(&store, total, Duration::from_secs(120)).await;
    let mut sent = 0;
    for sender in senders {
        let summary = sender.stop().await;
        assert!(summary.flushed.sent > 0, "every sender worked: {summary:?}");
        sent += summary.flushed.sent + summary.flushed.dead;
    }
    assert_eq!(sent, total, "the senders settled each message once");
    for partition in 0..6 {
        let (produced, ..) = counters_or_none(&store, partition)
            .await
            .expect("reads the counters");
        assert!(produced > 0, "partition {partition} got messages");
        // Each message is in the partition its recipient routes to.
        let recipients = recipients_in(&store, partition).await;
        assert_eq!(recipients.len() as u64, produced);
        let strays: Vec<&String> = recipients
            .iter()
            .filter(|r| partition_of_key(r.as_bytes(), 6) != partition)
            .collect();
        assert!(strays.is_empty(), "partition {partition} holds {strays:?}");
    }
    assert_audit_consistent(&store).await;
}

/// The recipient of every message in `partition`'s stream, oldest first.
async fn recipients_in(store: &Store, partition: u32) -> Vec<String> {
    let part = store.partition(partition);
    let inspector = part.inspector();
    let conn = inspector
        .read_connection(Duration::ZERO)
        .await
        .expect("a read connection to the partition's node");
    let mut recipients = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = inspector
            .range_page(&conn, &part.keys().messages(), after.as_deref(), 5_000)
            .await
            .expect("reads the stream");
        let Some(last) = page.last() else {
            return recipients;
        };
        after = Some(last.id.clone());
        for entry in &page {
            let message = entry.message().expect("a well-formed message");
            recipients.push(message.recipient.to_owned());
        }
    }
}

#[tokio::test]
async fn partitions_added_mid_run_are_spread_over_the_primaries_and_read() {
    let cluster = TestCluster::start(3, 0).await;
    let prefix = unique_prefix("grow");
    let store = queue_at(&cluster.seed_url(), &prefix, 2).await;
    let sender = RunningSender::start(&store, send_settings("follower", 1, 0.0));
    let first = produce(&store, 4_000, 21).await;
    wait_settled(&store, first, Duration::from_secs(60)).await;
    let options = QueueOptions {
        partitions: Some(9),
        ..QueueOptions::default()
    };
    let (grown, _, identity) = store.migrate(&options).await.expect("grows");
    assert_eq!(identity.partitions, (2, 9));
    let second = produce(&grown, 9_000, 22).await;
    wait_settled(&grown, first + second, Duration::from_secs(60)).await;
    let summary = sender.stop().await;
    assert_eq!(summary.flushed.sent, first + second, "{summary:?}");
    let mut owners = BTreeSet::new();
    for partition in 2..9 {
        let counts = counters_or_none(&grown, partition).await.expect("counters");
        assert!(counts.1 > 0, "partition {partition} was read: {counts:?}");
        owners.insert(
            cluster
                .owner_of_slot(grown.partition(partition).keys().slot())
                .await,
        );
    }
    assert_eq!(owners.len(), 3, "the added partitions span the primaries");
    assert_audit_consistent(&grown).await;
}

/// Messages produced so far, over every partition.
async fn produced_so_far(store: &Store) -> u64 {
    let mut produced = 0;
    for partition in 0..store.partition_count() {
        produced += counters_or_none(store, partition).await.map_or(0, |c| c.0);
    }
    produced
}

#[tokio::test]
async fn a_primary_killed_mid_run_loses_nothing() {
    let mut cluster = TestCluster::start(3, 1).await;
    let prefix = unique_prefix("failover");
    let store = queue_at(&cluster.seed_url(), &prefix, 3).await;
    let mut settings = send_settings("survivor", 1, 0.05);
    settings.concurrency = 200;
    let sender = RunningSender::start(&store, settings);
    let total = 200_000;
    let producer = tokio::spawn({
        let store = store.clone();
        async move { produce(&store, total, 9).await }
    });
    common::wait_until(
        "producing is under way",
        Duration::from_secs(60),
        || async { produced_so_far(&store).await >= 10_000 },
    )
    .await;
    // Partition 1's primary dies while the producer writes and the sender
    // reports; its replica takes over. Batches count as written only once
    // a replica has them, so none is lost with the primary.
    let producing = !producer.is_finished();
    let failover = cluster
        .kill_primary_of(store.partition(1).keys().slot())
        .await;
    assert_ne!(failover.killed, failover.promoted);
    assert!(producing, "the primary died while the producer wrote");
    assert_eq!(producer.await.expect("producer task"), total);
    wait_settled(&store, total, Duration::from_secs(180)).await;
    let summary = sender.stop().await;
    assert_eq!(
        summary.flushed.sent + summary.flushed.dead,
        total,
        "each message settled once: {summary:?}"
    );
    assert_audit_consistent(&store).await;
}

#[tokio::test]
async fn a_partition_moved_mid_run_to_a_new_primary_loses_nothing() {
    let mut cluster = TestCluster::start(3, 0).await;
    let prefix = unique_prefix("reshard");
    let store = queue_at(&cluster.seed_url(), &prefix, 3).await;
    let total = produce(&store, 12_000, 13).await;
    // The new primary has no Functions: calls that reach it load them.
    let newcomer = cluster.add_empty_primary().await;
    let mut settings = send_settings("mover", 3, 0.05);
    settings.concurrency = 50;
    let sender = RunningSender::start(&store, settings);
    let moving = store.partition(2);
    let slot = moving.keys().slot();
    let mut followed_ask = None;
    common::wait_until("sending is under way", Duration::from_secs(60), || async {
        counters_or_none(&store, 2)
            .await
            .is_some_and(|c| c.1 >= 500)
    })
    .await;
    let moved = cluster
        .migrate_slot(slot, &newcomer, async |key: &str| {
            // Senders meet the slot half moved (ASK, TRYAGAIN) meanwhile.
            tokio::time::sleep(Duration::from_millis(150)).await;
            if key == moving.keys().messages() {
                // The stream is on the newcomer, the slot still the old
                // primary's: it answers ASK, and a read follows it.
                let info = moving.inspector().stream_info(key).await;
                followed_ask = Some(info.map(|i| i.entries_added));
            }
        })
        .await;
    assert!(moved >= 4, "the partition's keys moved: {moved}");
    let read = followed_ask.expect("the stream moved while the slot was migrating");
    assert!(
        read.as_ref().is_ok_and(|added| *added > 0),
        "a read of a moved key follows ASK: {read:?}"
    );
    assert_eq!(cluster.owner_of_slot(slot).await, newcomer);
    wait_settled(&store, total, Duration::from_secs(120)).await;
    // The newcomer had no Functions; the first call that needed them there
    // loaded them.
    let mut conn = redis::Client::open(newcomer.as_str())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connects to the newcomer");
    let version: i64 = redis::cmd("FCALL_RO")
        .arg("sms_version")
        .arg(0)
        .query_async(&mut conn)
        .await
        .expect("the library is loaded on the newcomer");
    assert!(version > 0);
    sender.stop().await;
    assert_audit_consistent(&store).await;
}

#[tokio::test]
async fn a_primary_that_lost_the_library_gets_it_back_from_any_reader() {
    let cluster = TestCluster::start(3, 0).await;
    let prefix = unique_prefix("relib");
    let store = queue_at(&cluster.seed_url(), &prefix, 6).await;
    let total = produce(&store, 3_000, 31).await;
    // A primary that serves a partition but not partition 0 loses its
    // Functions (FUNCTION FLUSH, or a restart without its data).
    let home = cluster.owner_of_slot(store.keys().slot()).await;
    let mut owner = home.clone();
    for partition in 1..6 {
        owner = cluster
            .owner_of_slot(store.partition(partition).keys().slot())
            .await;
        if owner != home {
            break;
        }
    }
    assert_ne!(owner, home, "six partitions span more than one primary");
    let mut conn = redis::Client::open(owner.as_str())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query_async::<()>(&mut conn)
        .await
        .expect("FUNCTION FLUSH");
    // The monitor's read goes through the retry policy, which loads the
    // library where it is missing (not only on partition 0's node).
    let snapshot = tokio::time::timeout(
        Duration::from_secs(20),
        store.retrying("read the queue's figures", || {
            sms_alerts::stats::Snapshot::read(&store)
        }),
    )
    .await
    .expect("the read recovers in time")
    .expect("reads");
    assert_eq!(snapshot.produced, total);
    let version: i64 = redis::cmd("FCALL_RO")
        .arg("sms_version")
        .arg(0)
        .query_async(&mut conn)
        .await
        .expect("the library is back on the node that lost it");
    assert!(version > 0);
}

#[tokio::test]
async fn a_batch_found_written_counts_only_once_a_replica_has_it() {
    let cluster = TestCluster::start(3, 1).await;
    let prefix = unique_prefix("wait");
    let store = queue_at(&cluster.seed_url(), &prefix, 1).await;
    let owner = cluster.owner_of_slot(store.keys().slot()).await;
    let owner_port = owner.rsplit(':').next().expect("port").to_owned();
    // The owner's replica.
    let mut replica = None;
    for url in cluster.node_urls() {
        let mut conn = redis::Client::open(url.as_str())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connects");
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut conn)
            .await
            .expect("INFO");
        if info.contains("role:slave") && info.contains(&format!("master_port:{owner_port}")) {
            replica = Some(conn);
        }
    }
    let mut replica = replica.expect("the owner has a replica");
    assert_eq!(
        store.replicas().await.expect("slot map"),
        1,
        "the map knows it"
    );
    let producer = store.producer();
    let mut generator = sms_alerts::generator::MessageGenerator::seeded(1);
    let messages: Vec<_> = (0..10).map(|_| generator.next_message(0)).collect();
    let batch = producer.prepare_batch("wait-run", 1, &messages);
    // The replica stops answering for 8 s: the write lands on the primary
    // but is not confirmed within WAIT's 2 s.
    let sleeper = tokio::spawn(async move {
        redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(8)
            .query_async::<()>(&mut replica)
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let first = producer.write_batch(&batch).await;
    assert!(
        matches!(first, Err(StoreError::NotReplicated { .. })),
        "{first:?}"
    );
    // Sent again, the batch is found written; that still counts only once a
    // replica confirms it, which it cannot yet.
    let again = producer.write_batch(&batch).await;
    assert!(
        matches!(again, Err(StoreError::NotReplicated { .. })),
        "a batch found written while no replica has it: {again:?}"
    );
    // The client may give up on DEBUG SLEEP's reply; the replica sleeps on.
    let _ = sleeper.await;
    common::wait_until(
        "the batch is confirmed once the replica is back",
        Duration::from_secs(30),
        || async {
            matches!(
                producer.write_batch(&batch).await,
                Ok(BatchWrite::AlreadyWritten)
            )
        },
    )
    .await;
}
