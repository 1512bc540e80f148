//! Dead-letter tooling: `dead list` shows dead letters newest
//! first, by reason, limited, as a table or JSON lines; `dead requeue` moves
//! each selected dead letter that holds a valid message back into the stream
//! exactly once (counted as `requeued`, so the audit still balances) and
//! leaves the others; `dead purge` deletes those older than an age (counted
//! as `dead_purged`); all of them refuse a queue whose identity is gone.

mod common;

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::*;
use sms_alerts::dead::{self, Selection};
use sms_alerts::stats::Snapshot;
use sms_alerts::store::{Store, StoreError};

/// Entries no sender can decode, written before the good ones; each is
/// dead-lettered as `malformed`, with why it is not a message.
const MALFORMED: &[(&[(&str, &str)], &str)] = &[
    (
        &[("body", "no recipient"), ("created_ms", "1")],
        "missing field 'recipient'",
    ),
    (
        &[
            ("recipient", "12345"),
            ("body", "bad phone"),
            ("created_ms", "1"),
        ],
        "recipient '12345' is not an E.164 phone number",
    ),
    (
        &[("body", "no recipient either"), ("created_ms", "2")],
        "missing field 'recipient'",
    ),
];

/// The fields of a dead letter in `dead list --json` (in serde_json's order).
const JSON_FIELDS: [&str; 8] = [
    "attempts",
    "body",
    "consumer",
    "id",
    "message_id",
    "partition",
    "reason",
    "recipient",
];

type Fields = HashMap<String, String>;

