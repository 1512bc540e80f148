//! Shared integration-test harness: a real Redis per test from testcontainers
//! (image from `SMS_TEST_REDIS_IMAGE`), a unique key prefix per test, waiting on
//! conditions with a deadline, running senders in-process or as processes, and
//! an independent scan of Redis to check the counters against.
#![allow(dead_code, unreachable_pub)]
pub mod cluster;
pub mod http;

use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sms_alerts::send::{self, SendError, SendSummary};
use sms_alerts::settings::Distribution;
use sms_alerts::settings::{DelayModel, QueueSettings, SendSettings};
use sms_alerts::store::Store;
use testcontainers::core::{IntoContainerPort, Mount, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The image the tests run Redis on; `.ci/test` sets it (official `redis:7`
/// where a registry is reachable, otherwise one built from the host's redis-server).
pub fn redis_image() -> (String, String) {
    let image = std::env::var("SMS_TEST_REDIS_IMAGE").unwrap_or_else(|_| "redis:7".to_owned());
    match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name.to_owned(), tag.to_owned()),
        _ => (image, "latest".to_owned()),
    }
}

/// A Redis container for one test.
pub struct TestRedis {
    pub container: ContainerAsync<GenericImage>,
    pub port: u16,
    pub url: String,
}

/// Options for [`start_redis_with`].
#[derive(Default)]
pub struct RedisOptions {
    /// AOF on with this fsync policy (`always`, `everysec`); off when `None`.
    pub appendfsync: Option<&'static str>,
    /// Publish on this host port (stays the same across a restart).
    pub host_port: Option<u16>,
    /// Allow `DEBUG` from any client (tests that stall Redis with `DEBUG SLEEP`).
    pub debug_command: bool,
    /// More `redis-server` arguments (e.g. `--requirepass`).
    pub extra_args: Vec<&'static str>,
    /// A host directory mounted at `/shared` in the container (e.g. for a
    /// Unix socket).
    pub shared_dir: Option<PathBuf>,
    /// Files copied into the container before it starts: path and content
    /// (e.g. TLS certificates).
    pub files: Vec<(&'static str, Vec<u8>)>,
}

/// Starts a throwaway Redis.
pub async fn start_redis() -> TestRedis {
    start_redis_with(RedisOptions::default()).await
}

/// Starts a Redis with `options`.
pub async fn start_redis_with(options: RedisOptions) -> TestRedis {
    let (name, tag) = redis_image();
    let mut args = vec!["--protected-mode", "no"];
    if let Some(policy) = options.appendfsync {
        args.extend([
            "--appendonly",
            "yes",
            "--appendfsync",
            policy,
            "--dir",
            "/data",
        ]);
    } else {
        args.extend(["--save", "", "--appendonly", "no"]);
    }
    if options.debug_command {
        args.extend(["--enable-debug-command", "yes"]);
    }
    args.extend(options.extra_args.iter().copied());
    let mut request = GenericImage::new(name.clone(), tag.clone())
        .with_exposed_port(6379.tcp())
        .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections"))
        .with_cmd(args)
        .with_label("sms-alerts-test", "1")
        // .ci/test removes a run's containers when that run is over.
        .with_label(
            "sms-alerts-test.run",
            std::env::var("SMS_TEST_RUN_ID").unwrap_or_else(|_| "manual".to_owned()),
        )
        .with_startup_timeout(Duration::from_secs(60));
    if let Some(port) = options.host_port {
        request = request.with_mapped_port(port, 6379.tcp());
    }
    if let Some(dir) = &options.shared_dir {
        request = request.with_mount(Mount::bind_mount(dir.display().to_string(), "/shared"));
    }
    for (path, content) in options.files {
        request = request.with_copy_to(path, content);
    }
    let container = request.start().await.unwrap_or_else(|err| {
        panic!(
            "cannot start Redis image {name}:{tag}: {err}. Run the suite with `bash .ci/test`, \
             which provides an image, or set SMS_TEST_REDIS_IMAGE"
        )
    });
    let port = container
        .get_host_port_ipv4(6379)
        .await
        .expect("Redis port is published");
    TestRedis {
        container,
        port,
        url: format!("redis://127.0.0.1:{port}"),
    }
}

/// A host port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A key prefix no other test uses.
pub fn unique_prefix(test: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "t{}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        test
    )
}

