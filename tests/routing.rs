//! The producer on a queue of several partitions: each message goes where
//! its routing says (by recipient, by one key, round robin, one partition),
//! every message lands exactly once across the partitions, also when a run
//! is stopped and resumed after the queue grew (the run keeps routing over
//! the partitions it started with), and a partition the queue lacks is
//! refused before anything is recorded.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use sms_alerts::generator::MessageGenerator;
use sms_alerts::keys::Keys;
use sms_alerts::message::{Message, field};
use sms_alerts::routing::{Routing, partition_of_key};
use sms_alerts::settings::ProduceSettings;
use sms_alerts::store::{QueueOptions, RunPlan, RunRoute, RunState, Store};
use tokio_util::sync::CancellationToken;

const PARTITIONS: u32 = 6;
const COUNT: u64 = 30_000;

/// A store on a new queue of `partitions` partitions.
async fn partitioned(url: &str, prefix: &str, partitions: u32) -> Store {
    let options = QueueOptions {
        partitions: Some(partitions),
        ..QueueOptions::default()
    };
    store_with(url, prefix, &options).await
}

/// Produces `count` messages with seed `seed`, routed by `routing`, to the end.
async fn produce(store: &Store, seed: u64, count: u64, routing: Routing) {
    let settings = ProduceSettings {
        count,
        seed: Some(seed),
        batch: 500,
        routing,
        ..ProduceSettings::default()
    };
    let summary = sms_alerts::produce::run(store, &settings, &CancellationToken::new())
        .await
        .expect("produces");
    assert_eq!(summary.count, count, "expected the run to write {count}");
}

/// The recipients and bodies in each of the first `partitions` partitions'
/// streams, in stream order.
async fn partition_messages(
    url: &str,
    prefix: &str,
    partitions: u32,
) -> Vec<Vec<(String, String)>> {
    let mut conn = raw(url).await;
    let mut all = Vec::new();
    for partition in 0..partitions {
        let key = Keys::for_partition(prefix, partition).messages();
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .expect("XRANGE");
        let text = |id: &redis::streams::StreamId, name: &str| -> String {
            id.get(name)
                .unwrap_or_else(|| panic!("entry {} of {key} has no {name}", id.id))
        };
        all.push(
            reply
                .ids
                .iter()
                .map(|id| (text(id, field::RECIPIENT), text(id, field::BODY)))
                .collect(),
        );
    }
    all
}

/// Each partition's `produced` counter.
async fn produced(url: &str, prefix: &str, partitions: u32) -> Vec<u64> {
    let mut conn = raw(url).await;
    let mut counts = Vec::new();
    for partition in 0..partitions {
        let produced: Option<u64> = redis::cmd("HGET")
            .arg(Keys::for_partition(prefix, partition).stats())
            .arg("produced")
            .query_async(&mut conn)
            .await
            .expect("HGET produced");
        counts.push(produced.unwrap_or(0));
    }
    counts
}

/// Asserts that the partitions hold each message seed `seed` generates for
/// `count` exactly once, with each partition's `produced` counting its
/// stream.
async fn assert_each_message_once(url: &str, prefix: &str, partitions: u32, seed: u64, count: u64) {
    let streams = partition_messages(url, prefix, partitions).await;
    let lengths: Vec<u64> = streams.iter().map(|s| s.len() as u64).collect();
    assert_eq!(
        produced(url, prefix, partitions).await,
        lengths,
        "expected each partition's `produced` to count its stream"
    );
    let mut found: HashMap<(String, String), i64> = HashMap::new();
    for message in streams.into_iter().flatten() {
        *found.entry(message).or_default() += 1;
    }
    let mut generator = MessageGenerator::seeded(seed);
    for _ in 0..count {
        let message = generator.next_message(0);
        *found.entry((message.recipient, message.body)).or_default() -= 1;
    }
    let wrong: Vec<_> = found.iter().filter(|(_, n)| **n != 0).take(5).collect();
    assert!(
        wrong.is_empty(),
        "expected each of the {count} generated messages exactly once across {partitions} \
         partitions ({lengths:?}); off by (message, found - generated): {wrong:?}"
    );
}