/// What one run of the binary did.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `sms-alerts --redis-url url --prefix prefix args...` to its end.
async fn sms(url: &str, prefix: &str, args: &[&str]) -> Ran {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let log = format!("cli-{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let mut child = KillOnDrop(spawn_process(url, prefix, &log, args));
    let status = wait_exit(&mut child, Duration::from_secs(20)).await;
    let mut stdout = String::new();
    if let Some(mut out) = child.stdout.take() {
        out.read_to_string(&mut stdout).expect("stdout is text");
    }
    let stderr = std::fs::read_to_string(log_path(&format!("{prefix}-{log}"))).unwrap_or_default();
    Ran {
        code: status.code(),
        stdout,
        stderr,
    }
}

/// Runs a `dead` subcommand and expects exit 0; returns its stdout.
async fn dead_ok(url: &str, prefix: &str, args: &[&str]) -> String {
    let mut all = vec!["dead"];
    all.extend_from_slice(args);
    let ran = sms(url, prefix, &all).await;
    assert_eq!(
        ran.code,
        Some(0),
        "expected `dead {}` to exit 0; stdout:\n{}stderr:\n{}",
        args.join(" "),
        ran.stdout,
        ran.stderr
    );
    ran.stdout
}

/// The entries of stream `key` from `start` (`-`, or `(id` for after id).
async fn entries(url: &str, key: &str, start: &str) -> Vec<(String, Fields)> {
    let rows: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(key)
        .arg(start)
        .arg("+")
        .query_async(&mut raw(url).await)
        .await
        .expect("XRANGE");
    rows.into_iter()
        .map(|(id, fields)| (id, fields.into_iter().collect()))
        .collect()
}

/// The `requeued_from` of each stream entry after `end`, oldest first.
async fn requeued_from(url: &str, messages: &str, end: &str) -> Vec<String> {
    let added = entries(url, messages, &format!("({end}")).await;
    added
        .into_iter()
        .map(|(_, f)| f.get("requeued_from").cloned().unwrap_or_default())
        .collect()
}

async fn dead_ids(url: &str, store: &Store) -> Vec<String> {
    let all = entries(url, &store.keys().dead(), "-").await;
    all.into_iter().map(|(id, _)| id).collect()
}

/// The id of the newest entry of `key` (`0-0` if empty).
async fn last_id(url: &str, key: &str) -> String {
    let all = entries(url, key, "-").await;
    all.last()
        .map_or_else(|| "0-0".to_owned(), |(id, _)| id.clone())
}

/// Redis's clock in milliseconds.
async fn redis_ms(url: &str) -> u64 {
    let (s, us): (u64, u64) = redis::cmd("TIME")
        .query_async(&mut raw(url).await)
        .await
        .expect("TIME");
    s * 1000 + us / 1000
}

/// The millisecond part of a stream id.
fn ms(id: &str) -> u64 {
    id.split_once('-')
        .and_then(|(ms, _)| ms.parse().ok())
        .unwrap_or_else(|| panic!("not a stream id: {id}"))
}

/// Waits until Redis's clock is past `at_ms`, so an age counted from now
/// covers every entry written up to then.
async fn wait_clock_past(url: &str, at_ms: u64) {
    wait_until(
        "Redis's clock moves on",
        Duration::from_secs(10),
        || async { redis_ms(url).await > at_ms },
    )
    .await;
}

/// A queue with the [`MALFORMED`] entries, then `good` produced messages,
/// all dead-lettered.
async fn dead_queue(url: &str, test: &str, good: u64) -> (Store, String) {
    let prefix = unique_prefix(test);
    let store = store(url, &prefix).await;
    let mut conn = raw(url).await;
    for (fields, _) in MALFORMED {
        let _: String = redis::cmd("XADD")
            .arg(store.keys().messages())
            .arg("*")
            .arg(*fields)
            .query_async(&mut conn)
            .await
            .expect("XADD malformed");
    }
    produce_n(&store, 11, good).await;
    fail_all(&store, "failing", good + MALFORMED.len() as u64).await;
    (store, prefix)
}

/// A working sender, until `sent` messages are sent and nothing is pending.
async fn send_all(store: &Store, sent: u64) {
    let sender = RunningSender::start(store, send_settings("working", 0, 0.0));
    wait_until(&format!("{sent} sent"), Duration::from_secs(20), || async {
        Snapshot::read(store)
            .await
            .is_ok_and(|s| s.sent == sent && s.pending == 0)
    })
    .await;
    sender.stop().await;
}

/// `audit` run as a process: exit 0 and "consistent".
async fn assert_audit_consistent(url: &str, prefix: &str) {
    let ran = sms(url, prefix, &["audit"]).await;
    assert!(
        ran.code == Some(0) && ran.stdout.contains("\nconsistent: "),
        "expected audit to exit 0 and report consistent, got {:?}:\n{}{}",
        ran.code,
        ran.stdout,
        ran.stderr
    );
}

/// The first five columns (id, reason, attempts, message, address) of each
/// row of `dead list`'s table.
fn table_rows(table: &str) -> Vec<Vec<String>> {
    let mut lines = table.lines();
    let header = lines.next().unwrap_or_default();
    assert!(
        header.starts_with("dead letter") && header.ends_with("text"),
        "expected the table header, got {header:?}"
    );
    lines
        .map(|line| line.split_whitespace().take(5).map(str::to_owned).collect())
        .collect()
}

fn column(rows: &[Vec<String>], n: usize) -> Vec<String> {
    rows.iter().map(|row| row[n].clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_shows_newest_first_by_reason_and_limited() {
    let redis = start_redis().await;
    let url = redis.url.as_str();
    // 123 dead letters: more than one page of 100, and more than the
    // default limit; the malformed ones are the oldest, on the last page.
    let (store, prefix) = dead_queue(url, "list", 120).await;
    let all = entries(url, &store.keys().dead(), "-").await;
    let newest_first: Vec<String> = all.iter().rev().map(|(id, _)| id.clone()).collect();
    let reason_of: HashMap<&str, &str> = all
        .iter()
        .map(|(id, f)| (id.as_str(), f["dead_reason"].as_str()))
        .collect();

    let rows = table_rows(&dead_ok(url, &prefix, &["list"]).await);
    assert_eq!(
        column(&rows, 0),
        newest_first[..100],
        "expected the 100 newest dead letters (the default limit), newest first"
    );
    for row in &rows {
        assert_eq!(row[1], reason_of[row[0].as_str()], "reason of {row:?}");
        assert_eq!(row[2], "1", "attempts of {row:?}");
    }

    let rows = table_rows(&dead_ok(url, &prefix, &["list", "--reason", "malformed"]).await);
    let malformed: Vec<String> = newest_first
        .iter()
        .filter(|id| reason_of[id.as_str()] == "malformed")
        .cloned()
        .collect();
    assert_eq!(malformed.len(), MALFORMED.len());
    assert_eq!(
        column(&rows, 0),
        malformed,
        "expected only the malformed dead letters, newest first"
    );
    let mut recipients = column(&rows, 4);
    recipients.sort();
    assert_eq!(
        recipients,
        ["-", "-", "12345"],
        "a missing recipient shows as '-', a bad one as it was"
    );

    let rows = table_rows(&dead_ok(url, &prefix, &["list", "--limit", "7"]).await);
    assert_eq!(column(&rows, 0), newest_first[..7], "--limit 7");
    let rows = table_rows(&dead_ok(url, &prefix, &["list", "--limit", "1000"]).await);
    assert_eq!(column(&rows, 0), newest_first, "--limit 1000 shows all");
    let args = ["list", "--reason", "max_attempts", "--limit", "2"];
    let rows = table_rows(&dead_ok(url, &prefix, &args).await);
    assert_eq!(
        column(&rows, 0),
        newest_first
            .iter()
            .filter(|id| reason_of[id.as_str()] == "max_attempts")
            .take(2)
            .cloned()
            .collect::<Vec<_>>(),
        "--reason max_attempts --limit 2"
    );
    let rows = table_rows(&dead_ok(url, &prefix, &["list", "--reason", "deleted"]).await);
    assert!(rows.is_empty(), "no dead letter was deleted, got {rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_json_prints_one_object_per_dead_letter() {
    let redis = start_redis().await;
    let url = redis.url.as_str();
    let (store, prefix) = dead_queue(url, "json", 20).await;
    let all = entries(url, &store.keys().dead(), "-").await;
    let args = ["list", "--json", "--limit", "1000"];
    let stdout = dead_ok(url, &prefix, &args).await;
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        all.len(),
        "one line per dead letter:\n{stdout}"
    );
    for (line, (id, fields)) in lines.iter().zip(all.iter().rev()) {
        let letter: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|err| panic!("expected a JSON object, got {line:?}: {err}"));
        let keys: Vec<&String> = letter.as_object().expect("an object").keys().collect();
        assert_eq!(keys, JSON_FIELDS, "fields of {line}");
        let text = |name: &str| fields.get(name).map(|v| serde_json::json!(v));
        assert_eq!(letter["id"], serde_json::json!(id), "newest first: {line}");
        assert_eq!(letter["partition"], 0, "one partition: {line}");
        assert_eq!(Some(&letter["reason"]), text("dead_reason").as_ref());
        let attempts = fields
            .get("dead_attempts")
            .and_then(|n| n.parse::<u64>().ok());
        assert_eq!(letter["attempts"], serde_json::json!(attempts), "{line}");
        assert_eq!(
            Some(&letter["message_id"]),
            text("dead_message_id").as_ref()
        );
        assert_eq!(letter["consumer"], "failing", "{line}");
        let recipient = text("recipient").unwrap_or(serde_json::Value::Null);
        assert_eq!(letter["recipient"], recipient, "{line}");
        assert_eq!(
            letter["body"],
            text("body").unwrap_or(serde_json::Value::Null),
            "{line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_by_reason_moves_each_back_once_and_the_books_balance() {
    let redis = start_redis().await;
    let url = redis.url.as_str();
    let (store, prefix) = dead_queue(url, "by-reason", 120).await;
    let messages = store.keys().messages();
    let before = entries(url, &store.keys().dead(), "-").await;
    let (chosen, malformed): (Vec<_>, Vec<_>) = before
        .iter()
        .partition(|(_, f)| f["dead_reason"] == "max_attempts");
    let stream_end = last_id(url, &messages).await;

    let stdout = dead_ok(url, &prefix, &["requeue", "--reason", "max_attempts"]).await;
    assert_eq!(stdout, "requeued 120 dead letters\n");
    let added = entries(url, &messages, &format!("({stream_end}")).await;
    let mut from: Vec<&str> = added
        .iter()
        .map(|(_, f)| f.get("requeued_from").map_or("none", String::as_str))
        .collect();
    from.sort_unstable();
    let mut expected: Vec<&str> = chosen.iter().map(|(id, _)| id.as_str()).collect();
    expected.sort_unstable();
    assert_eq!(from, expected, "each max_attempts dead letter back once");
    let original: HashMap<&str, &Fields> = chosen.iter().map(|(id, f)| (id.as_str(), f)).collect();
    for (id, fields) in &added {
        let dead = original[fields["requeued_from"].as_str()];
        for name in ["recipient", "body", "created_ms"] {
            assert_eq!(fields.get(name), dead.get(name), "{name} of {id}");
        }
        assert_eq!(
            fields.get("channel").map(String::as_str),
            Some(store.group()),
            "for its channel alone: {fields:?}"
        );
        assert_eq!(
            fields.len(),
            5,
            "only the message, requeued_from and channel: {fields:?}"
        );
    }
    let left: Vec<String> = malformed.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(dead_ids(url, &store).await, left, "the malformed stay");
    let s = Snapshot::read(&store).await.expect("snapshot");
    assert_eq!((s.requeued, s.dead), (120, 123), "requeued, dead");

    // Nothing of that reason is left; the malformed cannot be requeued.
    let stdout = dead_ok(url, &prefix, &["requeue", "--reason", "max_attempts"]).await;
    assert_eq!(stdout, "requeued 0 dead letters\n");
    let stdout = dead_ok(url, &prefix, &["requeue", "--reason", "malformed"]).await;
    let mut expected = "requeued 0 dead letters\n".to_owned();
    for (id, fields) in &malformed {
        let why = MALFORMED
            .iter()
            .find(|(entry, _)| {
                entry
                    .iter()
                    .all(|(k, v)| fields.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, why)| *why)
            .expect("a malformed entry of ours");
        expected.push_str(&format!("left {id}: not a valid message ({why})\n"));
    }
    assert_eq!(stdout, expected);
    assert_eq!(dead_ids(url, &store).await, left, "the malformed stay");
    let after = entries(url, &messages, &format!("({stream_end}")).await;
    assert_eq!(after.len(), 120, "nothing more was requeued");
    // The requeued wait in the stream, and the books balance already.
    assert_audit_consistent(url, &prefix).await;

    send_all(&store, 120).await;
    let s = Snapshot::read(&store).await.expect("snapshot");
    assert_eq!(
        (s.sent, s.dead, s.requeued),
        (120, 123, 120),
        "sent, dead, requeued"
    );
    assert_audit_consistent(url, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_by_id_moves_just_those_and_reports_unknown_ids() {
    let redis = start_redis().await;
    let url = redis.url.as_str();
    let (store, prefix) = dead_queue(url, "by-id", 10).await;
    let messages = store.keys().messages();
    let dead = entries(url, &store.keys().dead(), "-").await;
    let reason = |id: &str| &dead.iter().find(|(d, _)| d == id).expect("dead").1["dead_reason"];
    let ids: Vec<String> = dead.iter().map(|(id, _)| id.clone()).collect();
    let good: Vec<&str> = ids
        .iter()
        .filter(|id| reason(id) == "max_attempts")
        .map(String::as_str)
        .collect();
    let bad = ids
        .iter()
        .find(|id| reason(id) == "malformed")
        .expect("one");
    let (a, b, c) = (good[0], good[5], good[9]);
    let stream_end = last_id(url, &messages).await;
    let stdout = dead_ok(url, &prefix, &["requeue", "--id", a, b]).await;
    assert_eq!(stdout, "requeued 2 dead letters\n");
    assert_eq!(requeued_from(url, &messages, &stream_end).await, [a, b]);
    let rest: Vec<String> = ids
        .iter()
        .filter(|id| ![a, b].contains(&id.as_str()))
        .cloned()
        .collect();
    assert_eq!(dead_ids(url, &store).await, rest, "a and b left");

    // Again, and an id that never was: not found, nothing changes.
    for args in [["requeue", "--id", a], ["requeue", "--id", "1-1"]] {
        let stdout = dead_ok(url, &prefix, &args).await;
        assert_eq!(
            stdout,
            format!("requeued 0 dead letters\nnot found: {}\n", args[2])
        );
        assert_eq!(
            requeued_from(url, &messages, &stream_end).await,
            [a, b],
            "after {args:?}"
        );
        assert_eq!(dead_ids(url, &store).await, rest, "after {args:?}");
        let s = Snapshot::read(&store).await.expect("snapshot");
        assert_eq!(s.requeued, 2, "requeued after {args:?}");
    }

    // A malformed one is left where it is.
    let stdout = dead_ok(url, &prefix, &["requeue", "--id", bad]).await;
    assert!(
        stdout.starts_with(&format!(
            "requeued 0 dead letters\nleft {bad}: not a valid message ("
        )),
        "expected {bad} left as not a valid message, got:\n{stdout}"
    );
    assert_eq!(dead_ids(url, &store).await, rest);

    // The same id twice in one call goes back once.
    let stdout = dead_ok(url, &prefix, &["requeue", "--id", c, c]).await;
    assert!(
        stdout.starts_with("requeued 1 dead letters\n"),
        "expected {c} requeued once, got:\n{stdout}"
    );
    assert_eq!(requeued_from(url, &messages, &stream_end).await, [a, b, c]);
    let s = Snapshot::read(&store).await.expect("snapshot");
    assert_eq!(s.requeued, 3, "requeued");

    send_all(&store, 3).await;
    assert_audit_consistent(url, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_removes_dead_letters_older_than_the_age_and_counts_them() {
    let redis = start_redis().await;
    let url = redis.url.as_str();
    let (store, prefix) = dead_queue(url, "purge", 10).await;
    let first = dead_ids(url, &store).await;

    let stdout = dead_ok(url, &prefix, &["purge", "--older-than", "1h"]).await;
    assert_eq!(stdout, "purged 0 dead letters\n", "none is an hour old");
    assert_eq!(dead_ids(url, &store).await, first);

    // A second batch a second later: `--older-than 1s` takes the first.
    wait_clock_past(url, ms(first.last().expect("dead letters")) + 1_000).await;
    produce_n(&store, 12, 5).await;
    fail_all(&store, "failing-2", 18).await;
    let before = dead_ids(url, &store).await;
    let t0 = redis_ms(url).await;
    let stdout = dead_ok(url, &prefix, &["purge", "--older-than", "1s"]).await;
    let t1 = redis_ms(url).await;
    let after = dead_ids(url, &store).await;
    let gone: Vec<&String> = before.iter().filter(|id| !after.contains(id)).collect();
    assert_eq!(stdout, format!("purged {} dead letters\n", gone.len()));
    assert!(
        first.iter().all(|id| !after.contains(id)),
        "expected every dead letter of the first batch purged, {after:?} left"
    );
    assert!(
        gone.iter().all(|id| ms(id) < t1 - 1_000) && after.iter().all(|id| ms(id) >= t0 - 1_000),
        "expected only dead letters older than 1s purged (between {t0} and {t1}): \
         purged {gone:?}, left {after:?}"
    );
    let s = Snapshot::read(&store).await.expect("snapshot");
    assert_eq!(s.dead_purged, gone.len() as u64, "dead_purged");
    assert_audit_consistent(url, &prefix).await;

    wait_clock_past(url, ms(after.last().expect("young ones left"))).await;
    let stdout = dead_ok(url, &prefix, &["purge", "--older-than", "0s"]).await;
    assert_eq!(stdout, format!("purged {} dead letters\n", after.len()));
    assert_eq!(dead_ids(url, &store).await, Vec::<String>::new());
    let s = Snapshot::read(&store).await.expect("snapshot");
    assert_eq!((s.dead_purged, s.dead), (18, 18), "dead_purged, dead");
    let stdout = dead_ok(url, &prefix, &["purge", "--older-than", "0s"]).await;
    assert_eq!(stdout, "purged 0 dead letters\n");
    assert_audit_consistent(url, &prefix).await;
}

#[tokio::test]
async fn bad_requests_are_usage_errors() {
    // Parsed before any connection: nothing listens at this address.
    let url = format!("redis://127.0.0.1:{}", free_port());
    let cases: &[(&[&str], &[&str])] = &[
        // clap names only --reason here (it is `required_unless_present = "id"`).
        (&["dead", "requeue"], &["--reason"]),
        (
            &["dead", "requeue", "--reason", "malformed", "--id", "1-1"],
            &["--reason", "--id"],
        ),
        (&["dead", "requeue", "--id", "latest"], &["--id", "latest"]),
        (
            &["dead", "purge", "--older-than", "soon"],
            &["--older-than", "soon"],
        ),
        (&["dead", "purge"], &["--older-than"]),
        (&["dead", "list", "--limit", "0"], &["--limit", "0"]),
    ];
    for (args, names) in cases {
        let ran = sms(&url, &unique_prefix("usage"), args).await;
        assert_eq!(
            ran.code,
            Some(2),
            "expected {args:?} to exit 2: {}",
            ran.stderr
        );
        for name in *names {
            assert!(
                ran.stderr.contains(name),
                "expected {args:?}'s error to name {name}, got: {}",
                ran.stderr
            );
        }
        assert!(ran.stdout.is_empty(), "{args:?} printed {}", ran.stdout);
    }
}

/// Each `dead` subcommand on `prefix` exits 3 naming the lost state.
async fn assert_refused(url: &str, prefix: &str, when: &str) -> Vec<String> {
    let mut errors = Vec::new();
    for args in [
        &["dead", "requeue", "--reason", "max_attempts"][..],
        &["dead", "requeue", "--id", "1-1"],
        &["dead", "purge", "--older-than", "0s"],
        &["dead", "list"],
    ] {
        let ran = sms(url, prefix, args).await;
        assert!(
            ran.code == Some(3) && ran.stderr.starts_with("error: queue state lost: "),
            "{when}: expected {args:?} to exit 3 with `error: queue state lost:`, got {:?}:\n{}{}",
            ran.code,
            ran.stdout,
            ran.stderr
        );
        errors.push(ran.stderr);
    }
    errors
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_whose_identity_is_gone_is_refused() {
    let redis = start_redis().await;
    let url = redis.url.as_str();
    let (store, prefix) = dead_queue(url, "lost", 5).await;
    let dead_before = dead_ids(url, &store).await;
    let stream_before = entries(url, &store.keys().messages(), "-").await;
    let mut conn = raw(url).await;
    let _: u64 = redis::cmd("DEL")
        .arg(store.keys().queue())
        .query_async(&mut conn)
        .await
        .expect("DEL");

    // A process already running when the identity went: the Functions refuse.
    let requeue = dead::requeue(&store, &Selection::Reason("max_attempts".to_owned())).await;
    assert!(
        matches!(requeue, Err(StoreError::Lost(_))),
        "expected requeue to find the state lost, got {requeue:?}"
    );
    let purge = dead::purge(&store, Duration::ZERO).await;
    assert!(
        matches!(purge, Err(StoreError::Lost(_))),
        "expected purge to find the state lost, got {purge:?}"
    );
    // A process started afterwards stops at opening the queue, `dead list`
    // too (the dead letters are still there).
    assert_refused(url, &prefix, "identity deleted").await;
    assert_eq!(dead_ids(url, &store).await, dead_before, "dead stream");
    assert_eq!(
        entries(url, &store.keys().messages(), "-").await,
        stream_before,
        "stream"
    );
    assert_eq!(Snapshot::read(&store).await.expect("snapshot").requeued, 0);

    // Never created: the message says so.
    let never = unique_prefix("never");
    for stderr in assert_refused(url, &never, "never created").await {
        assert!(stderr.contains("never created"), "{stderr}");
    }

    let _: String = redis::cmd("FLUSHALL")
        .query_async(&mut conn)
        .await
        .expect("FLUSHALL");
    let fresh = unique_prefix("flushed");
    common::store(url, &fresh).await;
    let _: String = redis::cmd("FLUSHALL")
        .query_async(&mut conn)
        .await
        .expect("FLUSHALL");
    assert_refused(url, &fresh, "flushed").await;
}
