//! Signals: the first Ctrl-C/SIGTERM stops a process within a second
//! whatever it is doing at start-up (waiting for a Redis that does not
//! answer, or retrying a write a full Redis refuses): exit 0, as nothing was
//! started. A sender draining long sends after the first signal exits 130 at
//! once on the second.

mod common;

use std::net::{TcpListener, TcpStream};
use std::process::{Child, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// Longest time from a signal to the process's exit.
const STOPS_WITHIN: Duration = Duration::from_secs(1);

/// A TCP server that accepts connections and never answers: a Redis that is
/// stuck (paused, swapping, behind a dead proxy).
struct Silent {
    port: u16,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Silent {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, done) = (Arc::clone(&accepted), Arc::clone(&stop));
        std::thread::spawn(move || {
            // Held open, never read from nor written to.
            let mut held: Vec<TcpStream> = Vec::new();
            while !done.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        held.push(stream);
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self {
            port,
            accepted,
            stop,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Sends SIGTERM and waits for the exit: its status and the time from the
/// signal to the exit.
async fn terminate_and_time(child: &mut Child, what: &str) -> (ExitStatus, Duration) {
    let signalled = Instant::now();
    terminate(child);
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return (status, signalled.elapsed());
        }
        if signalled.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what}: expected to exit within {STOPS_WITHIN:?} of SIGTERM, still running after 10s"
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn assert_stopped_at_once(what: &str, status: ExitStatus, took: Duration, code: i32) {
    assert_eq!(
        status.code(),
        Some(code),
        "{what}: exit code {code} after the signal, got {status:?}"
    );
    assert!(
        took <= STOPS_WITHIN,
        "{what}: exits within {STOPS_WITHIN:?} of the signal, took {took:?}"
    );
}

fn log_of(prefix: &str, log: &str) -> String {
    std::fs::read_to_string(log_path(&format!("{prefix}-{log}"))).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_signal_stops_a_process_waiting_for_redis_to_answer() {
    let prefix = unique_prefix("silent");
    let commands: [(&str, &[&str]); 5] = [
        ("send", &["send", "--name", "s1"]),
        ("produce", &["produce", "--count", "10"]),
        ("monitor", &["monitor", "--interval", "100ms"]),
        ("audit", &["audit"]),
        ("migrate", &["migrate"]),
    ];
    let mut timings = Vec::new();
    for (what, args) in commands {
        let redis = Silent::start();
        let mut child = KillOnDrop(spawn_process(&redis.url(), &prefix, what, args));
        wait_until(
            &format!("{what} has connected"),
            Duration::from_secs(10),
            || async { redis.accepted() > 0 },
        )
        .await;
        let (status, took) = terminate_and_time(&mut child, what).await;
        assert_stopped_at_once(what, status, took, 0);
        let log = log_of(&prefix, what);
        assert!(
            log.is_empty(),
            "{what}: nothing went wrong, so nothing is logged at warn; got:\n{log}"
        );
        timings.push(format!("{what} {:.0}ms", took.as_secs_f64() * 1000.0));
    }
    println!(
        "signals: stopped while Redis did not answer: {}",
        timings.join(", ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_signal_stops_a_sender_or_producer_retrying_its_first_write() {
    let redis = start_redis_with(RedisOptions {
        extra_args: vec!["--maxmemory-policy", "noeviction"],
        ..RedisOptions::default()
    })
    .await;
    let prefix = unique_prefix("fullstart");
    let store = store(&redis.url, &prefix).await;
    // Every write is refused from now on; reads (and opening the queue) work.
    let mut conn = raw(&redis.url).await;
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(1)
        .query_async(&mut conn)
        .await
        .expect("CONFIG SET maxmemory");

    // Each waits in its start-up retries: the sender to recover its pending
    // work (its name's lease is taken even at maxmemory), the producer to
    // record its run.
    let commands: [(&str, &[&str], &str); 2] = [
        (
            "send",
            &["send", "--name", "s1"],
            "recover own pending messages",
        ),
        (
            "produce",
            &["produce", "--count", "10", "--run-id", "r1"],
            "record the producer run",
        ),
    ];
    let mut timings = Vec::new();
    for (what, args, retrying) in commands {
        let mut child = KillOnDrop(spawn_process(&redis.url, &prefix, what, args));
        wait_until(
            &format!("{what} retries to {retrying}"),
            Duration::from_secs(10),
            || async { log_of(&prefix, what).contains(retrying) },
        )
        .await;
        let log = log_of(&prefix, what);
        assert!(
            log.contains("OOM"),
            "{what} was refused for memory, got:\n{log}"
        );
        let (status, took) = terminate_and_time(&mut child, what).await;
        assert_stopped_at_once(what, status, took, 0);
        timings.push(format!("{what} {:.0}ms", took.as_secs_f64() * 1000.0));
        let stdout = child.stdout.take().map(std::io::read_to_string);
        if what == "produce" {
            let stdout = stdout.expect("piped").expect("stdout");
            assert!(
                stdout.contains("nothing was produced"),
                "the producer says it produced nothing, got: {stdout}"
            );
        }
    }
    println!(
        "signals: stopped while a full Redis refused the first write: {}",
        timings.join(", ")
    );
    assert!(
        !name_is_held(&store, "s1").await,
        "the sender gave its name back, at maxmemory too"
    );
    assert!(
        store.inspector().all_runs().await.expect("runs").is_empty(),
        "the producer recorded no run"
    );
    assert_eq!(
        stream_length(&redis.url, &store.keys().messages()).await,
        0,
        "nothing was produced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_130_at_once_while_the_first_drains() {
    let redis = start_redis().await;
    let prefix = unique_prefix("second");
    let store = store(&redis.url, &prefix).await;
    produce_n(&store, 3, 20).await;
    let mut sender = KillOnDrop(
        bin()
            .env("RUST_LOG", "info")
            .args(["--redis-url", &redis.url, "--prefix", &prefix])
            .args([
                "send",
                "--name",
                "slow",
                "--mean",
                "30s",
                "--distribution",
                "constant",
                "--concurrency",
                "10",
                "--shutdown-timeout",
                "60s",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(log_path(&format!("{prefix}-slow"))).expect("log file"))
            .spawn()
            .expect("sender starts"),
    );
    wait_until(
        "the sender has 10 sends in flight",
        Duration::from_secs(15),
        || async { pending_of(&redis.url, &store, "slow").await >= 10 },
    )
    .await;

    terminate(&sender);
    wait_until(
        "the sender starts draining",
        Duration::from_secs(5),
        || async { log_of(&prefix, "slow").contains("shutting down gracefully") },
    )
    .await;
    let status = sender.try_wait().expect("try_wait");
    assert!(
        status.is_none(),
        "after the first signal the sender drains its 30 s sends, got exit {status:?}"
    );

    let (status, took) = terminate_and_time(&mut sender, "the draining sender").await;
    assert_stopped_at_once("the draining sender", status, took, 130);
    println!(
        "signals: a second signal ended a draining sender in {:.0}ms",
        took.as_secs_f64() * 1000.0
    );
    let scan = scan(&redis.url, &store).await;
    assert_eq!(
        scan.stat("sent"),
        0,
        "no 30 s send finished, so nothing was acknowledged"
    );
    assert!(
        scan.pending >= 10,
        "the messages it held stay pending, to be delivered again; got {} pending",
        scan.pending
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_signal_stops_a_producer_whose_batches_redis_refuses_mid_run() {
    let redis = start_redis_with(RedisOptions {
        extra_args: vec!["--maxmemory-policy", "noeviction"],
        ..RedisOptions::default()
    })
    .await;
    let prefix = unique_prefix("fullmid");
    let store = store(&redis.url, &prefix).await;
    let mut producer = KillOnDrop(spawn_process(
        &redis.url,
        &prefix,
        "produce",
        &[
            "produce", "--count", "1000000", "--batch", "1000", "--seed", "3", "--run-id", "r",
            "--lease", "1s",
        ],
    ));
    wait_until(
        "the producer is under way",
        Duration::from_secs(30),
        || async { stream_length(&redis.url, &store.keys().messages()).await >= 20_000 },
    )
    .await;
    // Redis fills up: the producer's next batches are refused and retried.
    let mut conn = raw(&redis.url).await;
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(1)
        .query_async(&mut conn)
        .await
        .expect("CONFIG SET maxmemory");
    wait_until("the producer retries", Duration::from_secs(10), || async {
        log_of(&prefix, "produce").contains("OOM")
    })
    .await;
    let (status, took) = terminate_and_time(&mut producer, "produce").await;
    assert_stopped_at_once("producer mid-run", status, took, 0);
    println!("signals: a producer retrying refused batches stopped in {took:?}");

    // Memory back: the run is resumed to exactly its count.
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(0)
        .query_async(&mut conn)
        .await
        .expect("CONFIG SET maxmemory 0");
    let mut resumed = KillOnDrop(spawn_process(
        &redis.url,
        &prefix,
        "resume",
        &["produce", "--resume", "r", "--lease", "1s"],
    ));
    let status = wait_exit(&mut resumed, Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(0), "{}", log_of(&prefix, "resume"));
    assert_eq!(
        stream_length(&redis.url, &store.keys().messages()).await,
        1_000_000,
        "the run ends with exactly its count"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_signal_stops_a_one_shot_command_that_waits_on_redis() {
    let redis = start_redis_with(RedisOptions {
        debug_command: true,
        ..RedisOptions::default()
    })
    .await;
    let prefix = unique_prefix("oneshot");
    let _ = store(&redis.url, &prefix).await;
    // Redis stalls (as behind a blocked disk) while `audit` waits on it.
    let mut staller = raw(&redis.url).await;
    let mut audit = KillOnDrop(spawn_process(&redis.url, &prefix, "audit", &["audit"]));
    let stall = tokio::spawn(async move {
        let _: Result<(), _> = redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(5)
            .query_async(&mut staller)
            .await;
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, took) = terminate_and_time(&mut audit, "audit").await;
    // 0 if it was still starting (nothing begun), 130 if it was auditing.
    let code = status.code().filter(|code| *code == 0 || *code == 130);
    assert!(code.is_some(), "audit exits 0 or 130, got {status:?}");
    assert_stopped_at_once("audit on a stalled Redis", status, took, code.unwrap_or(0));
    stall.abort();
}
