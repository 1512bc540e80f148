//! `repair` on damage the other tests do not cause: a queue identity without
//! its epoch, totals that are not numbers (rebuilt from what Redis holds
//! where that is exact), a main key of the wrong type, a message stream gone
//! with its messages, and a group re-created at a given entry.

mod common;

use std::time::Duration;

use common::*;
use sms_alerts::repair::{self, Step};
use sms_alerts::stats::Snapshot;
use sms_alerts::store::Store;

async fn command(url: &str, args: &[&str]) {
    let cmd = args.iter().fold(redis::Cmd::new(), |mut cmd, arg| {
        cmd.arg(*arg);
        cmd
    });
    if let Err(err) = cmd.query_async::<redis::Value>(&mut raw(url).await).await {
        panic!("{args:?}: {err}");
    }
}

/// A queue of `count` messages, each sent or dead-lettered by a sender that
/// fails half its attempts and gives up after two.
async fn settled_queue(url: &str, prefix: &str, count: u64) -> Store {
    let store = store(url, prefix).await;
    produce_n(&store, 21, count).await;
    let mut settings = send_settings("s", 0, 0.5);
    settings.max_attempts = 2;
    let sender = RunningSender::start(&store, settings);
    let settled = || all_settled(&store, count);
    wait_until("all settled", Duration::from_secs(30), settled).await;
    sender.stop().await;
    store
}

/// A queue of `count` messages, the first `read` of them delivered to
/// consumer `c1`; their ids.
async fn delivered_queue(url: &str, prefix: &str, count: u64, read: usize) -> (Store, Vec<String>) {
    let store = store(url, prefix).await;
    produce_n(&store, 22, count).await;
    let ids = read_as(url, &store, "c1", read).await;
    assert_eq!(ids.len(), read, "delivered");
    (store, ids)
}

/// The queue as `repair` takes it: connected, neither created nor opened.
async fn as_found(url: &str, prefix: &str) -> Store {
    Store::connect(&queue(url, prefix)).await.expect("connects")
}

