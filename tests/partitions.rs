//! A sender over a queue of several partitions: it reads every partition,
//! none starves another, a partition added while it runs is read within
//! seconds, and work left pending under its name in any partition is taken
//! back when it restarts. Counters are read straight from Redis, partition
//! by partition.

mod common;

use std::time::Duration;

use common::{RunningSender, raw, read_as, send_settings, start_redis, unique_prefix};
use sms_alerts::store::{QueueOptions, Store};

/// Writes `count` messages into partition `partition` of `store`'s queue,
/// as the producer would: the entries and the `produced` counter together.
async fn fill(url: &str, store: &Store, partition: u32, count: u64) {
    let keys = store.partition(partition).keys().clone();
    let mut conn = raw(url).await;
    for chunk in (0..count).collect::<Vec<_>>().chunks(500) {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for i in chunk {
            pipe.cmd("XADD")
                .arg(keys.messages())
                .arg("*")
                .arg("recipient")
                .arg(format!("+4915{partition}{i:08}"))
                .arg("body")
                .arg(format!("alert {i}"))
                .arg("created_ms")
                .arg(1_700_000_000_000_u64)
                .ignore();
        }
        pipe.cmd("HINCRBY")
            .arg(keys.stats())
            .arg("produced")
            .arg(chunk.len())
            .ignore();
        pipe.query_async::<()>(&mut conn).await.expect("writes");
    }
}

/// One partition's counters and pending count, read directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    produced: u64,
    sent: u64,
    dead: u64,
    pending: u64,
}

async fn counts(url: &str, store: &Store, partition: u32) -> Counts {
    let keys = store.partition(partition).keys().clone();
    let mut conn = raw(url).await;
    let (produced, sent, dead): (Option<u64>, Option<u64>, Option<u64>) = redis::cmd("HMGET")
        .arg(keys.stats())
        .arg("produced")
        .arg("sent")
        .arg("dead")
        .query_async(&mut conn)
        .await
        .expect("HMGET");
    let summary: redis::Value = redis::cmd("XPENDING")
        .arg(keys.messages())
        .arg(store.group())
        .query_async(&mut conn)
        .await
        .expect("XPENDING");
    let pending = match summary {
        redis::Value::Array(fields) => match fields.first() {
            Some(redis::Value::Int(n)) => *n as u64,
            _ => 0,
        },
        _ => 0,
    };
    Counts {
        produced: produced.unwrap_or(0),
        sent: sent.unwrap_or(0),
        dead: dead.unwrap_or(0),
        pending,
    }
}

/// Whether every message of `partition` is settled, each once.
async fn settled(url: &str, store: &Store, partition: u32) -> bool {
    let c = counts(url, store, partition).await;
    c.pending == 0 && c.sent + c.dead == c.produced
}

/// Waits until partitions 0 to `partitions` - 1 are all settled.
async fn wait_all_settled(url: &str, store: &Store, partitions: u32, deadline: Duration) {
    common::wait_until("every partition is settled", deadline, || async move {
        for partition in 0..partitions {
            if !settled(url, store, partition).await {
                return false;
            }
        }
        true
    })
    .await;
}

async fn queue(url: &str, test: &str, partitions: u32) -> Store {
    let store = Store::connect(&common::queue(url, &unique_prefix(test)))
        .await
        .expect("connects");
    let options = QueueOptions {
        partitions: Some(partitions),
        ..QueueOptions::default()
    };
    let (opened, _, _) = store.migrate(&options).await.expect("migrates");
    assert_eq!(opened.partition_count(), partitions);
    opened
}

