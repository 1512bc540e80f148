//! Redis going away under load: a restart (SIGKILL) mid-run with the producer,
//! the senders and the monitor working; a 10-second pause; and what a crash
//! loses under `appendfsync everysec`.
//!
//! With `everysec`, Redis usually `write()`s the AOF to the kernel before it
//! replies, but while a background `fsync` is still running (a busy disk) it
//! postpones that `write()` for up to two seconds and replies anyway. A crash
//! of the Redis *process* in that window loses writes it acknowledged. So the
//! everysec test measures the loss and checks its shape: whole batches at the
//! tail, counters still consistent.

mod common;

use std::io::Read;
use std::process::Child;
use std::time::{Duration, Instant};

use common::*;
use sms_alerts::audit;
use sms_alerts::stats::Snapshot;
use sms_alerts::store::Store;
use tokio_util::sync::CancellationToken;

async fn entries_added(store: &Store) -> u64 {
    Snapshot::read(store).await.map(|s| s.produced).unwrap_or(0)
}

fn stdout_of(child: &mut Child) -> String {
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_string(&mut out);
    }
    out
}

fn assert_running(children: &mut [(&str, &mut Child)]) {
    for (name, child) in children {
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "{name} exited while Redis was away"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_crash_and_restart_mid_run_loses_nothing_with_appendfsync_always() {
    let redis = start_redis_with(RedisOptions {
        appendfsync: Some("always"),
        host_port: Some(free_port()),
        ..RedisOptions::default()
    })
    .await;
    let prefix = unique_prefix("restart");
    let store = store(&redis.url, &prefix).await;
    const TOTAL: u64 = 50_000;

    let mut producer = spawn_process(
        &redis.url,
        &prefix,
        "producer",
        &["produce", "--count", &TOTAL.to_string(), "--batch", "100"],
    );
    let mut monitor = spawn_process(
        &redis.url,
        &prefix,
        "monitor",
        &["monitor", "--interval", "200ms", "--until-done"],
    );
    let mut senders: Vec<Child> = (0..2)
        .map(|i| {
            spawn_sender_process(
                &redis.url,
                &prefix,
                &format!("s{i}"),
                &[
                    "--mean",
                    "0ms",
                    "--failure-rate",
                    "0.05",
                    "--concurrency",
                    "200",
                ],
            )
        })
        .collect();
    wait_until(
        "the producer is a tenth of the way",
        Duration::from_secs(60),
        || async { entries_added(&store).await >= TOTAL / 10 },
    )
    .await;
    assert!(
        producer.try_wait().expect("try_wait").is_none(),
        "the producer is still producing"
    );

    // A crash, not a clean shutdown: SIGKILL.
    redis
        .container
        .stop_with_timeout(Some(0))
        .await
        .expect("redis killed");
    tokio::time::sleep(Duration::from_millis(500)).await;
    {
        let (a, b) = senders.split_at_mut(1);
        assert_running(&mut [
            ("producer", &mut producer),
            ("monitor", &mut monitor),
            ("sender s0", &mut a[0]),
            ("sender s1", &mut b[0]),
        ]);
    }
    redis.container.start().await.expect("redis starts again");

    let status = wait_exit(&mut monitor, Duration::from_secs(120)).await;
    assert_eq!(
        status.code(),
        Some(0),
        "monitor --until-done finishes after the restart"
    );
    let status = wait_exit(&mut producer, Duration::from_secs(10)).await;
    let said = stdout_of(&mut producer);
    assert!(
        status.success() && said.contains(&format!("produced {TOTAL} messages")),
        "{status:?}: {said}"
    );
    for sender in &mut senders {
        terminate(sender);
        assert!(wait_exit(sender, Duration::from_secs(15)).await.success());
    }

    let report = audit::run(&store, 10_000).await.expect("audit");
    assert!(report.is_consistent(), "{}", report.to_text());
    assert_eq!(
        report.produced, TOTAL,
        "every acknowledged batch survived, none was written twice"
    );
    assert_eq!(report.counters.sent + report.counters.dead, TOTAL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_second_pause_stops_nobody_and_work_resumes_quickly() {
    let redis = start_redis().await;
    let prefix = unique_prefix("pause");
    let store = store(&redis.url, &prefix).await;
    produce_n(&store, 3, 20_000).await;
    let mut sender = spawn_sender_process(
        &redis.url,
        &prefix,
        "patient",
        &["--mean", "10ms", "--concurrency", "10"],
    );
    let mut monitor = spawn_process(
        &redis.url,
        &prefix,
        "monitor",
        &["monitor", "--interval", "200ms"],
    );
    wait_until("work is under way", Duration::from_secs(30), || async {
        Snapshot::read(&store)
            .await
            .map(|s| s.sent >= 500)
            .unwrap_or(false)
    })
    .await;

    let before = Snapshot::read(&store).await.expect("snapshot").sent;
    redis.container.pause().await.expect("pause");
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_running(&mut [("sender", &mut sender), ("monitor", &mut monitor)]);
    redis.container.unpause().await.expect("unpause");
    let back = Instant::now();
    // More than what was in flight at the pause: new messages are moving.
    wait_until("sending resumes", Duration::from_secs(30), || async {
        Snapshot::read(&store)
            .await
            .map(|s| s.sent > before + 100)
            .unwrap_or(false)
    })
    .await;
    let resumed_after = back.elapsed();
    println!(
        "pause: work resumed {:.0} ms after Redis came back",
        resumed_after.as_secs_f64() * 1000.0
    );
    assert!(
        resumed_after < Duration::from_secs(2),
        "resumed after {resumed_after:?}"
    );
    assert_running(&mut [("sender", &mut sender), ("monitor", &mut monitor)]);
    terminate(&sender);
    terminate(&monitor);
    assert!(
        wait_exit(&mut sender, Duration::from_secs(15))
            .await
            .success()
    );
    assert!(
        wait_exit(&mut monitor, Duration::from_secs(15))
            .await
            .success()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_sent_again_while_its_first_try_waits_in_a_stalled_redis_is_added_once() {
    let redis = start_redis_with(RedisOptions {
        debug_command: true,
        ..RedisOptions::default()
    })
    .await;
    let prefix = unique_prefix("stall");
    let store = store(&redis.url, &prefix).await;
    const TOTAL: u64 = 200_000;
    const BATCH: usize = 100;
    let producing = tokio::spawn({
        let store = store.clone();
        async move {
            let settings = sms_alerts::settings::ProduceSettings {
                count: TOTAL,
                seed: Some(7),
                batch: BATCH,
                ..sms_alerts::settings::ProduceSettings::default()
            };
            sms_alerts::produce::run(&store, &settings, &CancellationToken::new()).await
        }
    });
    wait_until(
        "the producer is under way",
        Duration::from_secs(60),
        || async { entries_added(&store).await >= 2_000 },
    )
    .await;
    // Redis stalls for longer than the producer's 10 s reply timeout, as it
    // does behind a blocked disk: the batches on the wire time out while they
    // wait in Redis's socket, and the producer sends them again. Both tries
    // run once Redis wakes up.
    let mut sleeper = raw(&redis.url).await;
    let stall = tokio::spawn(async move {
        redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(12)
            .query_async::<()>(&mut sleeper)
            .await
    });
    let summary = tokio::time::timeout(Duration::from_secs(120), producing)
        .await
        .expect("the producer finishes")
        .expect("the producer task")
        .expect("the producer rides out the stall");
    let _ = stall.await;
    assert!(!summary.interrupted);
    assert_eq!(summary.count, TOTAL);

    let report = audit::run(&store, 10_000).await.expect("audit");
    assert!(report.is_consistent(), "{}", report.to_text());
    assert_eq!(report.produced, TOTAL, "every batch added exactly once");
    assert_eq!(report.counters.produced_by_producers, TOTAL);
    // Every try of a batch, first or not, starts with one WATCH.
    let calls = command_calls(&store, "watch").await;
    let batches = TOTAL / BATCH as u64;
    println!(
        "stall: {} batch writes sent again; {batches} batches",
        calls.saturating_sub(batches)
    );
    assert!(
        calls > batches,
        "the stall made the producer send batches again ({calls} WATCHes for {batches} batches)"
    );
}

/// The batch seqs a producer run recorded, read from its run hash (there is
/// exactly one run under `store`'s prefix in the test that calls this).
async fn recorded_batches(url: &str, store: &Store) -> Vec<u64> {
    let mut conn = raw(url).await;
    let pattern = store.keys().run_batches("*");
    let runs: Vec<String> = redis::cmd("KEYS")
        .arg(&pattern)
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    assert_eq!(runs.len(), 1, "one producer run under {pattern}: {runs:?}");
    let mut seqs: Vec<u64> = redis::cmd("HKEYS")
        .arg(&runs[0])
        .query_async(&mut conn)
        .await
        .expect("HKEYS");
    seqs.sort_unstable();
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_process_crash_with_appendfsync_everysec_loses_at_most_a_tail_of_whole_batches() {
    let redis = start_redis_with(RedisOptions {
        appendfsync: Some("everysec"),
        host_port: Some(free_port()),
        ..RedisOptions::default()
    })
    .await;
    let prefix = unique_prefix("everysec");
    let store = store(&redis.url, &prefix).await;
    const TOTAL: u64 = 300_000;
    const BATCH: u64 = 1_000;
    let mut producer = spawn_process(
        &redis.url,
        &prefix,
        "producer",
        &[
            "produce",
            "--count",
            &TOTAL.to_string(),
            "--batch",
            &BATCH.to_string(),
        ],
    );
    wait_until(
        "the producer is under way",
        Duration::from_secs(60),
        || async { entries_added(&store).await >= 50_000 },
    )
    .await;
    assert!(
        producer.try_wait().expect("try_wait").is_none(),
        "the producer is still producing"
    );
    redis
        .container
        .stop_with_timeout(Some(0))
        .await
        .expect("redis killed");
    redis.container.start().await.expect("redis starts again");
    let status = wait_exit(&mut producer, Duration::from_secs(60)).await;
    let said = stdout_of(&mut producer);

    let report = audit::run(&store, 10_000).await.expect("audit");
    let lost = TOTAL.saturating_sub(report.produced);
    println!(
        "everysec: a SIGKILL of Redis lost {lost} of {TOTAL} messages the producer had been told were written"
    );
    assert!(report.is_consistent(), "{}", report.to_text());
    assert_eq!(
        report.counters.produced_by_producers, report.produced,
        "a batch and its count are one atomic call: lost or kept together"
    );
    assert!(report.produced <= TOTAL, "no batch was written twice");

    // What was lost is whole batches, one contiguous run of them: the tail
    // of the AOF that Redis had acknowledged but not yet written. Every batch
    // sent after the restart landed.
    let seqs = recorded_batches(&redis.url, &store).await;
    let batches = TOTAL / BATCH;
    let missing: Vec<u64> = (1..=batches)
        .filter(|s| seqs.binary_search(s).is_err())
        .collect();
    assert_eq!(
        seqs.len() as u64 + missing.len() as u64,
        batches,
        "no unknown batch recorded: {seqs:?}"
    );
    assert_eq!(lost, missing.len() as u64 * BATCH, "loss is whole batches");
    let logged =
        std::fs::read_to_string(log_path(&format!("{prefix}-producer"))).unwrap_or_default();
    if let (Some(first), Some(last)) = (missing.first(), missing.last()) {
        assert_eq!(
            last - first + 1,
            missing.len() as u64,
            "lost batches are one contiguous run: {missing:?}"
        );
        assert!(*last < batches, "the batches after the crash all landed");
        // The producer checks its run at the end and names what Redis lost.
        let range = if first == last {
            first.to_string()
        } else {
            format!("{first}-{last}")
        };
        assert_eq!(status.code(), Some(3), "{said}\n{logged}");
        assert!(
            logged.contains(&format!(
                "error: queue state lost: producer run {}: batches {range} of {batches} are no \
                 longer recorded",
                said.lines()
                    .next()
                    .and_then(|l| l.strip_prefix("producer run "))
                    .and_then(|l| l.split(':').next())
                    .unwrap_or_default()
            )),
            "the producer names the lost batches:\n{logged}"
        );
    } else {
        assert!(
            status.success() && said.contains(&format!("produced {TOTAL} messages")),
            "the producer rides out the crash: {status:?}: {said}\n{logged}"
        );
    }
}