/// Queue settings for `url` and `prefix`, default group.
pub fn queue(url: &str, prefix: &str) -> QueueSettings {
    QueueSettings {
        redis_url: url.to_owned(),
        prefix: prefix.to_owned(),
        group: String::new(),
        ..QueueSettings::default()
    }
}

/// A store on a queue just created (as `migrate` does), opened on it.
pub async fn store(url: &str, prefix: &str) -> Store {
    store_with(url, prefix, &sms_alerts::store::QueueOptions::default()).await
}

/// A store on a queue just created with `options` (e.g. a retention).
pub async fn store_with(
    url: &str,
    prefix: &str,
    options: &sms_alerts::store::QueueOptions,
) -> Store {
    let store = Store::connect(&queue(url, prefix)).await.expect("connects");
    store
        .migrate(options)
        .await
        .expect("the queue is created")
        .0
}

/// A store on a queue of `partitions` partitions just created under a
/// prefix of its own for `test`, opened as a process opens it.
pub async fn opened_queue(url: &str, test: &str, partitions: u32) -> Store {
    let store = store(url, &unique_prefix(test)).await;
    if partitions > 1 {
        let options = sms_alerts::store::QueueOptions {
            partitions: Some(partitions),
            ..sms_alerts::store::QueueOptions::default()
        };
        store.migrate(&options).await.expect("grows");
    }
    store.open().await.expect("opens")
}

/// Produces `count` seeded messages in batches of 100.
pub async fn produce_n(store: &Store, seed: u64, count: u64) {
    let settings = sms_alerts::settings::ProduceSettings {
        count,
        seed: Some(seed),
        batch: 100,
        ..sms_alerts::settings::ProduceSettings::default()
    };
    sms_alerts::produce::run(store, &settings, &CancellationToken::new())
        .await
        .expect("produces");
}

/// Sender settings for tests: fast, short leases, seeded.
pub fn send_settings(name: &str, mean_ms: u64, failure_rate: f64) -> SendSettings {
    SendSettings {
        name: name.to_owned(),
        delay: DelayModel {
            distribution: Distribution::Normal,
            mean: Duration::from_millis(mean_ms),
            stddev: Duration::from_millis(mean_ms / 4),
        },
        failure_rate,
        concurrency: 64,
        max_attempts: 3,
        lease: Duration::from_secs(2),
        retry_backoff: Duration::from_millis(50),
        shutdown_timeout: Duration::from_secs(10),
        seed: Some(7),
        partitions: None,
        outage: None,
        gateway: sms_alerts::settings::GatewaySettings::default(),
        channel: None,
    }
}

/// A sender running in this process.
pub struct RunningSender {
    handle: JoinHandle<Result<SendSummary, SendError>>,
    stop: CancellationToken,
}

impl RunningSender {
    /// Starts `settings` against `store`.
    pub fn start(store: &Store, settings: SendSettings) -> Self {
        let stop = CancellationToken::new();
        let handle = tokio::spawn(send::run(store.clone(), settings, stop.clone()));
        Self { handle, stop }
    }

    /// Waits for the sender to end on its own, with a deadline.
    pub async fn join(self, deadline: Duration) -> Result<SendSummary, SendError> {
        tokio::time::timeout(deadline, self.handle)
            .await
            .expect("sender ends before the deadline")
            .expect("sender task did not panic")
    }

    /// Graceful stop; returns what it did.
    pub async fn stop(self) -> SendSummary {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("sender stops within 30s")
            .expect("sender task did not panic")
            .expect("sender ended without error")
    }
}

