//! Chaos with real processes: senders killed with SIGKILL at random moments and
//! restarted under the same or a new name; poison entries mixed into a run.
//! At the end the monitor finishes, the audit passes and nothing is lost.

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use sms_alerts::audit;
use sms_alerts::stats::Snapshot;

const MESSAGES: u64 = 20_000;
const CONCURRENCY: u64 = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sigkills_and_restarts_lose_nothing() {
    let redis = start_redis().await;
    let prefix = unique_prefix("chaos");
    let store = store(&redis.url, &prefix).await;
    let started = Instant::now();
    produce_n(&store, 2026, MESSAGES).await;

    let failure_rates = ["0", "0.1", "0.2", "0.3"];
    let spawn = |name: &str, slot: usize, seed: u64| -> Child {
        let seed = seed.to_string();
        spawn_sender_process(
            &redis.url,
            &prefix,
            name,
            &[
                "--mean",
                "40ms",
                "--concurrency",
                &CONCURRENCY.to_string(),
                "--failure-rate",
                failure_rates[slot],
                "--lease",
                "1s",
                "--retry-backoff",
                "100ms",
                "--seed",
                &seed,
            ],
        )
    };
    let mut senders: Vec<(String, Child)> = (0..4)
        .map(|slot| {
            let name = format!("s{slot}");
            let child = spawn(&name, slot, slot as u64);
            (name, child)
        })
        .collect();

    // The driver: kill a random sender every 0.5 to 2 s, restart it under the
    // same name half of the time, under a new one otherwise.
    let mut rng = StdRng::seed_from_u64(7);
    let (mut kills, mut renamed) = (0u64, 0u64);
    while kills < 10 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..=2_000))).await;
        let slot = rng.random_range(0..senders.len());
        let (name, child) = &mut senders[slot];
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "{name} exited on its own"
        );
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        kills += 1;
        let next_name = if rng.random_bool(0.5) {
            name.clone()
        } else {
            renamed += 1;
            format!("s{slot}-r{kills}")
        };
        let child = spawn(&next_name, slot, 100 + kills);
        senders[slot] = (next_name, child);
    }

    let monitor = bin()
        .args([
            "--redis-url",
            &redis.url,
            "--prefix",
            &prefix,
            "monitor",
            "--interval",
            "200ms",
            "--until-done",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("monitor starts");
    let mut monitor = monitor;
    let status = wait_exit(&mut monitor, Duration::from_secs(90)).await;
    assert_eq!(status.code(), Some(0), "monitor --until-done finishes");

    for (name, child) in &mut senders {
        terminate(child);
        let status = wait_exit(child, Duration::from_secs(15)).await;
        assert!(status.success(), "{name} exits 0 on SIGTERM: {status:?}");
    }
    let audit_run = bin()
        .args(["--redis-url", &redis.url, "--prefix", &prefix, "audit"])
        .output()
        .expect("audit runs");
    let audit_text = String::from_utf8_lossy(&audit_run.stdout);
    assert_eq!(
        audit_run.status.code(),
        Some(0),
        "audit passes:\n{audit_text}"
    );

    let report = audit::run(&store, 10_000).await.expect("audit");
    let c = &report.counters;
    assert_eq!(c.sent + c.dead, MESSAGES, "sent + dead = produced");
    assert_eq!(report.pending, 0);
    assert!(
        c.duplicates <= kills * CONCURRENCY,
        "duplicates {} exceed what was in flight at the kills ({kills} × {CONCURRENCY})",
        c.duplicates
    );
    println!(
        "chaos: {MESSAGES} messages, {kills} SIGKILLs ({renamed} restarted under a new name), \
         sent {}, dead {}, failed attempts {}, duplicates {}, {:.1}s",
        c.sent,
        c.dead,
        c.failed,
        c.duplicates,
        started.elapsed().as_secs_f64()
    );
}

/// One random poison entry of the given kind.
fn poison(rng: &mut StdRng, kind: u32) -> Vec<(Vec<u8>, Vec<u8>)> {
    let good = |rng: &mut StdRng| -> Vec<(Vec<u8>, Vec<u8>)> {
        vec![
            (
                b"recipient".to_vec(),
                format!("+1555{:07}", rng.random_range(0..10_000_000)).into_bytes(),
            ),
            (b"body".to_vec(), b"evacuate now".to_vec()),
            (b"created_ms".to_vec(), b"1700000000000".to_vec()),
        ]
    };
    let mut fields = good(rng);
    match kind {
        // Random field names and values only.
        0 => {
            fields = (0..rng.random_range(1..6))
                .map(|_| {
                    let name: Vec<u8> = (0..rng.random_range(1..12))
                        .map(|_| rng.random::<u8>())
                        .collect();
                    let value: Vec<u8> = (0..rng.random_range(0..40))
                        .map(|_| rng.random::<u8>())
                        .collect();
                    (name, value)
                })
                .collect();
        }
        // Invalid UTF-8 body.
        1 => fields[1].1 = vec![0xff, 0xfe, b'a', 0xc3],
        // A huge body.
        2 => fields[1].1 = vec![b'x'; rng.random_range(101..50_000)],
        // A missing field.
        3 => {
            fields.remove(rng.random_range(0..3));
        }
        // Wrong types: a timestamp that is not a number, a recipient that is one.
        4 => fields[2].1 = b"yesterday".to_vec(),
        5 => fields[0].1 = b"5551234".to_vec(),
        // Thousands of fields and no body. (Extra fields alone are fine: a
        // message with them is still sendable, for forward compatibility.)
        _ => {
            fields.remove(1);
            fields.extend((0..2_000).map(|i| (format!("f{i}").into_bytes(), b"v".to_vec())));
        }
    }
    fields
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_poison_entries_all_end_in_the_dead_stream() {
    let redis = start_redis().await;
    let store = store(&redis.url, &unique_prefix("poison")).await;
    produce_n(&store, 1, 1_000).await;
    let mut rng = StdRng::seed_from_u64(99);
    let mut conn = raw(&redis.url).await;
    let mut pipe = redis::pipe();
    for i in 0..1_000u32 {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(store.keys().messages()).arg("*");
        for (name, value) in poison(&mut rng, i % 7) {
            cmd.arg(name).arg(value);
        }
        pipe.add_command(cmd).ignore();
    }
    let _: () = pipe.query_async(&mut conn).await.expect("poison written");
    produce_n(&store, 2, 1_000).await;

    let a = RunningSender::start(&store, send_settings("a", 1, 0.1));
    let b = RunningSender::start(&store, send_settings("b", 2, 0.0));
    wait_until("everything is settled", Duration::from_secs(60), || async {
        Snapshot::read(&store)
            .await
            .map(|s| s.pending == 0 && s.lag == Some(0) && s.settled() == 3_000)
            .unwrap_or(false)
    })
    .await;
    a.stop().await;
    b.stop().await;

    let report = audit::run(&store, 1_000).await.expect("audit");
    assert!(report.is_consistent(), "{}", report.to_text());
    assert_eq!(report.counters.dead_malformed, 1_000);
    assert_eq!(report.dead_by_reason.get("malformed"), Some(&1_000));
    assert_eq!(
        report.counters.sent + report.counters.dead_max_attempts,
        2_000,
        "the good messages around the poison were all handled"
    );
    let dead = dead_entries(&redis.url, &store).await;
    assert!(
        dead.iter().all(|e| e.contains_key("dead_reason")),
        "every dead letter has a reason"
    );
    assert!(
        dead.iter().any(|e| e.contains_key("dead_truncated_fields")),
        "an entry with thousands of fields is kept, truncated"
    );
}
