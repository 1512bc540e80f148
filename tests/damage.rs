//! Lost and damaged queue state: a Function that finds a key of
//! the wrong type, a counter that is not a number or a queue identity gone
//! or changed writes nothing and says so; running processes stop with exit
//! code 3 naming the loss (a FLUSHALL, a Redis restarted without its data, a
//! destroyed group, a tampered counter) instead of repairing by guessing;
//! `repair` does it explicitly.

mod common;

use std::collections::BTreeMap;
use std::process::Child;
use std::time::{Duration, Instant};

use common::*;
use sms_alerts::stats::Snapshot;
use sms_alerts::store::{Outcome, QueueOptions, ReportItem, RunPlan, RunRoute, Store, StoreError};

/// Every key of the queue under `store`'s prefix, with its DUMP: equal
/// digests mean nothing was written.
async fn digest(url: &str, store: &Store) -> BTreeMap<String, Vec<u8>> {
    let mut conn = raw(url).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(store.keys().all_pattern())
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    let mut out = BTreeMap::new();
    for key in keys {
        let dump: Vec<u8> = redis::cmd("DUMP")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("DUMP");
        out.insert(key, dump);
    }
    out
}

/// A queue with 20 messages, 10 of them read by consumer `c1` (pending), and
/// one dead letter.
async fn busy_queue(url: &str, test: &str) -> (Store, Vec<String>) {
    let store = store(url, &unique_prefix(test)).await;
    produce_n(&store, 3, 20).await;
    let ids = read_as(url, &store, "c1", 10).await;
    let malformed = ReportItem {
        id: ids[9].clone(),
        outcome: Outcome::Malformed,
        send_time_us: 0,
    };
    store
        .sender()
        .report("c1", 3, Duration::ZERO, "setup", 1, &[malformed])
        .await
        .expect("one dead letter");
    (store, ids[..9].to_vec())
}

/// The calls under test: each Function (and the producer's batch) that writes.
const CALLS: [&str; 8] = [
    "report",
    "claim",
    "renew",
    "trim",
    "requeue",
    "purge",
    "run start",
    "batch",
];

/// A tamper: what it damages, its raw commands, and the calls that must refuse.
type Tamper = (String, Vec<Vec<String>>, Vec<&'static str>);

/// What each tamper does to the queue under `store` (as raw commands), and
/// which calls touch what it damaged: those must refuse, writing nothing;
/// the others must go on as usual.
fn tampers(store: &Store) -> Vec<Tamper> {
    let k = store.keys();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let wrong_type = |key: String, refused: Vec<&'static str>| {
        (
            format!("{key} of the wrong type"),
            vec![s(&["SET", &key, "x"])],
            refused,
        )
    };
    vec![
        (
            "sent is not a number".to_owned(),
            vec![s(&["HSET", &k.stats(), "sent", "x"])],
            vec!["report", "claim"],
        ),
        (
            "dead is too big for HINCRBY".to_owned(),
            vec![s(&["HSET", &k.stats(), "dead", "99999999999999999999"])],
            vec!["report", "claim"],
        ),
        (
            "produced is not a number".to_owned(),
            vec![s(&["HSET", &k.stats(), "produced", "many"])],
            vec!["batch"],
        ),
        (
            "a sender's failed is not a number".to_owned(),
            vec![s(&["HSET", &k.sender_stats("c1"), "failed", "1.5"])],
            vec!["report"],
        ),
        (
            "sent has a leading zero (Redis refuses to add to it)".to_owned(),
            vec![s(&["HSET", &k.stats(), "sent", "007"])],
            vec!["report", "claim"],
        ),
        (
            "sent is -0".to_owned(),
            vec![s(&["HSET", &k.stats(), "sent", "-0"])],
            vec!["report", "claim"],
        ),
        (
            "attempts is at the top of the range (would overflow)".to_owned(),
            vec![s(&["HSET", &k.stats(), "attempts", "9223372036854775807"])],
            vec!["report", "claim"],
        ),
        (
            "a latency bucket the report adds to is not a number".to_owned(),
            vec![s(&["HSET", &k.latency(), "le_2000", "many"])],
            vec!["report"],
        ),
        (
            "a latency bucket the report does not touch is not a number".to_owned(),
            vec![s(&["HSET", &k.latency(), "le_1000", "many"])],
            vec![],
        ),
        wrong_type(
            k.messages(),
            vec!["report", "claim", "renew", "trim", "requeue", "batch"],
        ),
        wrong_type(
            k.dead(),
            vec!["report", "claim", "trim", "requeue", "purge"],
        ),
        wrong_type(
            k.stats(),
            vec!["report", "claim", "trim", "requeue", "purge", "batch"],
        ),
        (
            "the totals hash is gone".to_owned(),
            vec![s(&["DEL", &k.stats()])],
            vec!["report", "claim", "trim", "requeue", "purge", "batch"],
        ),
        wrong_type(k.sender_stats("c1"), vec!["report"]),
        wrong_type(k.latency(), vec!["report"]),
        wrong_type(k.open_runs(), vec!["run start"]),
        wrong_type(k.runs(), vec!["run start"]),
        (
            "the run's lease is a hash".to_owned(),
            vec![s(&["HSET", &k.run_lease("r2"), "x", "1"])],
            vec!["run start"],
        ),
        wrong_type(k.queue(), CALLS.to_vec()),
        (
            "the queue identity is gone".to_owned(),
            vec![s(&["DEL", &k.queue()])],
            CALLS.to_vec(),
        ),
        (
            "the queue's epoch changed".to_owned(),
            vec![s(&["HSET", &k.queue(), "epoch", "another"])],
            CALLS.to_vec(),
        ),
    ]
}