#[tokio::test]
async fn two_senders_settle_every_partition_exactly_once() {
    let redis = start_redis().await;
    let store = queue(&redis.url, "spread", 4).await;
    // Uneven on purpose; partition 1 stays empty.
    let sizes = [3_000, 0, 700, 1_800];
    for (partition, size) in (0..).zip(sizes) {
        fill(&redis.url, &store, partition, size).await;
    }
    let a = RunningSender::start(&store, send_settings("a", 2, 0.2));
    let b = RunningSender::start(&store, send_settings("b", 3, 0.1));
    wait_all_settled(&redis.url, &store, 4, Duration::from_secs(60)).await;
    let (a, b) = (a.stop().await, b.stop().await);
    let total: u64 = sizes.iter().sum();
    for (partition, size) in (0..).zip(sizes) {
        let c = counts(&redis.url, &store, partition).await;
        assert_eq!(c.produced, size, "partition {partition}: {c:?}");
        assert_eq!(c.sent + c.dead, size, "partition {partition}: {c:?}");
    }
    let sent = a.flushed.sent + b.flushed.sent;
    let dead = a.flushed.dead + b.flushed.dead;
    assert_eq!(sent + dead, total, "the senders' own totals: {a:?} {b:?}");
    assert!(
        a.flushed.sent > 0 && b.flushed.sent > 0,
        "both senders worked"
    );
}

#[tokio::test]
async fn a_busy_partition_does_not_starve_a_small_one() {
    let redis = start_redis().await;
    let store = queue(&redis.url, "fair", 4).await;
    fill(&redis.url, &store, 0, 6_000).await;
    let mut settings = send_settings("solo", 2, 0.0);
    settings.concurrency = 8;
    let sender = RunningSender::start(&store, settings);
    common::wait_until("the sender is busy", Duration::from_secs(30), || {
        let (url, store) = (redis.url.clone(), store.clone());
        async move { counts(&url, &store, 0).await.sent >= 200 }
    })
    .await;
    fill(&redis.url, &store, 3, 50).await;
    common::wait_until(
        "the small partition is settled",
        Duration::from_secs(30),
        || {
            let (url, store) = (redis.url.clone(), store.clone());
            async move { settled(&url, &store, 3).await }
        },
    )
    .await;
    let busy = counts(&redis.url, &store, 0).await;
    // The small partition was served while the busy one still had a
    // backlog: it did not wait for it to drain.
    assert!(
        busy.sent + busy.dead < busy.produced,
        "the small partition waited for the busy one: {busy:?}"
    );
    sender.stop().await;
}

#[tokio::test]
async fn a_partition_added_while_senders_run_is_read() {
    let redis = start_redis().await;
    let store = queue(&redis.url, "grow", 2).await;
    fill(&redis.url, &store, 1, 100).await;
    let sender = RunningSender::start(&store, send_settings("grower", 1, 0.0));
    common::wait_until("partition 1 is settled", Duration::from_secs(30), || {
        let (url, store) = (redis.url.clone(), store.clone());
        async move { settled(&url, &store, 1).await }
    })
    .await;
    let options = QueueOptions {
        partitions: Some(4),
        ..QueueOptions::default()
    };
    let (grown, _, identity) = store.migrate(&options).await.expect("grows");
    assert_eq!(identity.partitions, (2, 4));
    fill(&redis.url, &grown, 3, 300).await;
    common::wait_until(
        "the added partition is settled",
        Duration::from_secs(30),
        || {
            let (url, store) = (redis.url.clone(), grown.clone());
            async move { settled(&url, &store, 3).await }
        },
    )
    .await;
    let summary = sender.stop().await;
    assert_eq!(summary.flushed.sent, 400, "{summary:?}");
    // Shrinking is refused, naming both counts.
    let shrink = QueueOptions {
        partitions: Some(3),
        ..QueueOptions::default()
    };
    let err = store.migrate(&shrink).await.expect_err("never shrinks");
    let text = err.to_string();
    assert!(
        text.contains("has 4 partitions") && text.contains("--partitions 3"),
        "{text}"
    );
}