/// Polls `condition` until it holds; panics naming `what` after `deadline`.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let until = Instant::now() + deadline;
    loop {
        if condition().await {
            return;
        }
        assert!(
            Instant::now() < until,
            "timed out after {deadline:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Whether nothing is pending and `total` messages are sent or dead.
pub async fn all_settled(store: &Store, total: u64) -> bool {
    sms_alerts::stats::Snapshot::read(store)
        .await
        .map(|s| s.pending == 0 && s.settled() == total)
        .unwrap_or(false)
}

/// Whether a live process holds sender name `name`.
pub async fn name_is_held(store: &Store, name: &str) -> bool {
    store
        .inspector()
        .live_names(&[name.to_owned()])
        .await
        .is_ok_and(|live| live.first() == Some(&true))
}

/// Redis read directly, without the library's Functions: the independent check.
pub struct Scan {
    pub entries_added: u64,
    pub stream_length: u64,
    pub pending: u64,
    pub dead_length: u64,
    pub stats: std::collections::HashMap<String, i64>,
}

impl Scan {
    pub fn stat(&self, field: &str) -> u64 {
        self.stats.get(field).copied().unwrap_or(0).max(0) as u64
    }
}

/// A plain connection for raw commands in tests. Its reply timeout is the
/// library's (10 s), not redis-rs's default 500 ms, which a debug build
/// parsing a thousand dead entries on a loaded machine can outlast.
pub async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    let config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(10)));
    redis::Client::open(url)
        .expect("valid url")
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("connects")
}

/// Runs the raw command `args` (name first) on a connection of its own;
/// panics naming it when Redis refuses it.
pub async fn command(url: &str, args: &[&str]) {
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async::<redis::Value>(&mut raw(url).await)
        .await
        .unwrap_or_else(|err| panic!("{args:?}: {err}"));
}

/// Dead-letters everything in the stream: a sender named `name` that fails
/// every attempt and gives up after one, until `dead` letters exist and
/// nothing is pending.
pub async fn fail_all(store: &Store, name: &str, dead: u64) {
    let settings = SendSettings {
        max_attempts: 1,
        ..send_settings(name, 0, 1.0)
    };
    let sender = RunningSender::start(store, settings);
    wait_until(
        &format!("{dead} dead letters"),
        Duration::from_secs(20),
        || async {
            sms_alerts::stats::Snapshot::read(store)
                .await
                .is_ok_and(|s| s.dead == dead && s.pending == 0)
        },
    )
    .await;
    sender.stop().await;
}

/// Entries in the stream `key`, read on a connection of its own.
pub async fn stream_length(url: &str, key: &str) -> u64 {
    redis::cmd("XLEN")
        .arg(key)
        .query_async(&mut raw(url).await)
        .await
        .expect("XLEN")
}

/// Calls of one command since Redis started, from `INFO commandstats`.
pub async fn command_calls(store: &Store, command: &str) -> u64 {
    let info = store
        .inspector()
        .info("commandstats")
        .await
        .expect("INFO commandstats");
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(',').next())
        .and_then(|calls| calls.parse().ok())
        .unwrap_or(0)
}

/// Reads the stream, group and dead stream with plain commands.
pub async fn scan(url: &str, store: &Store) -> Scan {
    let mut conn = raw(url).await;
    let keys = store.keys();
    let info: redis::Value = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(keys.messages())
        .query_async(&mut conn)
        .await
        .expect("XINFO STREAM");
    let info: std::collections::HashMap<String, redis::Value> =
        redis::FromRedisValue::from_redis_value(info).expect("XINFO STREAM is a map");
    let int = |v: Option<&redis::Value>| match v {
        Some(redis::Value::Int(n)) => *n as u64,
        other => panic!("expected an integer, got {other:?}"),
    };
    let pending: redis::Value = redis::cmd("XPENDING")
        .arg(keys.messages())
        .arg(store.group())
        .query_async(&mut conn)
        .await
        .expect("XPENDING");
    let pending = match pending {
        redis::Value::Array(items) => int(items.first()),
        other => panic!("unexpected XPENDING reply {other:?}"),
    };
    let dead_length: u64 = redis::cmd("XLEN")
        .arg(keys.dead())
        .query_async(&mut conn)
        .await
        .expect("XLEN");
    let stats: std::collections::HashMap<String, i64> = redis::cmd("HGETALL")
        .arg(keys.stats())
        .query_async(&mut conn)
        .await
        .expect("HGETALL");
    Scan {
        entries_added: int(info.get("entries-added")),
        stream_length: int(info.get("length")),
        pending,
        dead_length,
        stats,
    }
}

