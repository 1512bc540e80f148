//! Producer runs: a producer SIGKILLed mid-run is named by
//! `monitor --until-done`, which then ends instead of waiting forever, also
//! after a later run finished; `runs` lists it; `produce --resume` finishes it
//! with exactly its count, none twice, also when the first producer wakes up
//! while the run is being resumed. A producer stopped by SIGTERM leaves a
//! stopped run that can be resumed at once. Resuming or reusing a run id is
//! refused when it would lose or repeat messages, and the refusal changes
//! nothing.
//!
//! Producers are real processes, killed or stopped with real signals. The
//! messages in the stream are checked against the library's generator for the
//! run's seed, as a multiset of (recipient, body): the stream must hold each
//! generated message exactly once and nothing else.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use sms_alerts::generator::MessageGenerator;
use sms_alerts::message::{Message, RawFields};
use sms_alerts::store::{RunPlan, RunRoute, RunState, Store};

/// The producer's liveness lease in these tests: short, so that a dead
/// producer is noticed quickly.
const LEASE: Duration = Duration::from_secs(1);

/// How often the monitors report.
const INTERVAL: &str = "200ms";

/// Slack on top of the lease and the monitor's interval for a process to
/// notice, exit and be reaped on a loaded machine.
const SLACK: Duration = Duration::from_secs(2);

/// A long run in small batches: about a second and a half of writing in a
/// debug build, so that a producer seen writing its first batches is
/// certainly mid-run when it is signalled a few milliseconds later.
const COUNT: u64 = 10_000;
const BATCH: u64 = 10;
const BATCHES: u64 = COUNT / BATCH;

/// A process of the binary whose stdout and stderr go to files: a monitor's
/// JSON lines can outgrow a pipe, and a child blocked on a full pipe never
/// exits.
struct Process {
    child: Child,
    what: String,
    stdout: PathBuf,
    stderr: PathBuf,
}

/// A process that has exited, with what it printed.
struct Exited {
    what: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
    /// When its exit was seen (at most a poll after it happened).
    at: Instant,
}

impl Exited {
    /// The first line a producer printed: the run it starts or resumes.
    fn start_line(&self) -> &str {
        self.stdout.lines().next().unwrap_or_default()
    }

    /// The last line a producer printed: what it did.
    fn summary(&self) -> &str {
        self.stdout.trim_end().lines().last().unwrap_or_default()
    }

    /// Asserts the exit code, showing what the process printed otherwise.
    fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "expected {} to exit with {code}, it exited with {:?}\nstdout:\n{}\nstderr:\n{}",
            self.what,
            self.code,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Starts `sms-alerts --redis-url URL --prefix PREFIX ARGS`, named `what`
/// (unique within the test: it names the output files).
fn start(url: &str, prefix: &str, what: &str, args: &[&str]) -> Process {
    spawn(bin(), url, prefix, what, args)
}

/// [`start`] with `RUST_LOG=info`: what the binary logs by default.
fn start_logging(url: &str, prefix: &str, what: &str, args: &[&str]) -> Process {
    let mut command = bin();
    command.env("RUST_LOG", "info");
    spawn(command, url, prefix, what, args)
}

fn spawn(mut command: Command, url: &str, prefix: &str, what: &str, args: &[&str]) -> Process {
    let stdout = log_path(&format!("{prefix}-{what}.out"));
    let stderr = log_path(&format!("{prefix}-{what}"));
    let child = command
        .args(["--redis-url", url, "--prefix", prefix])
        .args(args)
        .stdout(std::fs::File::create(&stdout).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr).expect("stderr file"))
        .spawn()
        .expect("the binary starts");
    Process {
        child,
        what: format!("`sms-alerts {}`", args.join(" ")),
        stdout,
        stderr,
    }
}

/// A sender that sends without delay.
fn start_sender(url: &str, prefix: &str) -> Process {
    start(
        url,
        prefix,
        "sender",
        &["send", "--name", "s1", "--mean", "1ms"],
    )
}