#[tokio::test]
async fn a_restarted_sender_takes_back_its_work_in_every_partition() {
    let redis = start_redis().await;
    let store = queue(&redis.url, "resume", 3).await;
    for partition in 0..3 {
        fill(&redis.url, &store, partition, 40).await;
    }
    // A sender of this name died holding 10 messages in partitions 0 and 2.
    let held_0 = read_as(&redis.url, &store.partition(0), "phoenix", 10).await;
    let held_2 = read_as(&redis.url, &store.partition(2), "phoenix", 10).await;
    assert_eq!((held_0.len(), held_2.len()), (10, 10));
    let sender = RunningSender::start(&store, send_settings("phoenix", 1, 0.0));
    wait_all_settled(&redis.url, &store, 3, Duration::from_secs(30)).await;
    let summary = sender.stop().await;
    assert_eq!(summary.dispatched.recovered, 20, "{summary:?}");
    assert_eq!(summary.flushed.sent, 120, "{summary:?}");
}

#[tokio::test]
async fn a_sender_given_partitions_reads_only_those() {
    let redis = start_redis().await;
    let store = queue(&redis.url, "pinned", 4).await;
    for partition in 0..4 {
        fill(&redis.url, &store, partition, 200).await;
    }
    let mut settings = send_settings("pinned", 1, 0.0);
    settings.partitions = Some(vec![1, 3]);
    let sender = RunningSender::start(&store, settings);
    for partition in [1, 3] {
        common::wait_until(
            "its partitions are settled",
            Duration::from_secs(30),
            || settled(&redis.url, &store, partition),
        )
        .await;
    }
    let summary = sender.stop().await;
    assert_eq!(summary.flushed.sent, 400, "{summary:?}");
    for partition in [0, 2] {
        let c = counts(&redis.url, &store, partition).await;
        assert_eq!((c.sent, c.pending), (0, 0), "partition {partition}: {c:?}");
    }
    // A partition the queue lacks is refused before anything is read:
    // in process, and by the binary with exit code 2 naming it.
    let mut settings = send_settings("astray", 1, 0.0);
    settings.partitions = Some(vec![2, 7]);
    let err = sms_alerts::send::run(store.clone(), settings, Default::default())
        .await
        .expect_err("partition 7 does not exist");
    assert!(err.to_string().contains("'7'"), "{err}");
    let prefix = store.keys().messages();
    let prefix = prefix
        .trim_start_matches('{')
        .split(':')
        .next()
        .expect("prefix");
    let output = common::bin()
        .args(["--redis-url", &redis.url, "--prefix", prefix])
        .args(["send", "--name", "astray", "--read-partitions", "1,7"])
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("'7'") && stderr.contains("4 partition"),
        "{stderr}"
    );
}

/// Deletes every key of `partition`, as a flushed node or one restarted
/// without its data would lose them.
async fn lose_partition(url: &str, store: &Store, partition: u32) {
    let mut conn = raw(url).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(store.partition(partition).keys().all_pattern())
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    assert!(!keys.is_empty());
    redis::cmd("DEL")
        .arg(&keys)
        .query_async::<()>(&mut conn)
        .await
        .expect("DEL");
}

#[tokio::test]
async fn a_lost_partition_is_never_created_again_by_migrate() {
    let redis = start_redis().await;
    let store = queue(&redis.url, "lost", 3).await;
    fill(&redis.url, &store, 2, 50).await;
    lose_partition(&redis.url, &store, 2).await;
    for attempt in [None, Some(3), Some(4)] {
        let options = QueueOptions {
            partitions: attempt,
            ..QueueOptions::default()
        };
        let err = store
            .migrate(&options)
            .await
            .expect_err("a lost partition stops migrate");
        assert!(err.is_queue_state(), "{err}");
        assert!(err.to_string().contains("partition(s) 2 "), "{err}");
    }
    let err = store.open().await.expect_err("and every process");
    assert!(err.is_queue_state(), "{err}");
    assert!(
        !redis_exists(&redis.url, &store.partition(2).keys().queue()).await,
        "nothing was re-created"
    );
    // Partition 0 lost while the others remain: not a new queue either.
    lose_partition(&redis.url, &store, 0).await;
    let err = store
        .migrate(&QueueOptions::default())
        .await
        .expect_err("partition 0 lost stops migrate");
    assert!(err.to_string().contains("partition 0"), "{err}");
    assert!(err.to_string().contains("partitions 1 remain"), "{err}");
}

