//! A queue made by the previous release (Functions library version 7, no
//! partitions) keeps working after this one opens it: the library is
//! upgraded, the queue stays one partition with its messages, and `migrate
//! --partitions` grows it with the same identity. The previous library is
//! kept as it shipped in `tests/fixtures/functions-v7.lua`.

mod common;

use std::time::Duration;

use common::{RunningSender, raw, send_settings, start_redis, unique_prefix};
use sms_alerts::store::{QueueOptions, Store};

const PREVIOUS_LIBRARY: &str = include_str!("fixtures/functions-v7.lua");
const PREVIOUS_STEPS: [&str; 7] = [
    "0001_functions",
    "0002_sender_prune",
    "0003_latency_histogram",
    "0004_report_bucket_names",
    "0005_report_bulk_ack",
    "0006_produce_function",
    "0007_queue_identity",
];

/// Creates a queue under `prefix` as the previous release's `migrate` did,
/// and writes `count` messages into it as its producer did.
async fn previous_release_queue(url: &str, prefix: &str, count: u64) {
    let mut conn = raw(url).await;
    redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(PREVIOUS_LIBRARY)
        .query_async::<()>(&mut conn)
        .await
        .expect("the previous library loads");
    let tag = format!("{{{prefix}:0}}");
    let key = |name: &str| format!("{tag}:{name}");
    for step in PREVIOUS_STEPS {
        redis::cmd("HSETNX")
            .arg(key("migrations"))
            .arg(step)
            .arg(1)
            .query_async::<()>(&mut conn)
            .await
            .expect("records the step");
    }
    redis::cmd("FCALL")
        .arg("sms_create")
        .arg(5)
        .arg(key("queue"))
        .arg(key("messages"))
        .arg(key("stats"))
        .arg(key("dead"))
        .arg(key("migrations"))
        .arg("senders")
        .arg("00000000000000aa")
        .arg("")
        .arg("")
        .arg(3_600_000)
        .arg(604_800_000)
        .arg("0007_queue_identity")
        .query_async::<redis::Value>(&mut conn)
        .await
        .expect("the previous sms_create creates the queue");
    let mut pipe = redis::pipe();
    pipe.atomic();
    for i in 0..count {
        pipe.cmd("XADD")
            .arg(key("messages"))
            .arg("*")
            .arg("recipient")
            .arg(format!("+4915100{i:06}"))
            .arg("body")
            .arg("from the previous release")
            .arg("created_ms")
            .arg(1_700_000_000_000_u64)
            .ignore();
    }
    pipe.cmd("HINCRBY")
        .arg(key("stats"))
        .arg("produced")
        .arg(count)
        .ignore();
    pipe.query_async::<()>(&mut conn)
        .await
        .expect("writes the messages");
}

async fn library_version(url: &str) -> i64 {
    redis::cmd("FCALL_RO")
        .arg("sms_version")
        .arg(0)
        .query_async(&mut raw(url).await)
        .await
        .expect("the library answers")
}

#[tokio::test]
async fn a_queue_of_the_previous_release_works_and_grows() {
    let redis = start_redis().await;
    let prefix = unique_prefix("upgrade");
    previous_release_queue(&redis.url, &prefix, 2_000).await;
    assert_eq!(library_version(&redis.url).await, 7);

    let store = Store::connect(&common::queue(&redis.url, &prefix))
        .await
        .expect("connects");
    let opened = store.open().await.expect("the old queue opens");
    assert_eq!(opened.partition_count(), 1);
    assert_eq!(opened.epoch(), "00000000000000aa", "its identity is kept");
    assert!(
        library_version(&redis.url).await > 7,
        "the library upgraded"
    );

    let sender = RunningSender::start(&opened, send_settings("after-upgrade", 1, 0.0));
    common::wait_until("the old messages are sent", Duration::from_secs(30), || {
        common::all_settled(&opened, 2_000)
    })
    .await;

    let options = QueueOptions {
        partitions: Some(3),
        ..QueueOptions::default()
    };
    let (grown, _, identity) = store.migrate(&options).await.expect("grows");
    assert_eq!(identity.partitions, (1, 3));
    assert_eq!(identity.epoch, "00000000000000aa");
    common::produce_n(&grown, 5, 3_000).await;
    common::wait_until("the new messages are sent", Duration::from_secs(30), || {
        common::all_settled(&grown, 5_000)
    })
    .await;
    let summary = sender.stop().await;
    assert_eq!(summary.flushed.sent, 5_000, "{summary:?}");
    let snapshot = sms_alerts::stats::Snapshot::read(&grown)
        .await
        .expect("snapshot");
    assert_eq!(snapshot.partitions.len(), 3);
    assert!(
        snapshot.partitions.iter().all(|p| p.produced > 0),
        "the new messages spread over the partitions: {:?}",
        snapshot.partitions
    );
    let audit = sms_alerts::audit::run(&grown, sms_alerts::audit::DEFAULT_PAGE)
        .await
        .expect("audits");
    assert!(audit.is_consistent(), "{}", audit.to_text());
}