impl Process {
    /// Waits for the process to exit on its own, with a deadline.
    async fn exited(mut self, deadline: Duration) -> Exited {
        let until = Instant::now() + deadline;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                Instant::now() < until,
                "expected {} to exit within {deadline:?}; it is still running, having \
                 printed:\n{}",
                self.what,
                std::fs::read_to_string(&self.stdout).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let at = Instant::now();
        Exited {
            code: status.code(),
            stdout: std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            stderr: std::fs::read_to_string(&self.stderr).unwrap_or_default(),
            what: std::mem::take(&mut self.what),
            at,
        }
    }

    /// Sends `signal` (a `kill -SIGNAL` name).
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .stdout(Stdio::null())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {} failed", self.what);
    }

    /// Asserts that the process has not exited.
    fn assert_running(&mut self, why: &str) {
        let status = self.child.try_wait().expect("try_wait");
        assert!(
            status.is_none(),
            "expected {} to be running ({why}), it exited with {status:?}:\n{}",
            self.what,
            std::fs::read_to_string(&self.stdout).unwrap_or_default()
        );
    }

    /// SIGKILL, and reaps the process.
    fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }
}

/// A test that fails leaves no process behind.
impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs a short command to its end (30 s at most).
async fn cli(url: &str, prefix: &str, what: &str, args: &[&str]) -> Exited {
    start(url, prefix, what, args)
        .exited(Duration::from_secs(30))
        .await
}

/// `sms-alerts runs --json`, parsed.
async fn runs_json(url: &str, prefix: &str, what: &str) -> Vec<Value> {
    let runs = cli(url, prefix, what, &["runs", "--json"]).await;
    runs.expect_code(0);
    serde_json::from_str(&runs.stdout).unwrap_or_else(|err| {
        panic!(
            "`runs --json` printed no JSON array ({err}): {}",
            runs.stdout
        )
    })
}

/// The row of run `id` in `runs --json`'s output.
fn json_row<'a>(runs: &'a [Value], id: &str) -> &'a Value {
    runs.iter()
        .find(|run| run["id"] == id)
        .unwrap_or_else(|| panic!("expected run {id} to be listed, `runs --json` gave {runs:?}"))
}

/// Asserts what `runs --json` says of run `id`.
fn assert_json_run(runs: &[Value], id: &str, state: &str, written: u64, batches: u64, count: u64) {
    let row = json_row(runs, id);
    let expected = serde_json::json!({
        "id": id, "state": state, "batches_written": written, "batches": batches, "count": count,
    });
    let found: serde_json::Map<String, Value> = row
        .as_object()
        .expect("a run is a JSON object")
        .iter()
        .filter(|(key, _)| key.as_str() != "started_ms")
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    assert_eq!(
        Value::Object(found),
        expected,
        "expected `runs --json` to show run {id} {state} with {written}/{batches} batches of \
         {count} messages"
    );
}

