//! The audit catches what the counters hide, page by page; pruning senders
//! never loses a message.

mod common;

use std::time::Duration;

use common::*;
use sms_alerts::audit;
use sms_alerts::senders;
use sms_alerts::stats::Snapshot;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_reconciles_across_pages_and_catches_tampering() {
    let redis = start_redis().await;
    let prefix = unique_prefix("audit");
    let store = store(&redis.url, &prefix).await;
    produce_n(&store, 31, 500).await;

    // A killed sender leaves pending entries scattered among acknowledged ones.
    let mut doomed = spawn_sender_process(
        &redis.url,
        &prefix,
        "doomed",
        &[
            "--mean",
            "300ms",
            "--concurrency",
            "40",
            "--failure-rate",
            "0.2",
        ],
    );
    wait_until(
        "doomed has sent some and holds some",
        Duration::from_secs(30),
        || async {
            let s = Snapshot::read(&store).await.expect("snapshot");
            s.sent >= 40 && pending_of(&redis.url, &store, "doomed").await >= 20
        },
    )
    .await;
    doomed.kill().expect("SIGKILL");
    doomed.wait().expect("reaped");

    // Mid-run, with pending and queued entries, small pages and one big page agree.
    let small = audit::run(&store, 7).await.expect("audit");
    let mut large = audit::run(&store, 10_000).await.expect("audit");
    // Ages and Redis's memory move between the two reads; the counters do not.
    assert_eq!(
        (
            small.counters.sent,
            small.counters.failed,
            small.counters.dead
        ),
        (
            large.counters.sent,
            large.counters.failed,
            large.counters.dead
        )
    );
    large.counters = small.counters.clone();
    assert_eq!(small, large, "paging does not change the result");
    assert!(small.is_consistent(), "{}", small.to_text());
    assert!(
        small.pending >= 20 && small.queued > 0,
        "{}",
        small.to_text()
    );

    let finisher = RunningSender::start(&store, {
        let mut s = send_settings("finisher", 1, 0.2);
        s.lease = Duration::from_secs(1);
        s
    });
    wait_until("everything is settled", Duration::from_secs(60), || {
        all_settled(&store, 500)
    })
    .await;
    finisher.stop().await;
    let done = audit::run(&store, 64).await.expect("audit");
    assert!(done.is_consistent(), "{}", done.to_text());
    assert_eq!((done.acknowledged, done.pending, done.queued), (500, 0, 0));
    assert_eq!(done.dead_length, done.counters.dead);

    // A message acknowledged without being counted: lost to the counters.
    let mut conn = raw(&redis.url).await;
    let _: String = redis::cmd("XADD")
        .arg(store.keys().messages())
        .arg("*")
        .arg("recipient")
        .arg("+15551234567")
        .arg("body")
        .arg("hi")
        .arg("created_ms")
        .arg("1")
        .query_async(&mut conn)
        .await
        .expect("XADD");
    let reader = store
        .read_connection(Duration::from_secs(1))
        .await
        .expect("conn");
    let read = store
        .sender()
        .read_new(&reader, "rogue", 1, 100)
        .await
        .expect("read");
    let _: u64 = redis::cmd("XACK")
        .arg(store.keys().messages())
        .arg(store.group())
        .arg(&read[0].id)
        .query_async(&mut conn)
        .await
        .expect("XACK");
    let lost = audit::run(&store, 64).await.expect("audit");
    assert!(!lost.is_consistent());
    assert!(
        lost.problems
            .iter()
            .any(|p| p.contains("= 500, but 501 entries were produced")),
        "{:?}",
        lost.problems
    );

    // The binary says so too, with exit code 1.
    let output = bin()
        .args(["--redis-url", &redis.url, "--prefix", &prefix, "audit"])
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("INCONSISTENT") && stdout.contains("501 entries were produced"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_removes_only_dead_empty_senders_and_loses_nothing() {
    let redis = start_redis().await;
    let prefix = unique_prefix("prune");
    let store = store(&redis.url, &prefix).await;
    produce_n(&store, 41, 100).await;

    // "ghost" holds 20 messages and dies.
    let mut ghost = spawn_sender_process(
        &redis.url,
        &prefix,
        "ghost",
        &[
            "--mean",
            "60s",
            "--distribution",
            "constant",
            "--concurrency",
            "20",
            "--lease",
            "1s",
        ],
    );
    wait_until("ghost holds 20", Duration::from_secs(30), || async {
        pending_of(&redis.url, &store, "ghost").await == 20
    })
    .await;
    ghost.kill().expect("SIGKILL");
    ghost.wait().expect("reaped");

    // A live sender that has nothing to do yet (its own slow work keeps it busy).
    let mut busy = send_settings("busy", 60_000, 0.0);
    busy.delay.distribution = sms_alerts::settings::Distribution::Constant;
    busy.concurrency = 1;
    let busy = RunningSender::start(&store, busy);
    wait_until("busy holds one", Duration::from_secs(10), || async {
        pending_of(&redis.url, &store, "busy").await == 1
    })
    .await;
    wait_until("ghost's lease lapsed", Duration::from_secs(10), || async {
        !store
            .inspector()
            .live_names(&["ghost".to_owned()])
            .await
            .expect("live")[0]
    })
    .await;

    let first = senders::prune(&store, Duration::ZERO).await.expect("prune");
    assert!(first.pruned.is_empty(), "{first:?}");
    assert_eq!(
        first.holding_messages,
        vec!["ghost".to_owned()],
        "ghost still holds messages"
    );
    assert_eq!(first.live, vec!["busy".to_owned()]);
    let listed = senders::list(&store).await.expect("list");
    let ghost_row = listed
        .iter()
        .find(|r| r.name == "ghost")
        .expect("ghost listed");
    assert_eq!((ghost_row.pending, ghost_row.live), (20, false));

    // A live sender reclaims ghost's work after the lease; then ghost can go.
    let mut rescuer = send_settings("rescuer", 1, 0.0);
    rescuer.lease = Duration::from_secs(1);
    let rescuer = RunningSender::start(&store, rescuer);
    wait_until(
        "all but busy's one are settled",
        Duration::from_secs(30),
        || async {
            Snapshot::read(&store)
                .await
                .map(|s| s.settled() == 99)
                .unwrap_or(false)
        },
    )
    .await;
    let second = senders::prune(&store, Duration::ZERO).await.expect("prune");
    assert_eq!(second.pruned, vec!["ghost".to_owned()], "{second:?}");
    assert!(
        second.live.contains(&"busy".to_owned()) && second.live.contains(&"rescuer".to_owned())
    );

    rescuer.stop().await;
    drop(busy); // its one message stays pending under a live-then-gone name
    let report = audit::run(&store, 1_000).await.expect("audit");
    assert!(report.is_consistent(), "{}", report.to_text());
    assert_eq!(
        report.counters.sent + report.pending,
        100,
        "nothing lost to pruning"
    );
}
