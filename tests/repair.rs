//! `repair` on damage the other tests do not cause: a queue identity without
//! its epoch, totals that are not numbers (rebuilt from what Redis holds
//! where that is exact), a main key of the wrong type, a message stream gone
//! with its messages, a group re-created at a given entry, and a counters
//! hash gone, the totals' or a channel's (found whichever channel is asked).

mod common;

use std::time::Duration;

use common::*;
use sms_alerts::repair::{self, Step};
use sms_alerts::stats::Snapshot;
use sms_alerts::store::{Store, StoreError};

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

/// A queue of `count` messages, all delivered, whose consumer group was then
/// destroyed: the store, the ids, and a handle as `repair` opens it.
async fn group_lost_queue(url: &str, test: &str, count: u64) -> (Store, Vec<String>, Store) {
    let prefix = unique_prefix(test);
    let (store, ids) = delivered_queue(url, &prefix, count, count as usize).await;
    let stream = store.keys().messages();
    command(url, &["XGROUP", "DESTROY", &stream, store.group()]).await;
    (store, ids, as_found(url, &prefix).await)
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
    let (store, ids, found) = group_lost_queue(&redis.url, "regroup", 30).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_start_past_the_streams_end_is_refused() {
    let redis = start_redis().await;
    let (_, ids, found) = group_lost_queue(&redis.url, "regroup-past", 10).await;
    let last = ids.last().expect("ids").clone();
    let (ms, _) = last.split_once('-').expect("an entry id");
    let just_after = format!("{}-0", ms.parse::<u64>().expect("ms") + 1);
    for past in [just_after.as_str(), "99999999999999-0"] {
        let refused = repair::plan(&found, past).await;
        match refused {
            Err(StoreError::Refused(why)) => assert!(
                why.contains(past) && why.contains(&last),
                "names the start and the stream's newest id: {why}"
            ),
            other => panic!("a start past the end was not refused: {other:?}"),
        }
    }
    // The newest entry itself is a start: nothing after it is delivered again.
    let plan = repair::plan(&found, &last).await.expect("plans");
    assert_eq!(
        plan.steps,
        [Step::RecreateGroup {
            start: last.clone(),
            entries_read: 10,
            abandoned: 10,
        }]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channels_keys_of_the_wrong_type_are_named_and_set_aside() {
    let redis = start_redis().await;
    let prefix = unique_prefix("wrongtype");
    let store = sms_and_email_queue(&redis.url, &prefix, 1).await;
    let email = store.for_channel("email").expect("email");
    produce_n(&store, 26, 30).await;
    let mailed = send_the_rest(&email, 30).await;
    assert_eq!(mailed.sent + mailed.skipped, 30);
    let (stats, dead) = (email.keys().stats(), email.keys().dead());
    command(&redis.url, &["DEL", &stats]).await;
    command(&redis.url, &["SET", &stats, "x"]).await;
    command(&redis.url, &["RPUSH", &dead, "x"]).await;

    let found = as_found(&redis.url, &prefix).await;
    let report = sms_alerts::audit::run(&found, 16).await.expect("audits");
    let problems = report.problems.join("\n");
    assert!(
        problems.contains(&stats) && problems.contains(&format!("{dead} is a list")),
        "the audit names both keys: {problems}"
    );
    // Planned from the first channel, which reads the e-mail counters too.
    let plan = repair::plan(&found, "end").await.expect("plans");
    let text = plan.to_text();
    assert!(
        text.contains(&stats) && text.contains(&dead),
        "both keys are set aside: {text}"
    );
    apply_fully(&found, &plan).await;
    audit_is_consistent(&store).await;
}

/// A queue of `partitions` with an SMS and an e-mail channel, opened.
async fn sms_and_email_queue(url: &str, prefix: &str, partitions: u32) -> Store {
    use sms_alerts::channel::Channel;
    let options = sms_alerts::store::QueueOptions {
        channels: vec![
            Channel::parse("sms").expect("sms"),
            Channel::parse("email").expect("email"),
        ],
        partitions: Some(partitions),
        ..sms_alerts::store::QueueOptions::default()
    };
    store_with(url, prefix, &options)
        .await
        .open()
        .await
        .expect("opens")
}

/// The fields and values a `RecreateCounters` step sets, by key.
fn recreated(plan: &repair::RepairPlan) -> Vec<(String, Vec<(String, i64)>)> {
    plan.steps
        .iter()
        .filter_map(|step| match step {
            Step::RecreateCounters { key, counters } => Some((
                key.clone(),
                counters
                    .iter()
                    .map(|(field, to, _)| (field.clone(), *to))
                    .collect(),
            )),
            _ => None,
        })
        .collect()
}

/// Applies `plan`, after which there is nothing left to repair.
async fn apply_fully(found: &Store, plan: &repair::RepairPlan) {
    repair::apply(found, plan).await.expect("repairs");
    let again = repair::plan(found, "end").await.expect("plans");
    assert!(again.steps.is_empty(), "{again:?}");
}

/// Runs a sender that never fails on `store` until `total` messages are
/// settled there; the counters then.
async fn send_the_rest(store: &Store, total: u64) -> Snapshot {
    let sender = RunningSender::start(store, send_settings("rest", 0, 0.0));
    let settled = || all_settled(store, total);
    wait_until("the rest settled", Duration::from_secs(30), settled).await;
    sender.stop().await;
    Snapshot::read(store).await.expect("counters")
}

fn pairs(fields: &[(&str, u64)]) -> Vec<(String, i64)> {
    fields
        .iter()
        .map(|(field, to)| (field.to_string(), *to as i64))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_totals_hash_is_rebuilt_and_what_it_settled_is_uncounted() {
    let redis = start_redis().await;
    let prefix = unique_prefix("nototals");
    let store = settled_queue(&redis.url, &prefix, 200).await;
    let before = Snapshot::read(&store).await.expect("counters");
    produce_n(&store, 23, 50).await;
    let held = read_as(&redis.url, &store, "c1", 20).await;
    assert_eq!(held.len(), 20);
    command(&redis.url, &["DEL", &store.keys().stats()]).await;
    let damaged = Snapshot::read(&store).await.expect("a snapshot");
    assert!(damaged.state_detail.contains("is missing"), "{damaged:?}");

    let found = as_found(&redis.url, &prefix).await;
    let plan = repair::plan(&found, "end").await.expect("plans");
    assert_eq!(plan.steps.len(), 1, "{plan:?}");
    assert_eq!(
        recreated(&plan),
        [(
            store.keys().stats(),
            pairs(&[
                ("produced", 250),
                ("trimmed", 0),
                ("dead", before.dead),
                ("dead_max_attempts", before.dead),
                ("uncounted", before.sent),
            ])
        )],
        "what Redis holds tells these; the sent, skipped or abandoned are uncounted"
    );
    let text = plan.to_text();
    assert!(
        text.starts_with(&format!(
            "1. create the lost counters hash {} again: produced 250 (entries added",
            store.keys().stats()
        )) && text.contains("the other counters start at 0"),
        "{text}"
    );

    apply_fully(&found, &plan).await;
    let repaired = found.open().await.expect("the repaired queue opens");
    let after = Snapshot::read(&repaired).await.expect("counters");
    assert_eq!(
        (
            after.sent,
            after.uncounted,
            after.dead,
            after.pending,
            after.lag
        ),
        (0, before.sent, before.dead, 20, Some(30))
    );
    audit_is_consistent(&repaired).await;

    // The rest goes out once: the 20 held by a dead consumer after the
    // lease, the 30 never delivered; nothing settled before goes again.
    let done = send_the_rest(&repaired, 250).await;
    assert_eq!(
        (done.sent, done.dead, done.duplicates),
        (50, before.dead, 0)
    );
    audit_is_consistent(&repaired).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_channel_is_repaired_whichever_one_is_asked_for() {
    let redis = start_redis().await;
    let prefix = unique_prefix("nochannel");
    let store = sms_and_email_queue(&redis.url, &prefix, 2).await;
    let email = store.for_channel("email").expect("email");
    produce_n(&store, 24, 100).await;
    let mut failing = send_settings("m", 0, 0.5);
    failing.max_attempts = 2;
    let mailer = RunningSender::start(&email, failing);
    let mailed = || all_settled(&email, 100);
    wait_until("e-mail settled", Duration::from_secs(30), mailed).await;
    mailer.stop().await;
    // Some of its dead letters went back to it, and died again: each
    // channel's requeues are counted twice, in the totals and its own.
    let died = Snapshot::read(&email).await.expect("counters").dead;
    let requeued = sms_alerts::dead::requeue(
        &email,
        &sms_alerts::dead::Selection::Reason("max_attempts".to_owned()),
    )
    .await
    .expect("requeues")
    .requeued;
    assert_eq!(requeued, died);
    let mut failing = send_settings("m", 0, 1.0);
    failing.max_attempts = 1;
    let mailer = RunningSender::start(&email, failing);
    let mailed = || all_settled(&email, 100 + requeued);
    wait_until("the requeued died again", Duration::from_secs(30), mailed).await;
    mailer.stop().await;
    let before = Snapshot::read(&email).await.expect("counters");
    assert!(
        before.dead_requeued == requeued && before.skipped > 0,
        "{before:?}"
    );
    produce_n(&store, 25, 40).await;
    let held = read_as(&redis.url, &email.partition(1), "c1", 5).await;
    assert_eq!(held.len(), 5);
    for partition in email.partitions() {
        command(&redis.url, &["DEL", &partition.keys().stats()]).await;
    }

    // Asked on the first channel, repair finds the e-mail channel's damage.
    let found = as_found(&redis.url, &prefix).await;
    let plan = repair::plan(&found, "end").await.expect("plans");
    assert_eq!(plan.channels, ["email", "email"], "{plan:?}");
    assert_eq!(plan.partitions, [0, 1]);
    let keys: Vec<String> = recreated(&plan).into_iter().map(|(key, _)| key).collect();
    assert_eq!(
        keys,
        [
            email.partition(0).keys().stats(),
            email.partition(1).keys().stats()
        ]
    );
    assert!(
        plan.to_text()
            .starts_with("1. partition 0, channel email: create the lost counters hash"),
        "{}",
        plan.to_text()
    );
    apply_fully(&found, &plan).await;
    let after = Snapshot::read(&email).await.expect("counters");
    assert_eq!(
        (after.sent, after.skipped, after.dead, after.pending),
        (0, 0, before.dead, 5)
    );
    assert_eq!(after.dead_requeued, requeued, "told by the totals and sms");
    assert_eq!(after.uncounted, before.sent + before.skipped);
    audit_is_consistent(&store).await;

    // The new messages go out by e-mail once each; the old ones stay settled.
    let done = send_the_rest(&email, 140 + requeued).await;
    assert_eq!((done.sent + done.skipped, done.duplicates), (40, 0));
    audit_is_consistent(&store).await;
}