/// Asserts that the queue's one run has finished with every batch written.
async fn assert_run_finished(store: &Store) {
    let runs = store.inspector().all_runs().await.expect("runs");
    assert!(
        runs.len() == 1
            && runs[0].state == RunState::Finished
            && runs[0].batches_written == runs[0].batches,
        "expected one finished run with every batch written, got {runs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_go_to_their_recipients_partition_by_default() {
    let redis = start_redis().await;
    let url = redis.url.as_str();
    let prefix = unique_prefix("recipient");
    let store = partitioned(url, &prefix, PARTITIONS).await;
    produce(&store, 7, COUNT, Routing::Recipient).await;

    assert_each_message_once(url, &prefix, PARTITIONS, 7, COUNT).await;
    let streams = partition_messages(url, &prefix, PARTITIONS).await;
    for (partition, messages) in (0u32..).zip(&streams) {
        assert!(
            !messages.is_empty(),
            "expected partition {partition} to get messages"
        );
        let astray: Vec<&String> = messages
            .iter()
            .map(|(recipient, _)| recipient)
            .filter(|r| partition_of_key(r.as_bytes(), PARTITIONS) != partition)
            .take(3)
            .collect();
        assert!(
            astray.is_empty(),
            "expected partition {partition} to hold only its recipients, found {astray:?}"
        );
    }
    assert_run_finished(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_spreads_evenly_and_a_key_or_a_partition_keeps_one() {
    let redis = start_redis().await;
    let url = redis.url.as_str();

    let prefix = unique_prefix("round-robin");
    let store = partitioned(url, &prefix, PARTITIONS).await;
    produce(&store, 8, COUNT, Routing::RoundRobin).await;
    assert_each_message_once(url, &prefix, PARTITIONS, 8, COUNT).await;
    let even = COUNT / u64::from(PARTITIONS);
    let lengths = produced(url, &prefix, PARTITIONS).await;
    assert!(
        lengths.iter().all(|n| n.abs_diff(even) <= 1),
        "expected round robin to put {even} ± 1 in each partition, got {lengths:?}"
    );

    let key = "region-7";
    let prefix = unique_prefix("key");
    let store = partitioned(url, &prefix, PARTITIONS).await;
    produce(&store, 9, 2_000, Routing::Key(key.to_owned())).await;
    assert_each_message_once(url, &prefix, PARTITIONS, 9, 2_000).await;
    let home = partition_of_key(key.as_bytes(), PARTITIONS) as usize;
    let lengths = produced(url, &prefix, PARTITIONS).await;
    assert!(
        lengths[home] == 2_000 && lengths.iter().sum::<u64>() == 2_000,
        "expected all 2000 in partition {home} (that of key {key}), got {lengths:?}"
    );

    let prefix = unique_prefix("partition");
    let store = partitioned(url, &prefix, PARTITIONS).await;
    produce(&store, 10, 2_000, Routing::Partition(2)).await;
    assert_each_message_once(url, &prefix, PARTITIONS, 10, 2_000).await;
    let lengths = produced(url, &prefix, PARTITIONS).await;
    assert_eq!(
        lengths,
        [0, 0, 2_000, 0, 0, 0],
        "expected all in partition 2"
    );
}

/// Starts a run of `COUNT` in batches of 10 and stops it once some batches
/// are whole; returns its id.
async fn stopped_run(store: &Store, seed: u64, routing: Routing) -> String {
    let settings = ProduceSettings {
        count: COUNT,
        seed: Some(seed),
        batch: 10,
        run_id: Some("r1".to_owned()),
        routing,
        ..ProduceSettings::default()
    };
    let shutdown = CancellationToken::new();
    let producing = {
        let (store, shutdown) = (store.clone(), shutdown.clone());
        tokio::spawn(async move { sms_alerts::produce::run(&store, &settings, &shutdown).await })
    };
    wait_until(
        "the run has written 20 batches",
        Duration::from_secs(30),
        || async {
            store
                .inspector()
                .all_runs()
                .await
                .is_ok_and(|runs| runs.iter().any(|run| run.batches_written >= 20))
        },
    )
    .await;
    shutdown.cancel();
    let summary = producing.await.expect("joins").expect("stops cleanly");
    assert!(
        summary.interrupted && summary.count < COUNT,
        "expected the run stopped mid-way, it wrote {} of {COUNT}",
        summary.count
    );
    let runs = store.inspector().all_runs().await.expect("runs");
    assert!(
        runs.len() == 1
            && runs[0].state == RunState::Stopped
            && runs[0].batches_written < runs[0].batches,
        "expected one stopped run with batches missing, got {runs:?}"
    );
    summary.run_id
}

/// Resumes run `run_id` to the end; returns the messages it wrote and those
/// it found written.
async fn resume(store: &Store, run_id: &str) -> (u64, u64) {
    let settings = ProduceSettings {
        resume: Some(run_id.to_owned()),
        ..ProduceSettings::default()
    };
    let summary = sms_alerts::produce::run(store, &settings, &CancellationToken::new())
        .await
        .expect("resumes");
    assert!(!summary.interrupted, "expected the resumed run to finish");
    (summary.count, summary.already_written)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_run_resumes_to_each_message_once_across_partitions() {
    let redis = start_redis().await;
    let url = redis.url.as_str();
    let prefix = unique_prefix("resume");
    let store = partitioned(url, &prefix, PARTITIONS).await;
    let run = stopped_run(&store, 11, Routing::Recipient).await;

    let (now, before) = resume(&store, &run).await;
    assert_eq!(
        now + before,
        COUNT,
        "expected the resumed run to make up its count"
    );
    assert_each_message_once(url, &prefix, PARTITIONS, 11, COUNT).await;
    assert_run_finished(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_resumed_after_the_queue_grew_keeps_its_partitions() {
    let redis = start_redis().await;
    let url = redis.url.as_str();
    let prefix = unique_prefix("grown");
    let store = partitioned(url, &prefix, PARTITIONS).await;
    let run = stopped_run(&store, 12, Routing::RoundRobin).await;

    let grown = QueueOptions {
        partitions: Some(8),
        ..QueueOptions::default()
    };
    let (store, _, identity) = Store::connect(&queue(url, &prefix))
        .await
        .expect("connects")
        .migrate(&grown)
        .await
        .expect("the queue grows");
    assert_eq!(identity.partitions, (PARTITIONS, 8));

    let (now, before) = resume(&store, &run).await;
    assert_eq!(
        now + before,
        COUNT,
        "expected the resumed run to make up its count"
    );
    assert_each_message_once(url, &prefix, 8, 12, COUNT).await;
    let lengths = produced(url, &prefix, 8).await;
    let even = COUNT / u64::from(PARTITIONS);
    assert!(
        lengths[..6].iter().all(|n| n.abs_diff(even) <= 1) && lengths[6..] == [0, 0],
        "expected the run to keep its round robin over its 6 partitions, got {lengths:?}"
    );
    assert_run_finished(&store).await;

    // The next run routes over the queue's 8 partitions.
    produce(&store, 13, 8_000, Routing::RoundRobin).await;
    let after = produced(url, &prefix, 8).await;
    assert!(
        after.iter().zip(&lengths).all(|(a, b)| a - b == 1_000),
        "expected a new run to spread over all 8 partitions, got {after:?} after {lengths:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_the_queue_lacks_is_refused_with_exit_2() {
    let redis = start_redis().await;
    let url = redis.url.as_str();
    let prefix = unique_prefix("beyond");
    let store = partitioned(url, &prefix, PARTITIONS).await;

    let output = bin()
        .args([
            "--redis-url",
            url,
            "--prefix",
            &prefix,
            "produce",
            "--partition",
            "6",
        ])
        .output()
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.code() == Some(2)
            && stderr.contains("'6'")
            && stderr.contains("has 6 partition"),
        "expected exit 2 naming partition 6 and the count 6, got {:?}: {stderr}",
        output.status.code()
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.is_empty(), "no run is announced: {stdout}");
    let runs = store.inspector().all_runs().await.expect("runs");
    assert!(runs.is_empty(), "expected no run recorded, got {runs:?}");
}

#[test]
fn routing_flags_exclude_each_other_and_are_explained() {
    for (args, names) in [
        (&["--key", "a", "--no-key"][..], &["--key", "--no-key"][..]),
        (
            &["--key", "a", "--partition", "1"],
            &["--key", "--partition"],
        ),
        (
            &["--no-key", "--partition", "1"],
            &["--no-key", "--partition"],
        ),
        (&["--resume", "r1", "--key", "a"], &["--resume", "--key"]),
        (&["--partition", "two"], &["--partition", "two"]),
    ] {
        let output = bin()
            .arg("produce")
            .args(args)
            .output()
            .expect("the binary runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.code() == Some(2) && names.iter().all(|name| stderr.contains(name)),
            "expected produce {args:?} to exit 2 naming {names:?}, got {:?}: {stderr}",
            output.status.code()
        );
    }
    let output = bin().args(["produce", "--help"]).output().expect("runs");
    let help = String::from_utf8_lossy(&output.stdout);
    for option in [
        "--key",
        "--no-key",
        "--partition",
        "SMS_KEY",
        "SMS_NO_KEY",
        "SMS_PARTITION",
    ] {
        assert!(
            help.contains(option),
            "produce --help lacks {option}:\n{help}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_died_between_a_batchs_parts_resumes_writing_only_the_rest() {
    let redis = start_redis().await;
    let url = redis.url.as_str();
    let prefix = unique_prefix("parts");
    let store = partitioned(url, &prefix, PARTITIONS).await;

    // A producer that wrote batches 1-3 whole, batch 4 but its head, and of
    // batch 5 only its part on partition 3, then died: played with the
    // library, routed round robin from the seed's partition as the producer
    // routes (message i of the run to partition (seed + i) mod 6).
    let plan = RunPlan {
        count: 100,
        seed: 14,
        batch: 10,
    };
    let route = RunRoute {
        partitions: PARTITIONS,
        routing: Routing::RoundRobin,
    };
    store
        .producer()
        .start_run("died", &plan, &route, "gone", Duration::from_millis(300))
        .await
        .expect("the run starts");
    let mut generator = MessageGenerator::seeded(plan.seed);
    let mut index = plan.seed;
    let mut written_before = 0;
    for seq in 1..=5 {
        let mut parts: Vec<Vec<Message>> = vec![Vec::new(); PARTITIONS as usize];
        for _ in 0..plan.batch {
            parts[(index % u64::from(PARTITIONS)) as usize].push(generator.next_message(1));
            index += 1;
        }
        let written: Vec<u32> = match seq {
            1..=3 => (0..PARTITIONS).rev().collect(),
            4 => (1..PARTITIONS).collect(),
            _ => vec![3],
        };
        for partition in written {
            let producer = store.partition(partition).producer();
            let part = producer.prepare_batch("died", seq, &parts[partition as usize]);
            written_before += part.len() as u64;
            producer
                .write_batch(&part)
                .await
                .expect("the part is written");
        }
    }
    let died = || async {
        store.inspector().all_runs().await.is_ok_and(|runs| {
            runs.iter()
                .any(|run| run.state == RunState::Died && run.batches_written == 3)
        })
    };
    wait_until(
        "run died counts as died with 3 whole batches",
        Duration::from_secs(10),
        died,
    )
    .await;

    let (now, before) = resume(&store, "died").await;
    assert_eq!(
        (now, before),
        (plan.count - written_before, written_before),
        "expected the resumed run to find the messages of the parts written, and write the rest"
    );
    assert_each_message_once(url, &prefix, PARTITIONS, plan.seed, plan.count).await;
    let lengths = produced(url, &prefix, PARTITIONS).await;
    assert!(
        lengths.iter().all(|n| n.abs_diff(100 / 6) <= 1),
        "expected the round robin to go on where it was, got {lengths:?}"
    );
    assert_run_finished(&store).await;
}
