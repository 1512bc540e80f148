//! A Redis at `maxmemory` (policy noeviction): the inspection tools start
//! and work without writing, a sender that cannot write its results stops
//! reading new work, retries with backoff and logs sparingly, the monitor
//! names the memory state, and everything drains once memory is back.

mod common;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use sms_alerts::stats::Snapshot;
use sms_alerts::store::Store;

/// A Redis that refuses writes rather than evict when it is full.
async fn start_noeviction_redis() -> TestRedis {
    start_redis_with(RedisOptions {
        extra_args: vec!["--maxmemory-policy", "noeviction"],
        ..RedisOptions::default()
    })
    .await
}

/// One field of an `INFO` section.
async fn info_field(store: &Store, section: &str, field: &str) -> Option<String> {
    let info = store.inspector().info(section).await.expect("INFO");
    info.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .map(|value| value.trim().to_owned())
}

/// OOM errors Redis has replied since it started (`INFO errorstats`).
async fn oom_replies(store: &Store) -> u64 {
    info_field(store, "errorstats", "errorstat_OOM")
        .await
        .and_then(|v| v.strip_prefix("count=")?.parse().ok())
        .unwrap_or(0)
}

/// Sets `maxmemory` to three quarters of what Redis uses now, so every write
/// is refused whatever a connection or two more costs, and checks with a
/// probe write that Redis says OOM. Returns the limit.
async fn fill_memory(url: &str, store: &Store) -> u64 {
    let used: u64 = info_field(store, "memory", "used_memory")
        .await
        .and_then(|v| v.parse().ok())
        .expect("used_memory in INFO memory");
    let limit = used * 3 / 4;
    let mut conn = raw(url).await;
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(limit)
        .query_async(&mut conn)
        .await
        .expect("CONFIG SET maxmemory");
    let probe: redis::RedisResult<()> = redis::cmd("SET")
        .arg("maxmemory-probe")
        .arg("x")
        .query_async(&mut conn)
        .await;
    let code = probe.as_ref().err().and_then(|e| e.code());
    assert_eq!(
        code,
        Some("OOM"),
        "a write at maxmemory {limit} (used {used}) is refused with OOM, got {probe:?}"
    );
    limit
}

/// Lifts the limit again.
async fn free_memory(url: &str) {
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(0)
        .query_async(&mut raw(url).await)
        .await
        .expect("CONFIG SET maxmemory 0");
}

/// The consumer group as Redis reports it (`XINFO GROUPS`): entries read
/// (delivered at least once), pending, lag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct GroupReads {
    entries_read: u64,
    pending: u64,
    lag: u64,
}

async fn group_reads(url: &str, store: &Store) -> GroupReads {
    let groups: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(store.keys().messages())
        .query_async(&mut raw(url).await)
        .await
        .expect("XINFO GROUPS");
    let ours = |g: &&HashMap<String, redis::Value>| matches!(g.get("name"), Some(redis::Value::BulkString(n)) if n == store.group().as_bytes());
    let group = groups.iter().find(ours).expect("the group exists");
    let int = |field: &str| match group.get(field) {
        Some(redis::Value::Int(n)) => *n as u64,
        other => panic!("expected an integer {field} in XINFO GROUPS, got {other:?}"),
    };
    GroupReads {
        entries_read: int("entries-read"),
        pending: int("pending"),
        lag: int("lag"),
    }
}

/// Runs the binary to its end with a deadline, expecting exit code 0 and
/// nothing logged at warn or above (stderr is kept in a log file named
/// `log`); returns its stdout.
async fn run_quietly(url: &str, prefix: &str, log: &str, args: &[&str]) -> String {
    let mut child = KillOnDrop(spawn_process(url, prefix, log, args));
    let status = wait_exit(&mut child, Duration::from_secs(20)).await;
    let stdout = child
        .stdout
        .take()
        .map(std::io::read_to_string)
        .transpose()
        .expect("stdout")
        .unwrap_or_default();
    let stderr = std::fs::read_to_string(log_path(&format!("{prefix}-{log}"))).unwrap_or_default();
    let command = args.join(" ");
    assert_eq!(
        status.code(),
        Some(0),
        "`{command}` at maxmemory: expected exit 0, got {status:?}; stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stderr.is_empty(),
        "`{command}` at maxmemory: expected no warning or error, got:\n{stderr}"
    );
    stdout
}