/// Makes `call` on `store`, whose pending entries (of consumer c1) are `pending`.
async fn make(call: &str, store: &Store, pending: &[String]) -> Result<(), StoreError> {
    let items: Vec<ReportItem> = pending
        .iter()
        .enumerate()
        .map(|(i, id)| ReportItem {
            id: id.clone(),
            outcome: if i % 3 == 0 {
                Outcome::Failed
            } else {
                Outcome::Sent
            },
            send_time_us: 1_500,
        })
        .collect();
    let plan = RunPlan {
        count: 10,
        seed: 1,
        batch: 10,
    };
    match call {
        "report" => store
            .sender()
            .report("c1", 1, Duration::ZERO, "t", 1, &items)
            .await
            .map(drop),
        "claim" => store
            .sender()
            .claim("c2", Duration::ZERO, None, 100, 1, None)
            .await
            .map(drop),
        "renew" => store.sender().renew("c1", pending).await.map(drop),
        "trim" => store.sender().trim().await.map(drop),
        "requeue" => store
            .operator()
            .requeue(&["0-1".to_owned()])
            .await
            .map(drop),
        "purge" => store
            .operator()
            .purge_dead("99999999999999-0")
            .await
            .map(drop),
        "run start" => {
            store
                .producer()
                .start_run(
                    "r2",
                    &plan,
                    &RunRoute::default(),
                    "tok",
                    Duration::from_secs(5),
                )
                .await
        }
        "batch" => {
            let message = sms_alerts::generator::MessageGenerator::seeded(1).next_message(1);
            let batch = store.producer().prepare_batch("r", 1, &[message]);
            store.producer().write_batch(&batch).await.map(drop)
        }
        other => panic!("no call {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_that_meets_damage_writes_nothing_and_names_it() {
    let redis = start_redis().await;
    let cases = tampers(&busy_queue(&redis.url, "probe").await.0).len();
    for case in 0..cases {
        for call in CALLS {
            let (store, pending) = busy_queue(&redis.url, &format!("t{case}")).await;
            let (what, commands, refused) = tampers(&store).swap_remove(case);
            for tamper in &commands {
                let args: Vec<&str> = tamper.iter().map(String::as_str).collect();
                command(&redis.url, &args).await;
            }
            let before = digest(&redis.url, &store).await;
            let result = make(call, &store, &pending).await;
            if !refused.contains(&call) {
                assert!(
                    result.is_ok(),
                    "{what}: {call} does not touch it and must work: {result:?}"
                );
                continue;
            }
            let err = result.expect_err(&format!("{what}: {call} must refuse"));
            let text = err.to_string();
            assert!(
                err.is_queue_state()
                    && (text.starts_with("queue state lost: ")
                        || text.starts_with("queue state damaged: ")),
                "{what}: {call} failed with '{text}', expected lost or damaged state"
            );
            let after = digest(&redis.url, &store).await;
            assert!(
                before == after,
                "{what}: the refused {call} changed {:?}",
                after
                    .keys()
                    .chain(before.keys())
                    .filter(|key| before.get(*key) != after.get(*key))
                    .collect::<Vec<_>>()
            );
        }
    }
}

/// One totals counter, read with HGET (it may not be a number).
async fn stat(url: &str, store: &Store, field: &str) -> String {
    let value: Option<String> = redis::cmd("HGET")
        .arg(store.keys().stats())
        .arg(field)
        .query_async(&mut raw(url).await)
        .await
        .expect("HGET");
    value.unwrap_or_else(|| "0".to_owned())
}

async fn count(url: &str, store: &Store, field: &str) -> u64 {
    stat(url, store, field).await.parse().expect("a number")
}

/// `audit` exits 1 naming the lost state.
fn audit_finds_the_state_lost(url: &str, prefix: &str, when: &str) {
    let audit = bin()
        .args(["--redis-url", url, "--prefix", prefix, "audit"])
        .output()
        .expect("audit runs");
    let text = String::from_utf8_lossy(&audit.stdout);
    assert_eq!(audit.status.code(), Some(1), "{when}: {text}");
    assert!(text.contains("queue state lost"), "{when}: {text}");
}

/// Waits for `child` to exit; returns its code and how long it took.
async fn exit_code(child: &mut Child, deadline: Duration) -> (Option<i32>, Duration) {
    let started = Instant::now();
    let status = wait_exit(child, deadline).await;
    (status.code(), started.elapsed())
}

fn log_of(prefix: &str, name: &str) -> String {
    std::fs::read_to_string(log_path(&format!("{prefix}-{name}"))).unwrap_or_default()
}

/// Child processes, killed if a test ends before they exit.
struct Processes(Vec<(&'static str, Child)>);

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts a producer, two senders and `monitor --until-done` as processes on
/// a fresh queue, and waits until messages flow.
async fn running_queue(url: &str, prefix: &str) -> Processes {
    let _ = store(url, prefix).await;
    let producer = spawn_process(
        url,
        prefix,
        "producer",
        &[
            "produce", "--count", "3000000", "--batch", "1000", "--seed", "5",
        ],
    );
    let monitor = spawn_process(
        url,
        prefix,
        "monitor",
        &["monitor", "--until-done", "--interval", "200ms"],
    );
    let a = spawn_sender_process(url, prefix, "a", &["--mean", "5ms", "--concurrency", "200"]);
    let b = spawn_sender_process(url, prefix, "b", &["--mean", "5ms", "--concurrency", "200"]);
    let store = store_for(url, prefix).await;
    wait_until("messages are sent", Duration::from_secs(30), || async {
        Snapshot::read(&store).await.is_ok_and(|s| s.sent > 1_000)
    })
    .await;
    Processes(vec![
        ("producer", producer),
        ("monitor", monitor),
        ("a", a),
        ("b", b),
    ])
}

/// A store on an existing queue (not migrated again).
async fn store_for(url: &str, prefix: &str) -> Store {
    Store::connect(&queue(url, prefix))
        .await
        .expect("connects")
        .open()
        .await
        .expect("the queue exists")
}

/// Every process exits 3 within 5 s of `since` (the damage), naming
/// `expected` on stderr.
async fn all_stop_with_exit_3(
    processes: &mut Processes,
    prefix: &str,
    expected: &str,
    since: Instant,
) {
    while let Some((name, mut child)) = processes.0.pop() {
        let (code, _) = exit_code(&mut child, Duration::from_secs(15)).await;
        let took = since.elapsed();
        let mut out = String::new();
        if let Some(mut stdout) = child.stdout.take() {
            let _ = std::io::Read::read_to_string(&mut stdout, &mut out);
        }
        let tail: Vec<&str> = out.lines().rev().take(3).collect();
        let log = format!("{}\nstdout ends: {tail:?}", log_of(prefix, name));
        assert_eq!(code, Some(3), "{name} exit code; stderr:\n{log}");
        assert!(
            took <= Duration::from_secs(5),
            "{name} took {took:?} to stop; stderr:\n{log}"
        );
        println!("{prefix}: {name} exited 3 {took:?} after the damage");
        assert!(
            log.contains(expected),
            "{name} names '{expected}'; stderr:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushall_mid_run_stops_every_process_and_fails_the_audit() {
    let redis = start_redis().await;
    let prefix = unique_prefix("flush");
    let mut processes = running_queue(&redis.url, &prefix).await;
    command(&redis.url, &["FLUSHALL"]).await;
    let flushed = Instant::now();
    all_stop_with_exit_3(
        &mut processes,
        &prefix,
        "error: queue state lost: ",
        flushed,
    )
    .await;

    audit_finds_the_state_lost(&redis.url, &prefix, "audit on a flushed queue");
    // Nothing re-created the queue behind the operator's back.
    let mut conn = raw(&redis.url).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{prefix}:0}}:*"))
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    assert!(keys.is_empty(), "keys written after the flush: {keys:?}");
    // A new process refuses too: there is no queue until `migrate`.
    let send = bin()
        .args(["--redis-url", &redis.url, "--prefix", &prefix, "send"])
        .output()
        .expect("send runs");
    assert_eq!(send.status.code(), Some(3));
    let err = String::from_utf8_lossy(&send.stderr);
    assert!(err.contains("error: queue state lost: no queue"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restarted_without_its_data_stops_every_process() {
    let redis = start_redis_with(RedisOptions {
        host_port: Some(free_port()),
        ..RedisOptions::default()
    })
    .await;
    let prefix = unique_prefix("restart");
    let mut processes = running_queue(&redis.url, &prefix).await;
    redis
        .container
        .stop_with_timeout(Some(0))
        .await
        .expect("Redis stops");
    redis.container.start().await.expect("Redis starts empty");
    let restarted = Instant::now();
    all_stop_with_exit_3(
        &mut processes,
        &prefix,
        "error: queue state lost: ",
        restarted,
    )
    .await;
    audit_finds_the_state_lost(&redis.url, &prefix, "audit after the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destroyed_group_is_never_recreated_and_nothing_is_sent_twice() {
    let redis = start_redis().await;
    let prefix = unique_prefix("destroy");
    let mut processes = running_queue(&redis.url, &prefix).await;
    let store = store_for(&redis.url, &prefix).await;
    // The producer's work does not need the group: it goes on, and is
    // stopped here so that the repair below sees a quiet queue.
    let (_, mut producer) = processes.0.remove(0);
    command(
        &redis.url,
        &["XGROUP", "DESTROY", &store.keys().messages(), store.group()],
    )
    .await;
    let destroyed = Instant::now();
    let sent_at_destroy = count(&redis.url, &store, "sent").await;
    all_stop_with_exit_3(
        &mut processes,
        &prefix,
        "error: queue state damaged: consumer group sms",
        destroyed,
    )
    .await;
    terminate(&producer);
    assert_eq!(
        wait_exit(&mut producer, Duration::from_secs(15))
            .await
            .code(),
        Some(0),
        "the producer stops on a signal"
    );
    let sent_after = count(&redis.url, &store, "sent").await;
    assert!(
        sent_after <= sent_at_destroy + 2_000,
        "only results in flight at the destroy may still count: {sent_at_destroy} then {sent_after}"
    );
    let mut conn = raw(&redis.url).await;
    let groups: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(store.keys().messages())
        .query_async(&mut conn)
        .await
        .expect("XINFO GROUPS");
    assert!(groups.is_empty(), "the group was re-created: {groups:?}");

    // `migrate` refuses too; `repair` says what it would do, and does it
    // only with --yes: the group starts after the newest entry, so nothing
    // is sent again, and what it had not settled is counted as abandoned.
    let cli = |args: &[&str]| {
        bin()
            .args(["--redis-url", &redis.url, "--prefix", &prefix])
            .args(args)
            .output()
            .expect("runs")
    };
    let migrate = cli(&["migrate"]);
    assert_eq!(migrate.status.code(), Some(3), "{migrate:?}");
    let dry = cli(&["repair"]);
    let plan = String::from_utf8_lossy(&dry.stdout);
    assert_eq!(dry.status.code(), Some(1), "{plan}");
    assert!(
        plan.contains("create the consumer group again, starting after the newest entry"),
        "{plan}"
    );
    let groups_after_dry_run: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(store.keys().messages())
        .query_async(&mut conn)
        .await
        .expect("XINFO GROUPS");
    assert!(groups_after_dry_run.is_empty(), "a dry run changed nothing");
    let done = cli(&["repair", "--yes"]);
    assert_eq!(done.status.code(), Some(0), "{done:?}");
    let sent_before = count(&redis.url, &store, "sent").await;
    let mut sender = spawn_sender_process(&redis.url, &prefix, "after", &["--mean", "0ms"]);
    let audit = cli(&["audit"]);
    let report = String::from_utf8_lossy(&audit.stdout);
    assert_eq!(audit.status.code(), Some(0), "{report}");
    assert!(report.contains("abandoned"), "{report}");
    terminate(&sender);
    wait_exit(&mut sender, Duration::from_secs(15)).await;
    assert_eq!(
        count(&redis.url, &store, "sent").await,
        sent_before,
        "nothing before the repair is sent again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_counter_stops_the_sender_without_false_duplicates() {
    let redis = start_redis().await;
    let prefix = unique_prefix("counter");
    let store = store(&redis.url, &prefix).await;
    produce_n(&store, 8, 200_000).await;
    let mut sender = spawn_sender_process(
        &redis.url,
        &prefix,
        "s",
        &["--mean", "0ms", "--concurrency", "500"],
    );
    wait_until("messages are sent", Duration::from_secs(30), || async {
        count(&redis.url, &store, "sent").await > 10_000
    })
    .await;
    command(&redis.url, &["HSET", &store.keys().stats(), "sent", "x"]).await;
    let tampered = Instant::now();
    let (code, _) = exit_code(&mut sender, Duration::from_secs(15)).await;
    let took = tampered.elapsed();
    println!("counter tamper: the sender exited 3 {took:?} after it");
    let log = log_of(&prefix, "s");
    assert_eq!(code, Some(3), "{log}");
    assert!(took <= Duration::from_secs(5), "took {took:?}");
    assert!(
        log.contains("queue state damaged: counter sent of") && log.contains("is not a number"),
        "{log}"
    );
    let warnings = log.lines().filter(|l| l.contains("WARN")).count();
    assert!(
        warnings < 10,
        "{warnings} warnings, not one per retry:\n{log}"
    );
    assert_eq!(
        count(&redis.url, &store, "duplicates").await,
        0,
        "no first send was counted as a duplicate"
    );
    assert_eq!(stat(&redis.url, &store, "sent").await, "x", "left as found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_created_anew_is_told_from_the_one_a_process_started_with() {
    let redis = start_redis().await;
    let prefix = unique_prefix("anew");
    let first = store(&redis.url, &prefix).await;
    command(&redis.url, &["FLUSHALL"]).await;
    let second = store(&redis.url, &prefix).await;
    assert_ne!(first.epoch(), second.epoch());
    let err = first.sender().trim().await.expect_err("another queue now");
    assert!(
        matches!(&err, StoreError::Lost(text) if text.contains("created anew")),
        "{err}"
    );
    // The new queue's own handle works.
    second.sender().trim().await.expect("its own queue");
    // `migrate` keeps an existing queue.
    let (again, _, identity) = Store::connect(&queue(&redis.url, &prefix))
        .await
        .expect("connects")
        .migrate(&QueueOptions::default())
        .await
        .expect("migrate again");
    assert_eq!(again.epoch(), second.epoch());
    assert_eq!(identity.status, sms_alerts::store::QueueStatus::Existing);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_mends_every_key_a_function_refuses_and_then_finds_nothing() {
    let redis = start_redis().await;
    let prefix = unique_prefix("mend");
    let store = store(&redis.url, &prefix).await;
    produce_n(&store, 12, 1_000).await;
    let sender = RunningSender::start(&store, send_settings("s", 0, 0.0));
    wait_until("all sent", Duration::from_secs(30), || {
        all_settled(&store, 1_000)
    })
    .await;
    sender.stop().await;
    let k = store.keys();
    for tamper in [
        vec!["HSET", &k.sender_stats("s"), "failed", "x"],
        vec!["HSET", &k.sender_stats("s"), "batch_seq", "y"],
        vec!["HSET", &k.latency(), "le_1000", "z"],
        vec!["SET", &k.runs(), "not a zset"],
        vec!["HSET", &k.stats(), "failed", "007"],
    ] {
        command(&redis.url, &tamper).await;
    }
    let cli = |args: &[&str]| {
        bin()
            .args(["--redis-url", &redis.url, "--prefix", &prefix])
            .args(args)
            .output()
            .expect("runs")
    };
    // A sender under that name refuses: its counters are damaged.
    let send = cli(&["send", "--name", "s", "--mean", "0ms"]);
    assert_eq!(send.status.code(), Some(3), "{send:?}");

    let dry = cli(&["repair"]);
    let plan = String::from_utf8_lossy(&dry.stdout).into_owned();
    assert_eq!(dry.status.code(), Some(1), "{plan}");
    for expected in [
        format!(
            "set counter failed of {} (it holds \"x\") to 0",
            k.sender_stats("s")
        ),
        format!("forget the report batch window of {}", k.sender_stats("s")),
        format!(
            "set counter le_1000 of {} (it holds \"z\") to 0",
            k.latency()
        ),
        format!("rename {} (a string, of the wrong type)", k.runs()),
        format!(
            "set counter failed of {} (it holds \"007\") to 0",
            k.stats()
        ),
    ] {
        assert!(plan.contains(&expected), "plan lacks '{expected}':\n{plan}");
    }
    let done = cli(&["repair", "--yes"]);
    assert_eq!(done.status.code(), Some(0), "{done:?}");
    let again = cli(&["repair"]);
    assert_eq!(
        String::from_utf8_lossy(&again.stdout).trim(),
        "nothing to repair: the queue's identity, keys, group and counters are sound"
    );
    assert_eq!(again.status.code(), Some(0));

    // The queue works again: produce, send, audit.
    let produce = cli(&["produce", "--count", "500", "--seed", "13"]);
    assert_eq!(produce.status.code(), Some(0), "{produce:?}");
    let mut sender = spawn_sender_process(&redis.url, &prefix, "s", &["--mean", "0ms"]);
    wait_until("all 1,500 sent", Duration::from_secs(30), || {
        all_settled(&store, 1_500)
    })
    .await;
    terminate(&sender);
    assert_eq!(
        wait_exit(&mut sender, Duration::from_secs(15)).await.code(),
        Some(0)
    );
    let audit = cli(&["audit"]);
    assert_eq!(
        audit.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&audit.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_names_the_batches_of_its_run_that_redis_lost() {
    let redis = start_redis().await;
    let store = store(&redis.url, &unique_prefix("lostbatch")).await;
    let settings = sms_alerts::settings::ProduceSettings {
        count: 200_000,
        batch: 100,
        seed: Some(14),
        run_id: Some("r".to_owned()),
        ..sms_alerts::settings::ProduceSettings::default()
    };
    let producing = tokio::spawn({
        let store = store.clone();
        async move {
            sms_alerts::produce::run(
                &store,
                &settings,
                &tokio_util::sync::CancellationToken::new(),
            )
            .await
        }
    });
    // Redis "forgets" batch 1 once it has landed, as a crash under
    // `appendfsync everysec` forgets a tail of acknowledged writes.
    let batches = store.keys().run_batches("r");
    wait_until("batch 1 is recorded", Duration::from_secs(30), || async {
        redis::cmd("HEXISTS")
            .arg(&batches)
            .arg(1)
            .query_async::<bool>(&mut raw(&redis.url).await)
            .await
            .unwrap_or(false)
    })
    .await;
    command(&redis.url, &["HDEL", &batches, "1"]).await;
    let err = producing
        .await
        .expect("no panic")
        .expect_err("the end-of-run check finds batch 1 gone");
    assert_eq!(
        err.to_string(),
        "queue state lost: producer run r: batches 1 of 2000 are no longer recorded: Redis lost \
         writes it had acknowledged (flushed, or restarted without its data)"
    );
    assert!(err.store_error().is_some_and(StoreError::is_queue_state));
}