async fn redis_exists(url: &str, key: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(key)
        .query_async(&mut raw(url).await)
        .await
        .expect("EXISTS")
}

#[tokio::test]
async fn a_partition_count_lowered_by_hand_stops_processes_instead_of_stranding_work() {
    let redis = start_redis().await;
    let store = queue(&redis.url, "lowered", 4).await;
    for partition in 0..4 {
        fill(&redis.url, &store, partition, 30).await;
    }
    let sender = RunningSender::start(&store, send_settings("watcher", 1, 0.0));
    wait_all_settled(&redis.url, &store, 4, Duration::from_secs(30)).await;
    redis::cmd("HSET")
        .arg(store.keys().queue())
        .arg("partitions")
        .arg(2)
        .query_async::<()>(&mut raw(&redis.url).await)
        .await
        .expect("HSET");
    // The running sender notices at its next look at the count.
    let err = sender
        .join(Duration::from_secs(30))
        .await
        .expect_err("the sender stops");
    let text = err.to_string();
    assert!(text.contains("lowered by hand"), "{text}");
    for opened in [store.open().await, store.open_read_only().await] {
        let err = opened.expect_err("a new process stops too");
        assert!(err.is_queue_state(), "{err}");
        assert!(err.to_string().contains("partition(s) 2 "), "{err}");
    }
    let err = store
        .migrate(&QueueOptions::default())
        .await
        .expect_err("migrate does not take the lower count");
    assert!(err.to_string().contains("partition(s) 2, 3 "), "{err}");
    // repair sets the count back from what Redis holds; so too for one
    // that is no number.
    for damage in ["2", "x"] {
        redis::cmd("HSET")
            .arg(store.keys().queue())
            .arg("partitions")
            .arg(damage)
            .query_async::<()>(&mut raw(&redis.url).await)
            .await
            .expect("HSET");
        let plan = sms_alerts::repair::plan(&store, "end")
            .await
            .expect("plans");
        let text = plan.to_text();
        assert!(
            text.contains("set counter partitions of") && text.contains("to 4"),
            "{damage}: {text}"
        );
        sms_alerts::repair::apply(&store, &plan)
            .await
            .expect("repairs");
        let opened = store.open().await.expect("opens after the repair");
        assert_eq!(opened.partition_count(), 4);
    }
}

#[tokio::test]
async fn a_fresh_queue_holds_nothing_back_from_before_its_first_entry() {
    let redis = start_redis().await;
    let store = queue(&redis.url, "floor", 2).await;
    fill(&redis.url, &store, 1, 20).await;
    let snapshot = sms_alerts::stats::Snapshot::read(&store)
        .await
        .expect("snapshot");
    let (group, age_ms) = snapshot.floor.expect("the group needs the unread entries");
    assert_eq!(group, "sms");
    assert!(
        age_ms < 60_000,
        "the floor is the first unread entry, not id 0-0: {age_ms} ms"
    );
}

#[tokio::test]
async fn a_grow_that_did_not_end_is_no_damage_and_the_next_migrate_ends_it() {
    let redis = start_redis().await;
    let store = queue(&redis.url, "halfgrown", 3).await;
    fill(&redis.url, &store, 1, 10).await;
    // A migrate --partitions 4 stopped after creating partition 3 and
    // before recording the count: partition 3 exists, empty.
    let options = QueueOptions {
        partitions: Some(4),
        ..QueueOptions::default()
    };
    store.migrate(&options).await.expect("grows");
    redis::cmd("HSET")
        .arg(store.keys().queue())
        .arg("partitions")
        .arg(3)
        .query_async::<()>(&mut raw(&redis.url).await)
        .await
        .expect("HSET");
    let opened = store
        .open()
        .await
        .expect("processes open the queue meanwhile");
    assert_eq!(opened.partition_count(), 3);
    store
        .migrate(&QueueOptions::default())
        .await
        .expect("a plain migrate leaves it be");
    let (grown, _, identity) = store.migrate(&options).await.expect("ends the grow");
    assert_eq!(identity.partitions, (3, 4));
    assert_eq!(grown.partition_count(), 4);
}