/// Starts `monitor --interval 100ms`; stdout goes to the returned file,
/// stderr to the log `log`.
fn spawn_monitor(url: &str, prefix: &str, log: &str) -> (KillOnDrop, std::path::PathBuf) {
    let out_path = log_path(&format!("{prefix}-{log}-stdout"));
    let child = bin()
        .args(["--redis-url", url, "--prefix", prefix])
        .args(["monitor", "--interval", "100ms"])
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(log_path(&format!("{prefix}-{log}"))).expect("log file"))
        .spawn()
        .expect("monitor starts");
    (KillOnDrop(child), out_path)
}

/// A process's WARN and ERROR log lines (`--log-format json`), parsed.
fn warnings(log: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log_path(log))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| matches!(line["level"].as_str(), Some("WARN" | "ERROR")))
        .collect()
}

fn show(lines: &[serde_json::Value]) -> String {
    lines
        .iter()
        .map(|l| l.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_running(child: &RefCell<KillOnDrop>, what: &str) {
    let status = child.borrow_mut().try_wait().expect("try_wait");
    assert!(
        status.is_none(),
        "{what} keeps running at maxmemory, got exit {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspection_tools_start_and_work_on_a_full_redis() {
    let redis = start_noeviction_redis().await;
    let prefix = unique_prefix("fulltools");
    let store = store(&redis.url, &prefix).await;
    // A quiet queue with dead letters, a finished run and a stopped sender.
    produce_n(&store, 14, 300).await;
    let sender = RunningSender::start(&store, send_settings("worker", 1, 0.5));
    wait_until("all 300 are settled", Duration::from_secs(30), || {
        all_settled(&store, 300)
    })
    .await;
    sender.stop().await;
    let dead = Snapshot::read(&store).await.expect("snapshot").dead;
    assert!(
        dead > 0,
        "at a 50% failure rate some messages die, got {dead}"
    );

    let limit = fill_memory(&redis.url, &store).await;
    let ooms_before = oom_replies(&store).await;

    let text = run_quietly(&redis.url, &prefix, "audit", &["audit"]).await;
    assert!(
        text.contains("consistent:"),
        "audit says consistent, got:\n{text}"
    );
    let text = run_quietly(&redis.url, &prefix, "senders", &["senders"]).await;
    assert!(
        text.contains("worker"),
        "senders lists 'worker', got:\n{text}"
    );
    let text = run_quietly(&redis.url, &prefix, "runs", &["runs"]).await;
    assert!(
        text.contains("finished") && text.contains("300"),
        "runs lists the finished run of 300, got:\n{text}"
    );
    let text = run_quietly(&redis.url, &prefix, "dead", &["dead", "list"]).await;
    assert_eq!(
        text.matches("max_attempts").count() as u64,
        dead,
        "dead list shows every dead letter, got:\n{text}"
    );

    let args = ["monitor", "--until-done", "--interval", "100ms"];
    let text = run_quietly(&redis.url, &prefix, "monitor-done", &args).await;
    let alert = text
        .lines()
        .find(|l| l.starts_with("ALERT Redis memory at"))
        .unwrap_or_else(|| panic!("monitor raises the memory alert, got:\n{text}"));
    assert!(
        alert.contains("of maxmemory") && alert.contains("policy noeviction"),
        "the alert names maxmemory and the policy, got: {alert}"
    );
    let args = ["monitor", "--json", "--until-done", "--interval", "100ms"];
    let text = run_quietly(&redis.url, &prefix, "monitor-json", &args).await;
    let report: serde_json::Value = serde_json::from_str(text.lines().next().unwrap_or_default())
        .unwrap_or_else(|err| panic!("a JSON report, got {err}:\n{text}"));
    assert_eq!(
        report["memory"]["max"].as_u64(),
        Some(limit),
        "the JSON report carries maxmemory, got {report}"
    );
    assert_eq!(report["memory"]["policy"], "noeviction", "got {report}");
    assert!(
        report["alerts"].as_array().is_some_and(|a| a
            .iter()
            .any(|x| x.as_str().is_some_and(|s| s.contains("maxmemory")))),
        "the JSON report carries the memory alert, got {report}"
    );

    // A monitor left running reports every interval until it is stopped.
    let (mut monitor, out_path) = spawn_monitor(&redis.url, &prefix, "monitor-live");
    wait_until(
        "the monitor printed 3 reports",
        Duration::from_secs(10),
        || async {
            std::fs::read_to_string(&out_path)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.starts_with('['))
                .count()
                >= 3
        },
    )
    .await;
    terminate(&monitor);
    let status = wait_exit(&mut monitor, Duration::from_secs(5)).await;
    assert_eq!(
        status.code(),
        Some(0),
        "the monitor stops on SIGTERM with 0, got {status:?}"
    );
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    assert_eq!(
        text.matches("ALERT Redis memory at").count(),
        1,
        "the memory alert is raised once, not every report; got:\n{text}"
    );

    let log =
        std::fs::read_to_string(log_path(&format!("{prefix}-monitor-live"))).unwrap_or_default();
    assert!(
        log.is_empty(),
        "the monitor logged no warning or error at maxmemory, got:\n{log}"
    );
    assert_eq!(
        oom_replies(&store).await,
        ooms_before,
        "no tool even tried to write: Redis replied no OOM error to any of them"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_that_cannot_write_stops_reading_logs_sparingly_and_resumes() {
    let redis = start_noeviction_redis().await;
    let prefix = unique_prefix("fullsend");
    let store = store(&redis.url, &prefix).await;
    let total = 3000;
    produce_n(&store, 15, total).await;
    let concurrency = 50;
    let args = [
        "--mean",
        "50ms",
        "--concurrency",
        "50",
        // Renewed every second: the name lease's renewals fail at
        // maxmemory as often, and must not log as often.
        "--lease",
        "3s",
        "--seed",
        "1",
        "--log-format",
        "json",
    ];
    let early = KillOnDrop(spawn_sender_process(&redis.url, &prefix, "early", &args));
    wait_until(
        "the sender has sent 300",
        Duration::from_secs(30),
        || async { Snapshot::read(&store).await.is_ok_and(|s| s.sent >= 300) },
    )
    .await;

    let limit = fill_memory(&redis.url, &store).await;
    let full_at = Instant::now();
    // One more sender started on the full Redis, and a monitor.
    let late = KillOnDrop(spawn_sender_process(&redis.url, &prefix, "late", &args));
    let (monitor, monitor_out) = spawn_monitor(&redis.url, &prefix, "monitor");
    let (early, late) = (RefCell::new(early), RefCell::new(late));

    // The sender stops reading: what it read settles within a moment (reads
    // on the wire land, and its hold slots bound the rest).
    let (url, store_ref) = (&redis.url, &store);
    let last = Cell::new(group_reads(url, store_ref).await);
    let unchanged_since = Cell::new(Instant::now());
    wait_until(
        "the group's reads stay unchanged for 1s",
        Duration::from_secs(10),
        || {
            let (last, unchanged_since) = (&last, &unchanged_since);
            async move {
                let now = group_reads(url, store_ref).await;
                if now != last.get() {
                    last.set(now);
                    unchanged_since.set(Instant::now());
                }
                unchanged_since.get().elapsed() >= Duration::from_secs(1)
            }
        },
    )
    .await;
    let blocked = last.get();
    assert!(
        blocked.pending <= 3 * concurrency,
        "a sender holds at most 3 x concurrency = {} messages, got {blocked:?}",
        3 * concurrency
    );
    assert!(
        blocked.lag > 0,
        "work is waiting that it does not read, got {blocked:?}"
    );

    // Until its first failure is 10 s old (the log interval) the sender
    // keeps running, reads nothing more, and logs no more.
    let early_log = format!("{prefix}-early");
    let still_failing = |line: &serde_json::Value| {
        line["level"] == "ERROR" && line["fields"]["what"] == "write send results"
    };
    wait_until(
        "the sender logs that its writes are still failing",
        Duration::from_secs(20),
        || {
            let (early, late, early_log) = (&early, &late, &early_log);
            async move {
                let now = group_reads(url, store_ref).await;
                assert_eq!(
                    now, blocked,
                    "nothing more is read while writes are refused"
                );
                assert_running(early, "the sender running when memory filled");
                assert_running(late, "the sender started on the full Redis");
                warnings(early_log).iter().any(still_failing)
            }
        },
    )
    .await;
    let failing_for = full_at.elapsed();
    let lines = warnings(&early_log);
    let tries = lines
        .iter()
        .filter(|l| still_failing(l))
        .filter_map(|l| l["fields"]["failures"].as_u64())
        .max()
        .unwrap_or(0);
    assert!(
        tries >= 5,
        "the write was retried with backoff (about once a second), got {tries} tries in \
         {failing_for:?}:\n{}",
        show(&lines)
    );
    // Each failing operation (the results writer, the reclaim, the name
    // lease's renewal, each retried about once a second) logs a first WARN,
    // then at most one ERROR per 10 s: not one line per try.
    let mut per_operation: HashMap<String, (u32, u32)> = HashMap::new();
    for line in &lines {
        let fields = &line["fields"];
        let operation = fields["what"]
            .as_str()
            .or(fields["message"].as_str())
            .unwrap_or_default();
        let (warns, errors) = per_operation.entry(operation.to_owned()).or_default();
        match line["level"].as_str() {
            Some("WARN") => *warns += 1,
            _ => *errors += 1,
        }
    }
    for (operation, (warns, errors)) in &per_operation {
        assert!(
            *warns <= 1 && *errors <= 1,
            "'{operation}' failed for up to {failing_for:?} (about once a second) and logs one \
             WARN and at most one ERROR, got {warns} and {errors}:\n{}",
            show(&lines)
        );
    }
    assert!(
        lines.iter().all(|l| l["fields"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("OOM"))),
        "every line names the OOM, got:\n{}",
        show(&lines)
    );
    let late_lines = warnings(&format!("{prefix}-late"));
    assert!(
        (1..=2).contains(&late_lines.len()),
        "the sender started on the full Redis logs its failure once (twice after 10 s), got:\n{}",
        show(&late_lines)
    );
    let report = std::fs::read_to_string(&monitor_out).unwrap_or_default();
    let alert = report
        .lines()
        .find(|l| l.starts_with("ALERT Redis memory at"))
        .unwrap_or_else(|| panic!("the monitor raised the memory alert, got:\n{report}"));
    assert!(
        alert.contains("of maxmemory") && alert.contains("policy noeviction"),
        "the alert names maxmemory ({limit}) and the policy, got: {alert}"
    );

    // Memory is back: the senders take up the work and drain the queue.
    free_memory(&redis.url).await;
    let freed_at = Instant::now();
    wait_until("everything is settled", Duration::from_secs(30), || {
        all_settled(&store, total)
    })
    .await;
    println!(
        "maxmemory: blocked at {} read ({} pending, {} waiting) for {:.1}s, {} log lines for \
         {tries} tries; drained {:.1}s after memory was freed",
        blocked.entries_read,
        blocked.pending,
        blocked.lag,
        failing_for.as_secs_f64(),
        lines.len(),
        freed_at.elapsed().as_secs_f64()
    );
    wait_until(
        "the monitor says memory is fine again",
        Duration::from_secs(10),
        || async {
            std::fs::read_to_string(&monitor_out)
                .unwrap_or_default()
                .contains("RESOLVED Redis memory below 95% of maxmemory")
        },
    )
    .await;
    for (mut child, what) in [
        (early.into_inner(), "early"),
        (late.into_inner(), "late"),
        (monitor, "monitor"),
    ] {
        terminate(&child);
        let status = wait_exit(&mut child, Duration::from_secs(15)).await;
        assert_eq!(
            status.code(),
            Some(0),
            "{what} stops gracefully with 0, got {status:?}"
        );
    }

    let scan = scan(&redis.url, &store).await;
    assert_eq!(scan.pending, 0, "nothing is left pending");
    // Leases ran out while memory was full: the late sender may have
    // reclaimed some of the early one's messages, which are then counted
    // once and their second send as a duplicate.
    assert_eq!(
        scan.stat("sent") + scan.stat("dead"),
        total,
        "every message settled once"
    );
    let audit = sms_alerts::audit::run(&store, 1000).await.expect("audit");
    assert!(
        audit.is_consistent(),
        "the audit agrees:\n{}",
        audit.to_text()
    );
}
