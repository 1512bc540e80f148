//! Memory is bounded by bytes, not by message count: foreign entries with
//! 1 MB bodies among normal messages are dead-lettered as `malformed`
//! without a sender or the audit ever holding them whole, so both stay
//! within a fixed peak RSS.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use sms_alerts::stats::Snapshot;
use sms_alerts::store::Store;

/// Normal messages, produced through the library.
const NORMAL: u64 = 100_000;
/// Foreign entries with a big body: half in the middle of the stream, half
/// at its end, so that reads and audit pages meet them in bunches.
const BIG: u64 = 300;
/// The body of each foreign entry.
const BIG_BODY_BYTES: usize = 1024 * 1024;
/// The most a sender or the audit may hold at its peak, in KiB.
const PEAK_RSS_LIMIT_KIB: u64 = 64 * 1024;

/// The dead stream as `"<message id> <reason>"` lines, read inside Redis so
/// the test never holds the big bodies either (and never uses the library's
/// own decoding to check it).
const DEAD_REASONS: &str = r"
local out = {}
for _, entry in ipairs(redis.call('XRANGE', KEYS[1], '-', '+')) do
  local fields, id, reason = entry[2], '?', '?'
  for i = 1, #fields, 2 do
    if fields[i] == 'dead_message_id' then id = fields[i + 1] end
    if fields[i] == 'dead_reason' then reason = fields[i + 1] end
  end
  out[#out + 1] = id .. ' ' .. reason
end
return out
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_foreign_entries_are_dead_lettered_without_being_held() {
    let redis = start_redis().await;
    let prefix = unique_prefix("memory");
    let store = store(&redis.url, &prefix).await;
    let big_ids = write_queue(&redis.url, &store).await;

    let sender_peak = sender_peak_kib(&redis.url, &prefix, &store).await;
    let snapshot = Snapshot::read(&store).await.expect("snapshot");
    assert_eq!(
        (snapshot.sent, snapshot.dead_malformed, snapshot.dead),
        (NORMAL, BIG, BIG),
        "expected every normal message sent and every big entry dead as malformed"
    );
    let dead: BTreeSet<String> = redis::cmd("EVAL")
        .arg(DEAD_REASONS)
        .arg(1)
        .arg(store.keys().dead())
        .query_async(&mut raw(&redis.url).await)
        .await
        .expect("dead stream read");
    let expected: BTreeSet<String> = big_ids.iter().map(|id| format!("{id} malformed")).collect();
    assert_eq!(dead, expected, "the dead stream holds the big entries");

    let (audit_peak, report) = audit_peak_kib(&redis.url, &prefix);
    assert_eq!(
        report["dead_by_reason"],
        serde_json::json!({ "malformed": BIG }),
        "audit report: {report}"
    );
    assert_eq!(
        report["problems"],
        serde_json::json!([]),
        "audit report: {report}"
    );

    eprintln!("peak RSS: sender {sender_peak} KiB, audit {audit_peak} KiB");
    assert!(
        sender_peak <= PEAK_RSS_LIMIT_KIB && audit_peak <= PEAK_RSS_LIMIT_KIB,
        "expected peak RSS <= {PEAK_RSS_LIMIT_KIB} KiB each, got sender {sender_peak} KiB \
         and audit {audit_peak} KiB"
    );
}

/// Produces the normal messages and adds the foreign entries; returns the
/// foreign entries' ids.
async fn write_queue(url: &str, store: &Store) -> Vec<String> {
    let mut conn = raw(url).await;
    let body = vec![b'x'; BIG_BODY_BYTES];
    let mut ids = Vec::new();
    for half in 0..2 {
        produce_n(store, half, NORMAL / 2).await;
        for _ in 0..BIG / 2 {
            let id: String = redis::cmd("XADD")
                .arg(store.keys().messages())
                .arg("*")
                .arg("recipient")
                .arg("+15551234567")
                .arg("body")
                .arg(&body)
                .arg("created_ms")
                .arg(1)
                .query_async(&mut conn)
                .await
                .expect("XADD of a big entry");
            ids.push(id);
        }
    }
    ids
}

/// Runs a sender process until everything is settled and returns its peak
/// RSS, read just before it is asked to stop (and while it stops).
async fn sender_peak_kib(url: &str, prefix: &str, store: &Store) -> u64 {
    let mut sender = spawn_sender_process(
        url,
        prefix,
        "memory",
        &["--concurrency", "1000", "--mean", "0ms"],
    );
    let pid = sender.id();
    wait_until(
        "every message is sent or dead",
        Duration::from_secs(300),
        || all_settled(store, NORMAL + BIG),
    )
    .await;
    let mut peak = peak_rss_kib(pid).expect("the sender is still running");
    terminate(&sender);
    let status = loop {
        if let Some(status) = sender.try_wait().expect("try_wait") {
            break status;
        }
        // Gone once the process has exited (a zombie has no memory left).
        peak = peak.max(peak_rss_kib(pid).unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(status.success(), "the sender stops cleanly, got {status}");
    peak
}

/// `VmHWM` of a running process: its peak resident set so far, in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse().ok())
}

/// Runs `audit --json` as a process under GNU time, which reports the
/// child's peak RSS exactly however quickly it ends. Returns that peak and
/// the report.
fn audit_peak_kib(url: &str, prefix: &str) -> (u64, serde_json::Value) {
    let time = Path::new("/usr/bin/time");
    assert!(
        time.exists(),
        "this test needs GNU time at {}: `apt-get install time` (.ci/test does)",
        time.display()
    );
    let measured = log_path(&format!("{prefix}-audit-rss"));
    let output = Command::new(time)
        .arg("--format=%M")
        .arg(format!("--output={}", measured.display()))
        .arg(env!("CARGO_BIN_EXE_sms-alerts"))
        .args(["--redis-url", url, "--prefix", prefix, "audit", "--json"])
        .env_remove("REDIS_URL")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("audit runs under /usr/bin/time");
    assert!(
        output.status.success(),
        "audit passes, got {}: {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let report = serde_json::from_slice(&output.stdout).expect("audit prints JSON");
    let peak = std::fs::read_to_string(&measured)
        .expect("GNU time wrote its figure")
        .trim()
        .parse()
        .expect("GNU time's %M is a number of KiB");
    (peak, report)
}
