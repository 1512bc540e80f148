//! The audit against a real Redis where its input is odd: the Functions
//! library flushed (code, loaded again, not lost state), a dead letter
//! that says no reason, a partition of another queue's epoch, and a
//! channel the queue's list no longer names.

mod common;

use common::*;
use sms_alerts::audit;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_functions_library_is_loaded_again_and_the_books_still_balance() {
    let redis = start_redis().await;
    let store = store(&redis.url, &unique_prefix("flushed")).await;
    produce_n(&store, 31, 40).await;
    let _: () = redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query_async(&mut raw(&redis.url).await)
        .await
        .expect("FUNCTION FLUSH");
    let report = audit::run(&store, 16).await.expect("audits");
    assert!(report.is_consistent(), "{}", report.to_text());
    assert_eq!((report.produced, report.queued), (40, 40));
    let libraries: Vec<redis::Value> = redis::cmd("FUNCTION")
        .arg("LIST")
        .query_async(&mut raw(&redis.url).await)
        .await
        .expect("FUNCTION LIST");
    assert_eq!(libraries.len(), 1, "the library is back: {libraries:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_without_a_reason_is_counted_as_unknown_and_unbalances_the_books() {
    let redis = start_redis().await;
    let store = store(&redis.url, &unique_prefix("noreason")).await;
    let _: String = redis::cmd("XADD")
        .arg(store.keys().dead())
        .arg("*")
        .arg("to")
        .arg("+15550100")
        .query_async(&mut raw(&redis.url).await)
        .await
        .expect("XADD");
    let report = audit::run(&store, 16).await.expect("audits");
    assert_eq!(report.dead_length, 1);
    assert_eq!(report.dead_by_reason.get("unknown"), Some(&1));
    assert_eq!(
        report.problems,
        [
            "the dead stream holds 1 entries, and 0 left it (trimmed 0, purged 0, requeued 0), \
          but the dead counter says 0"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_of_another_epoch_fails_the_audit_naming_both() {
    let redis = start_redis().await;
    let store = opened_queue(&redis.url, "foreign", 2).await;
    produce_n(&store, 32, 40).await;
    let before = audit::run(&store, 16).await.expect("audits");
    assert!(before.is_consistent(), "{}", before.to_text());
    let home_epoch = store.epoch().to_owned();
    let queue = store.partition(1).keys().queue();
    command(&redis.url, &["HSET", &queue, "epoch", "deadbeefdeadbeef"]).await;
    let report = audit::run(&store, 16).await.expect("audits");
    assert!(!report.is_consistent(), "{}", report.to_text());
    let named = report.problems.iter().any(|p| {
        p.contains("partition 1 holds epoch deadbeefdeadbeef")
            && p.contains(&home_epoch)
            && p.contains("repair")
    });
    assert!(named, "{:?}", report.problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_dropped_from_the_list_fails_the_audit() {
    use sms_alerts::channel::Channel;
    let redis = start_redis().await;
    let options = sms_alerts::store::QueueOptions {
        channels: vec![
            Channel::parse("sms").expect("sms"),
            Channel::parse("email").expect("email"),
        ],
        ..sms_alerts::store::QueueOptions::default()
    };
    let store = store_with(&redis.url, &unique_prefix("unlisted"), &options).await;
    produce_n(&store, 33, 20).await;
    let before = audit::run(&store, 16).await.expect("audits");
    assert!(before.is_consistent(), "{}", before.to_text());
    let queue = store.keys().queue();
    command(&redis.url, &["HSET", &queue, "channels", "sms:sms"]).await;
    let report = audit::run(&store, 16).await.expect("audits");
    assert!(!report.is_consistent(), "{}", report.to_text());
    let named = report
        .problems
        .iter()
        .any(|p| p.starts_with("channel email:") && p.contains("(sms:sms)"));
    assert!(named, "{:?}", report.problems);
}