async fn audit_is_consistent(store: &Store) {
    let report = sms_alerts::audit::run(store, 1_000).await.expect("audits");
    assert!(report.is_consistent(), "{}", report.to_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_epoch_and_untrusted_totals_are_rebuilt_from_what_redis_holds() {
    let redis = start_redis().await;
    let prefix = unique_prefix("rebuild");
    let store = settled_queue(&redis.url, &prefix, 200).await;
    let before = Snapshot::read(&store).await.expect("counters");
    assert!(
        before.dead > 0 && before.sent > 0,
        "some sent, some dead: {before:?}"
    );
    let k = store.keys();
    command(&redis.url, &["HDEL", &k.queue(), "epoch"]).await;
    command(&redis.url, &["DEL", &k.latency()]).await;
    command(&redis.url, &["SET", &k.latency(), "not a hash"]).await;
    for (field, value) in [
        ("produced", "x"),
        ("sent", "y"),
        ("dead", "z"),
        ("trimmed", "-"),
        ("attempts", "q"),
    ] {
        command(&redis.url, &["HSET", &k.stats(), field, value]).await;
    }

    let found = as_found(&redis.url, &prefix).await;
    let plan = repair::plan(&found, "end").await.expect("plans");
    assert_eq!(
        plan.steps.first(),
        Some(&Step::NewIdentity {
            reason: "its identity holds no epoch".to_owned()
        })
    );
    let set_aside: Vec<_> = plan
        .steps
        .iter()
        .filter_map(|step| match step {
            Step::SetAside { key, kind, to } => Some((key, kind.as_str(), to)),
            _ => None,
        })
        .collect();
    assert!(
        matches!(set_aside.as_slice(),
            [(key, "string", to)] if **key == k.latency()
                && to.starts_with(&format!("{}:damaged:", k.latency()))),
        "the latency key is set aside once: {plan:?}"
    );
    let counters: Vec<(&str, i64)> = plan
        .steps
        .iter()
        .filter_map(|step| match step {
            Step::SetCounter { field, to, .. } => Some((field.as_str(), *to)),
            _ => None,
        })
        .collect();
    assert_eq!(
        counters,
        [
            ("produced", 200),
            ("sent", before.sent as i64),
            ("dead", before.dead as i64),
            ("trimmed", before.trimmed as i64),
            ("attempts", 0),
        ],
        "exact where Redis's own figures give it, else 0"
    );
    assert_eq!(plan.steps.len(), 7, "nothing else: {plan:?}");
    let text = plan.to_text();
    assert!(
        text.starts_with("1. give the queue a new identity (its identity holds no epoch)")
            && text.contains(&format!("7. rename {} (a string", k.latency()))
            && text.contains("set counter attempts of")
            && text.contains("not derivable from what Redis holds"),
        "{text}"
    );

    repair::apply(&found, &plan).await.expect("repairs");
    let again = repair::plan(&found, "end").await.expect("plans");
    assert!(again.steps.is_empty(), "{again:?}");
    assert_eq!(
        again.to_text(),
        "nothing to repair: the queue's identity, keys, group and counters are sound\n"
    );
    let repaired = found.open().await.expect("the repaired queue opens");
    assert_ne!(repaired.epoch(), store.epoch(), "a new identity");
    let after = Snapshot::read(&repaired).await.expect("counters");
    assert_eq!(
        (after.produced, after.sent, after.dead, after.trimmed),
        (200, before.sent, before.dead, before.trimmed)
    );
    audit_is_consistent(&repaired).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_lost_with_its_messages_counts_them_as_abandoned() {
    let redis = start_redis().await;
    let prefix = unique_prefix("nostream");
    let (store, _) = delivered_queue(&redis.url, &prefix, 50, 10).await;
    command(&redis.url, &["DEL", &store.keys().messages()]).await;

    let found = as_found(&redis.url, &prefix).await;
    let plan = repair::plan(&found, "end").await.expect("plans");
    assert_eq!(
        plan.steps,
        [Step::RecreateGroup {
            start: "$".to_owned(),
            entries_read: 0,
            abandoned: 50,
        }]
    );
    assert_eq!(
        plan.to_text(),
        "1. create the consumer group again, starting after the newest entry: nothing is \
         sent again; 50 messages the lost group had not settled are counted as abandoned\n"
    );
    repair::apply(&found, &plan).await.expect("repairs");
    assert!(found.inspector().group_info().await.expect("XINFO").exists);
    let after = Snapshot::read(&found).await.expect("counters");
    assert_eq!((after.produced, after.abandoned), (0, 50));
    // Applied twice (say, by two operators), the group is found and kept.
    repair::apply(&found, &plan).await.expect("a no-op");
    let twice = Snapshot::read(&found).await.expect("counters");
    assert_eq!(twice.abandoned, 50, "counted once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_recreated_at_an_entry_delivers_only_what_follows_it() {
    let redis = start_redis().await;
    let prefix = unique_prefix("regroup");
    let (store, ids) = delivered_queue(&redis.url, &prefix, 30, 30).await;
    command(
        &redis.url,
        &["XGROUP", "DESTROY", &store.keys().messages(), store.group()],
    )
    .await;

    let found = as_found(&redis.url, &prefix).await;
    let start = ids[19].clone();
    let plan = repair::plan(&found, &start).await.expect("plans");
    assert_eq!(
        plan.steps,
        [Step::RecreateGroup {
            start: start.clone(),
            entries_read: 20,
            abandoned: 20,
        }]
    );
    let text = plan.to_text();
    assert!(
        text.contains(&format!(
            "starting after entry {start}: the entries after it are delivered again"
        )) && text.contains("20 messages the lost group had not settled"),
        "{text}"
    );
    repair::apply(&found, &plan).await.expect("repairs");
    let delivered = read_as(&redis.url, &store, "c2", 100).await;
    assert_eq!(delivered, ids[20..], "only the entries after {start}");
    let after = Snapshot::read(&found).await.expect("counters");
    assert_eq!(after.abandoned, 20);
    audit_is_consistent(&found).await;
}
