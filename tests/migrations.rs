//! `migrate` and the migrations hash: a step is recorded only once Redis
//! holds it (a user whose ACL denies `FUNCTION` gets an error naming it and
//! leaves no record), and a queue made before queues had an identity, on an
//! older library, is given one and keeps working.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use sms_alerts::audit;
use sms_alerts::keys::Keys;
use sms_alerts::store::{MIGRATIONS, Store};

/// Runs `sms-alerts migrate` on `url`; returns its exit code, stdout and stderr.
fn migrate(url: &str, prefix: &str) -> (Option<i32>, String, String) {
    let output = bin()
        .args(["--redis-url", url, "--prefix", prefix, "migrate"])
        .output()
        .expect("migrate runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Sends one raw command, which must succeed.
async fn command(conn: &mut redis::aio::MultiplexedConnection, args: &[&str]) -> redis::Value {
    redis::cmd(args[0])
        .arg(&args[1..])
        .query_async(conn)
        .await
        .unwrap_or_else(|err| panic!("expected {} to succeed: {err}", args[0]))
}

/// The migrations hash of the queue under `prefix`.
async fn recorded(url: &str, prefix: &str) -> HashMap<String, String> {
    redis::cmd("HGETALL")
        .arg(Keys::new(prefix).migrations())
        .query_async(&mut raw(url).await)
        .await
        .expect("HGETALL")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_function_load_fails_migrate_and_records_no_step() {
    let redis = start_redis().await;
    let prefix = unique_prefix("acl");
    let user = [
        "ACL",
        "SETUSER",
        "nofunction",
        "on",
        ">secret",
        "~*",
        "&*",
        "+@all",
        "-function",
    ];
    command(&mut raw(&redis.url).await, &user).await;
    let limited = format!("redis://nofunction:secret@127.0.0.1:{}", redis.port);

    let (code, stdout, stderr) = migrate(&limited, &prefix);
    assert_ne!(code, Some(0), "expected migrate to fail:\n{stdout}{stderr}");
    assert!(
        stderr.contains("FUNCTION"),
        "expected the error to name FUNCTION, got:\n{stderr}"
    );
    let steps = recorded(&redis.url, &prefix).await;
    assert!(
        MIGRATIONS.iter().all(|m| !steps.contains_key(m.name)),
        "expected no step recorded after a denied load, got {steps:?}"
    );

    // The same migrate by a user who may load Functions records every step.
    let (code, stdout, stderr) = migrate(&redis.url, &prefix);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let steps = recorded(&redis.url, &prefix).await;
    let missing: Vec<_> = MIGRATIONS
        .iter()
        .filter(|m| !steps.contains_key(m.name))
        .map(|m| m.name)
        .collect();
    assert!(
        missing.is_empty(),
        "expected every step recorded, missing {missing:?}"
    );
}

/// A library that only reports an older version, standing for any library
/// older than this binary's.
const OLDER_LIBRARY: &str = "#!lua name=sms_alerts\n\
    redis.register_function { function_name = 'sms_version', \
    callback = function() return 6 end, flags = { 'no-writes' } }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_without_identity_is_adopted_by_migrate_and_keeps_working() {
    let redis = start_redis().await;
    let prefix = unique_prefix("adopt");
    let keys = Keys::new(&prefix);
    let stream = keys.messages();
    let mut conn = raw(&redis.url).await;
    // A queue without identity on an older library, steps 1 to 6 recorded:
    // 300 messages produced, 20 read by sender `old`, 10 of them sent and
    // counted, 10 left pending.
    command(&mut conn, &["FUNCTION", "LOAD", "REPLACE", OLDER_LIBRARY]).await;
    for migration in MIGRATIONS.iter().filter(|m| m.version <= 6) {
        command(
            &mut conn,
            &["HSETNX", &keys.migrations(), migration.name, "1"],
        )
        .await;
    }
    command(
        &mut conn,
        &["XGROUP", "CREATE", &stream, "senders", "0", "MKSTREAM"],
    )
    .await;
    let mut generator = sms_alerts::generator::MessageGenerator::seeded(9);
    for _ in 0..300 {
        let m = generator.next_message(1);
        let fields = [
            "recipient",
            &m.recipient,
            "body",
            &m.body,
            "created_ms",
            "1",
        ];
        command(&mut conn, &[&["XADD", &stream, "*"][..], &fields].concat()).await;
    }
    let read: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg(&[
            "GROUP", "senders", "old", "COUNT", "20", "STREAMS", &stream, ">",
        ])
        .query_async(&mut conn)
        .await
        .expect("XREADGROUP");
    let ids: Vec<&str> = read.keys[0].ids.iter().map(|e| e.id.as_str()).collect();
    command(
        &mut conn,
        &[&["XACK", &stream, "senders"][..], &ids[..10]].concat(),
    )
    .await;
    let (stats, sender_stats) = (keys.stats(), keys.sender_stats("old"));
    command(&mut conn, &["HSET", &stats, "produced", "300"]).await;
    for key in [&stats, &sender_stats] {
        command(&mut conn, &["HSET", key, "sent", "10", "attempts", "10"]).await;
    }

    let (code, stdout, stderr) = migrate(&redis.url, &prefix);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("gave an identity to queue")
            && stdout.contains("applied 0007_queue_identity"),
        "expected the queue adopted and step 7 applied, got:\n{stdout}"
    );
    let store = Store::connect(&queue(&redis.url, &prefix))
        .await
        .expect("connects")
        .open()
        .await
        .expect("the adopted queue opens");
    // Sender `old` resumes its pending work under its name.
    let sender = RunningSender::start(&store, send_settings("old", 0, 0.0));
    wait_until("all sent", Duration::from_secs(30), || {
        all_settled(&store, 300)
    })
    .await;
    sender.stop().await;
    let report = audit::run(&store, 1_000).await.expect("audit");
    assert!(report.is_consistent(), "{}", report.to_text());
    assert_eq!(report.counters.sent, 300);
    assert_eq!(report.counters.duplicates, 0);
}