/// The dead stream's entries as field maps (lossy UTF-8).
pub async fn dead_entries(
    url: &str,
    store: &Store,
) -> Vec<std::collections::HashMap<String, String>> {
    let mut conn = raw(url).await;
    let entries: Vec<(String, sms_alerts::message::RawFields)> = redis::cmd("XRANGE")
        .arg(store.keys().dead())
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .expect("XRANGE dead");
    entries
        .into_iter()
        .map(|(_, fields)| {
            fields
                .into_iter()
                .map(|(k, v)| {
                    (
                        String::from_utf8_lossy(&k).into_owned(),
                        String::from_utf8_lossy(&v).into_owned(),
                    )
                })
                .collect()
        })
        .collect()
}

/// Pending entries of one consumer.
pub async fn pending_of(url: &str, store: &Store, consumer: &str) -> u64 {
    let mut conn = raw(url).await;
    let rows: Vec<redis::Value> = redis::cmd("XPENDING")
        .arg(store.keys().messages())
        .arg(store.group())
        .arg("-")
        .arg("+")
        .arg(1_000_000)
        .arg(consumer)
        .query_async(&mut conn)
        .await
        .expect("XPENDING consumer");
    rows.len() as u64
}

/// The built binary, with logs quiet unless asked for.
pub fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sms-alerts"));
    cmd.env_remove("REDIS_URL")
        .env(
            "RUST_LOG",
            std::env::var("SMS_TEST_CHILD_LOG").unwrap_or_else(|_| "warn".to_owned()),
        )
        .stdin(Stdio::null());
    cmd
}

/// Starts the binary as a sender process; its stderr goes to a file named after `name`.
pub fn spawn_sender_process(url: &str, prefix: &str, name: &str, args: &[&str]) -> Child {
    let log = log_path(&format!("{prefix}-{name}"));
    bin()
        .args([
            "--redis-url",
            url,
            "--prefix",
            prefix,
            "send",
            "--name",
            name,
        ])
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("sender process starts")
}

/// Where a child process's stderr is kept, for reading after a failure.
pub fn log_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.log"))
}

/// Starts the binary with `args` after the connection options; stdout is
/// captured, stderr goes to a log file named `log`.
pub fn spawn_process(url: &str, prefix: &str, log: &str, args: &[&str]) -> Child {
    bin()
        .args(["--redis-url", url, "--prefix", prefix])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log_path(&format!("{prefix}-{log}"))).expect("log file"))
        .spawn()
        .expect("process starts")
}

/// Sends SIGTERM to a child.
pub fn terminate(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -TERM failed");
}

/// Waits for a child to exit, with a deadline.
pub async fn wait_exit(child: &mut Child, deadline: Duration) -> std::process::ExitStatus {
    let until = Instant::now() + deadline;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            panic!("process {} did not exit within {deadline:?}", child.id());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A child process killed and reaped when dropped, so that a test that fails
/// half-way leaves no process behind.
pub struct KillOnDrop(pub Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // Already gone if the test waited for it: both calls then do nothing.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads up to `count` new entries as consumer `consumer` with a plain
/// XREADGROUP (they become its pending entries); their ids, oldest first.
pub async fn read_as(url: &str, store: &Store, consumer: &str, count: usize) -> Vec<String> {
    let read: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(store.group())
        .arg(consumer)
        .arg("COUNT")
        .arg(count)
        .arg("STREAMS")
        .arg(store.keys().messages())
        .arg(">")
        .query_async(&mut raw(url).await)
        .await
        .expect("XREADGROUP");
    read.keys
        .first()
        .map(|key| key.ids.iter().map(|e| e.id.clone()).collect())
        .unwrap_or_default()
}