/// The row of run `id` in `runs`' table, split on blanks.
async fn table_row(url: &str, prefix: &str, what: &str, id: &str) -> Vec<String> {
    let runs = cli(url, prefix, what, &["runs"]).await;
    runs.expect_code(0);
    runs.stdout
        .lines()
        .map(|line| {
            line.split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .find(|cells| cells.first().map(String::as_str) == Some(id))
        .unwrap_or_else(|| panic!("expected a row for run {id} in `runs`:\n{}", runs.stdout))
}

/// The (recipient, body) of every message in the stream, read with plain
/// commands.
async fn stream_messages(url: &str, store: &Store) -> Vec<(String, String)> {
    let entries: Vec<(String, RawFields)> = redis::cmd("XRANGE")
        .arg(store.keys().messages())
        .arg("-")
        .arg("+")
        .query_async(&mut raw(url).await)
        .await
        .expect("XRANGE");
    entries
        .into_iter()
        .map(|(id, fields)| {
            let message = Message::from_fields(&fields)
                .unwrap_or_else(|err| panic!("entry {id} is not a message: {err}"));
            (message.recipient, message.body)
        })
        .collect()
}

/// The first `count` messages the generator gives for `seed`: what a run with
/// that seed writes, whatever its batch size and however often it is resumed.
fn generated(seed: u64, count: u64) -> Vec<(String, String)> {
    let mut generator = MessageGenerator::seeded(seed);
    (0..count)
        .map(|_| {
            let message = generator.next_message(0);
            (message.recipient, message.body)
        })
        .collect()
}

/// Asserts that `found` holds each of `expected` exactly once and nothing
/// else, in any order; says how they differ otherwise.
fn assert_same_messages(found: &[(String, String)], expected: &[(String, String)], what: &str) {
    let mut counts: HashMap<&(String, String), i64> = HashMap::new();
    for message in expected {
        *counts.entry(message).or_default() += 1;
    }
    for message in found {
        *counts.entry(message).or_default() -= 1;
    }
    let extra: i64 = counts.values().filter(|n| **n < 0).map(|n| -n).sum();
    let missing: i64 = counts.values().filter(|n| **n > 0).sum();
    let example = counts.iter().find(|(_, n)| **n != 0);
    assert!(
        extra == 0 && missing == 0,
        "expected the stream to hold exactly the {} messages of {what}, once each; it holds {}: \
         {extra} more than generated (a message twice, or one not generated), {missing} missing; \
         e.g. {example:?}",
        expected.len(),
        found.len()
    );
}

/// Waits until the stream holds an entry: the producer is writing.
async fn wait_for_first_batch(url: &str, store: &Store) {
    let key = store.keys().messages();
    wait_until(
        "the producer has written a batch",
        Duration::from_secs(30),
        || async { stream_length(url, &key).await > 0 },
    )
    .await;
}

/// The entries in the stream now, asserted to be whole batches of a run
/// signalled mid-run.
async fn written_mid_run(url: &str, store: &Store) -> u64 {
    let written = stream_length(url, &store.keys().messages()).await;
    assert!(
        written > 0 && written < COUNT && written % BATCH == 0,
        "expected the producer to have written some but not all of its {COUNT} messages, in \
         whole batches of {BATCH}, when it was signalled; the stream holds {written}"
    );
    written
}

/// Waits until every entry in the stream is settled and nothing is pending;
/// returns when that was seen.
async fn wait_drained(url: &str, store: &Store) -> Instant {
    let key = store.keys().messages();
    wait_until(
        "the senders have drained the stream",
        Duration::from_secs(30),
        || async { all_settled(store, stream_length(url, &key).await).await },
    )
    .await;
    Instant::now()
}

/// The `ALERT` line the monitor prints for a run that did not finish.
fn alert(run: &str, how: &str, written: u64, batches: u64) -> String {
    format!(
        "ALERT producer run {run} {how} after {written} of {batches} batches: \
         `sms-alerts produce --resume {run}` finishes it"
    )
}

/// `monitor --until-done --json`'s lines, parsed.
fn json_reports(monitor: &Exited) -> Vec<Value> {
    monitor
        .stdout
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|err| panic!("a monitor line is not JSON ({err}): {line}"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_producer_ends_until_done_within_a_lease_and_resumes_to_its_count() {
    let redis = start_redis().await;
    let url = redis.url.as_str();
    let prefix = unique_prefix("killed");
    let store = store(url, &prefix).await;
    let sender = start_sender(url, &prefix);

    let (count, batch) = (COUNT.to_string(), BATCH.to_string());
    let producer = start(
        url,
        &prefix,
        "producer-r1",
        &[
            "produce", "--count", &count, "--batch", &batch, "--seed", "1414", "--run-id", "r1",
            "--lease", "1s",
        ],
    );
    let until_done = ["monitor", "--until-done", "--interval", INTERVAL];
    let mut text = start(url, &prefix, "monitor-text", &until_done);
    let mut json = start(
        url,
        &prefix,
        "monitor-json",
        &[&until_done[..], &["--json"]].concat(),
    );
    wait_for_first_batch(url, &store).await;
    producer.kill();
    let killed_at = Instant::now();
    for monitor in [&mut text, &mut json] {
        monitor.assert_running("a live producer was writing until now");
    }

    // The monitors end once the senders drained what the dead producer wrote
    // and its lease ran out, which is at most a lease after the drain.
    let drained_at = wait_drained(url, &store).await;
    let text = text.exited(Duration::from_secs(20)).await;
    let json = json.exited(Duration::from_secs(20)).await;
    let written = written_mid_run(url, &store).await;
    let batches_written = written / BATCH;
    let bound = LEASE + Duration::from_millis(200) + SLACK;
    for monitor in [&text, &json] {
        monitor.expect_code(0);
        let after = monitor.at.saturating_duration_since(drained_at);
        assert!(
            after <= bound,
            "expected {} to end within {bound:?} of the senders draining (lease {LEASE:?}), it \
             ended {after:?} after ({:?} after the kill)",
            monitor.what,
            monitor.at.duration_since(killed_at)
        );
    }
    println!(
        "killed producer: monitors ended {:?} after the drain, {:?} after the kill (lease {LEASE:?})",
        text.at.saturating_duration_since(drained_at),
        text.at.duration_since(killed_at)
    );

    let died = alert("r1", "died", batches_written, BATCHES);
    assert!(
        text.stdout.lines().any(|line| line == died),
        "expected the text monitor to say `{died}`, it printed:\n{}",
        text.stdout
    );
    let reports = json_reports(&json);
    assert!(
        reports.iter().any(|report| report["alerts"]
            .as_array()
            .is_some_and(|a| a.contains(&Value::from(died.as_str())))),
        "expected a JSON report whose alerts hold `{died}`, the monitor printed:\n{}",
        json.stdout
    );
    let last = reports.last().expect("the JSON monitor reported");
    assert_eq!(last["done"], true, "the last JSON report is done: {last}");
    assert_json_run(
        last["runs"]
            .as_array()
            .expect("a report lists the open runs"),
        "r1",
        "died",
        batches_written,
        BATCHES,
        COUNT,
    );

    let runs = runs_json(url, &prefix, "runs-died").await;
    assert_json_run(&runs, "r1", "died", batches_written, BATCHES, COUNT);
    assert_eq!(
        table_row(url, &prefix, "runs-died-text", "r1").await,
        [
            "r1",
            "died",
            &format!("{batches_written}/{BATCHES}"),
            &count
        ],
        "expected `runs` to show r1 died with {batches_written}/{BATCHES} batches"
    );

    // A later run that finishes does not make up for the dead one:
    // `--until-done` must still end, naming r1.
    cli(
        url,
        &prefix,
        "producer-r2",
        &[
            "produce", "--count", "200", "--batch", "10", "--seed", "2", "--run-id", "r2",
        ],
    )
    .await
    .expect_code(0);
    wait_drained(url, &store).await;
    let after_r2 = start(url, &prefix, "monitor-after-r2", &until_done)
        .exited(Duration::from_secs(10))
        .await;
    after_r2.expect_code(0);
    assert!(
        after_r2.stdout.lines().any(|line| line == died),
        "expected the monitor to still name the dead run: `{died}`; it printed:\n{}",
        after_r2.stdout
    );

    let resumed = cli(
        url,
        &prefix,
        "resume-r1",
        &["produce", "--resume", "r1", "--lease", "1s"],
    )
    .await;
    resumed.expect_code(0);
    let summary = format!("produced {} messages", COUNT - written);
    let before = format!("run r1; {written} more were written before it was resumed");
    assert_eq!(resumed.start_line(), "resuming producer run r1");
    assert!(
        resumed.summary().starts_with(&summary) && resumed.summary().ends_with(&before),
        "expected the resumed producer to say `{summary} ... {before}`, it said: {}",
        resumed.stdout
    );
    let expected = [generated(1414, COUNT), generated(2, 200)].concat();
    assert_same_messages(
        &stream_messages(url, &store).await,
        &expected,
        "run r1 (seed 1414, killed and resumed) and run r2 (seed 2)",
    );
    let scan = scan(url, &store).await;
    assert_eq!(
        (scan.entries_added, scan.stat("produced")),
        (COUNT + 200, COUNT + 200),
        "expected {} entries ever added and counted produced (entries added, produced)",
        COUNT + 200
    );
    let runs = runs_json(url, &prefix, "runs-resumed").await;
    assert_json_run(&runs, "r1", "finished", BATCHES, BATCHES, COUNT);
    assert_json_run(&runs, "r2", "finished", 20, 20, 200);

    wait_drained(url, &store).await;
    let finished = start(url, &prefix, "monitor-finished", &until_done)
        .exited(Duration::from_secs(10))
        .await;
    finished.expect_code(0);
    assert!(
        !finished.stdout.contains("ALERT producer run"),
        "expected no run alert once r1 finished, the monitor printed:\n{}",
        finished.stdout
    );
    cli(url, &prefix, "audit", &["audit"]).await.expect_code(0);
    sender.signal("TERM");
    sender.exited(Duration::from_secs(15)).await.expect_code(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_stopped_by_sigterm_names_its_run_and_is_resumed_at_once() {
    let redis = start_redis().await;
    let url = redis.url.as_str();
    let prefix = unique_prefix("stopped");
    let store = store(url, &prefix).await;
    let sender = start_sender(url, &prefix);

    // No --run-id: the id is chosen at random and printed at start and end. A lease far longer than the test: the stopped producer
    // must give it back, or the resume below is refused.
    let (count, batch) = (COUNT.to_string(), BATCH.to_string());
    let producer = start_logging(
        url,
        &prefix,
        "producer",
        &[
            "produce", "--count", &count, "--batch", &batch, "--seed", "33", "--lease", "60s",
        ],
    );
    wait_for_first_batch(url, &store).await;
    producer.signal("TERM");
    let stopped = producer.exited(Duration::from_secs(15)).await;
    stopped.expect_code(0);
    let written = written_mid_run(url, &store).await;
    let batches_written = written / BATCH;
    let run = stopped
        .summary()
        .split_once(", run ")
        .and_then(|(head, rest)| {
            head.starts_with(&format!("produced {written} messages"))
                .then(|| rest.split_once(';'))
                .flatten()
        })
        .map(|(run, _)| run.to_owned())
        .unwrap_or_else(|| {
            panic!(
                "expected `produced {written} messages in ..., run RUN; stopped early ...`, the \
                 producer printed: {}",
                stopped.stdout
            )
        });
    assert!(
        stopped
            .stdout
            .contains(&format!("`sms-alerts produce --resume {run}` finishes it")),
        "expected the stopped producer to say how to finish run {run}: {}",
        stopped.stdout
    );
    assert_eq!(
        stopped.start_line(),
        format!("producer run {run}: {COUNT} messages"),
        "the run's id comes first, before anything is written"
    );
    assert!(
        stopped
            .stderr
            .lines()
            .any(|line| line.contains("producer run started") && line.contains(&run)),
        "expected the producer's log to name run {run} at start:\n{}",
        stopped.stderr
    );

    let runs = runs_json(url, &prefix, "runs-stopped").await;
    assert_json_run(&runs, &run, "stopped", batches_written, BATCHES, COUNT);
    assert_eq!(
        table_row(url, &prefix, "runs-stopped-text", &run).await,
        [
            run.as_str(),
            "stopped",
            &format!("{batches_written}/{BATCHES}"),
            &count
        ],
        "expected `runs` to show run {run} stopped with {batches_written}/{BATCHES} batches"
    );

    // A stopped run holds nothing: `--until-done` ends as soon as the
    // senders drained, naming it.
    wait_drained(url, &store).await;
    let monitor = start(
        url,
        &prefix,
        "monitor",
        &["monitor", "--until-done", "--interval", INTERVAL],
    )
    .exited(Duration::from_secs(10))
    .await;
    monitor.expect_code(0);
    let was_stopped = alert(&run, "was stopped", batches_written, BATCHES);
    assert!(
        monitor.stdout.lines().any(|line| line == was_stopped),
        "expected the monitor to say `{was_stopped}`, it printed:\n{}",
        monitor.stdout
    );

    let resumed = cli(url, &prefix, "resume", &["produce", "--resume", &run]).await;
    resumed.expect_code(0);
    assert!(
        resumed
            .summary()
            .starts_with(&format!("produced {} messages", COUNT - written)),
        "expected the resumed producer to write the {} messages left: {}",
        COUNT - written,
        resumed.stdout
    );
    assert_same_messages(
        &stream_messages(url, &store).await,
        &generated(33, COUNT),
        &format!("run {run} (seed 33, stopped and resumed)"),
    );
    let runs = runs_json(url, &prefix, "runs-resumed").await;
    assert_json_run(&runs, &run, "finished", BATCHES, BATCHES, COUNT);
    sender.signal("TERM");
    sender.exited(Duration::from_secs(15)).await.expect_code(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_producer_whose_run_was_resumed_adds_nothing_twice() {
    let redis = start_redis().await;
    let url = redis.url.as_str();
    let prefix = unique_prefix("takeover");
    let store = store(url, &prefix).await;

    let (count, batch) = (COUNT.to_string(), BATCH.to_string());
    let first = start(
        url,
        &prefix,
        "producer-first",
        &[
            "produce", "--count", &count, "--batch", &batch, "--seed", "55", "--run-id", "r5",
            "--lease", "1s",
        ],
    );
    wait_for_first_batch(url, &store).await;
    // Paused, not gone: its lease runs out and the run counts as died, but
    // the process wakes up later with batches in hand.
    first.signal("STOP");
    let died = || async {
        store.inspector().all_runs().await.is_ok_and(|runs| {
            runs.iter()
                .any(|run| run.id == "r5" && run.state == RunState::Died)
        })
    };
    wait_until("run r5 counts as died", Duration::from_secs(10), died).await;
    let at_death = store
        .producer()
        .written_batches("r5")
        .await
        .expect("written batches")
        .len();
    assert!(
        (at_death as u64) < BATCHES,
        "expected the paused producer to be mid-run, it wrote {at_death} of {BATCHES} batches"
    );

    // The resuming producer is paused in turn once it has written a batch,
    // holding a lease that outlasts the test, so that the first one wakes
    // while the run is held by another, with both mid-run.
    let second = start(
        url,
        &prefix,
        "producer-second",
        &["produce", "--resume", "r5", "--lease", "60s"],
    );
    wait_until(
        "the resumed producer has written a batch",
        Duration::from_secs(30),
        || async {
            store
                .producer()
                .written_batches("r5")
                .await
                .is_ok_and(|written| written.len() > at_death)
        },
    )
    .await;
    second.signal("STOP");
    first.signal("CONT");
    let first = first.exited(Duration::from_secs(30)).await;
    assert!(
        first.code != Some(0) && first.stderr.contains("taken over by another producer"),
        "expected the woken producer to stop, saying its run was taken over; it exited with \
         {:?}:\n{}",
        first.code,
        first.stderr
    );
    second.signal("CONT");
    second.exited(Duration::from_secs(30)).await.expect_code(0);
    assert_same_messages(
        &stream_messages(url, &store).await,
        &generated(55, COUNT),
        "run r5 (seed 55), written by a paused producer and the one that resumed it",
    );
    let runs = runs_json(url, &prefix, "runs").await;
    assert_json_run(&runs, "r5", "finished", BATCHES, BATCHES, COUNT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_producer_died_after_its_last_batch_resumes_to_nothing_more() {
    let redis = start_redis().await;
    let url = redis.url.as_str();
    let prefix = unique_prefix("tail");
    let store = store(url, &prefix).await;

    // A producer that wrote all three batches (10, 10, 5) and was killed
    // before it recorded the end: played with the library, since no signal
    // can be timed into that gap.
    let plan = RunPlan {
        count: 25,
        seed: 9,
        batch: 10,
    };
    store
        .producer()
        .start_run(
            "tail",
            &plan,
            &RunRoute::default(),
            "gone",
            Duration::from_millis(300),
        )
        .await
        .expect("the run starts");
    let mut generator = MessageGenerator::seeded(plan.seed);
    for (seq, size) in [(1, 10), (2, 10), (3, 5)] {
        let messages: Vec<Message> = (0..size).map(|_| generator.next_message(1)).collect();
        store
            .producer()
            .write_batch(&store.producer().prepare_batch("tail", seq, &messages))
            .await
            .expect("the batch is written");
    }
    wait_until(
        "run tail counts as died",
        Duration::from_secs(10),
        || async {
            store.inspector().all_runs().await.is_ok_and(|runs| {
                runs.iter()
                    .any(|run| run.id == "tail" && run.state == RunState::Died)
            })
        },
    )
    .await;

    let resumed = cli(url, &prefix, "resume", &["produce", "--resume", "tail"]).await;
    resumed.expect_code(0);
    let said = "run tail; 25 more were written before it was resumed";
    assert!(
        resumed.summary().starts_with("produced 0 messages") && resumed.summary().ends_with(said),
        "expected the resumed producer to write nothing and say `{said}`, it said: {}",
        resumed.stdout
    );
    assert_same_messages(
        &stream_messages(url, &store).await,
        &generated(9, 25),
        "run tail (seed 9)",
    );
    let runs = runs_json(url, &prefix, "runs").await;
    assert_json_run(&runs, "tail", "finished", 3, 3, 25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_or_reusing_a_run_is_refused_when_it_would_repeat_messages() {
    let redis = start_redis().await;
    let url = redis.url.as_str();
    let prefix = unique_prefix("refused");
    let store = store(url, &prefix).await;
    cli(
        url,
        &prefix,
        "produce-done",
        &[
            "produce", "--count", "20", "--batch", "10", "--seed", "4", "--run-id", "done",
        ],
    )
    .await
    .expect_code(0);
    // A run whose producer is alive: its lease is held for the whole test.
    let plan = RunPlan {
        count: 50,
        seed: 5,
        batch: 10,
    };
    store
        .producer()
        .start_run(
            "held",
            &plan,
            &RunRoute::default(),
            "live-producer",
            Duration::from_secs(120),
        )
        .await
        .expect("the run starts");
    let lease_key = store.keys().run_lease("held");
    let holder = || async {
        redis::cmd("GET")
            .arg(&lease_key)
            .query_async::<Option<String>>(&mut raw(url).await)
            .await
            .expect("GET")
    };

    let refusals: [(&str, &[&str], &[&str]); 7] = [
        (
            "resume-nosuch",
            &["produce", "--resume", "nosuch"],
            &["no producer run nosuch"],
        ),
        (
            "resume-done",
            &["produce", "--resume", "done"],
            &["run done", "finished already"],
        ),
        (
            "resume-held",
            &["produce", "--resume", "held"],
            &["run held", "live producer"],
        ),
        (
            "reuse-done",
            &["produce", "--run-id", "done", "--count", "5", "--seed", "4"],
            &["run done", "exists already"],
        ),
        (
            "reuse-held",
            &["produce", "--run-id", "held", "--count", "5"],
            &["run held", "exists already"],
        ),
        (
            "resume-count",
            &["produce", "--resume", "done", "--count", "5"],
            &["--resume", "--count"],
        ),
        (
            "resume-run-id",
            &["produce", "--resume", "done", "--run-id", "x"],
            &["--resume", "--run-id"],
        ),
    ];
    for (what, args, says) in refusals {
        let refused = cli(url, &prefix, what, args).await;
        refused.expect_code(2);
        assert!(
            says.iter().all(|part| refused.stderr.contains(part)),
            "expected {} to be refused with a message holding {says:?}, it printed:\n{}",
            refused.what,
            refused.stderr
        );
    }
    for usage in [["--seed", "4"], ["--batch", "10"]] {
        let args = [&["produce", "--resume", "done"][..], &usage[..]].concat();
        cli(url, &prefix, "resume-usage", &args)
            .await
            .expect_code(2);
    }

    // Nothing was written, taken over or overwritten.
    assert_eq!(
        stream_length(url, &store.keys().messages()).await,
        20,
        "expected only run done's 20 messages in the stream"
    );
    assert_eq!(
        holder().await.as_deref(),
        Some("live-producer"),
        "expected the live producer to keep the lease of run held"
    );
    let runs = runs_json(url, &prefix, "runs").await;
    let ids: Vec<&str> = runs.iter().filter_map(|run| run["id"].as_str()).collect();
    assert_eq!(
        ids,
        ["done", "held"],
        "expected only the two runs started to be listed"
    );
    assert_json_run(&runs, "done", "finished", 2, 2, 20);
    assert_json_run(&runs, "held", "running", 0, 5, 50);
}
