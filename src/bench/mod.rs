//! `sms-alerts bench`: throughput, efficiency, memory and latency, each next to
//! Redis's own XADD ceiling measured with `redis-benchmark` in the same run, so
//! the ratios hold on a busy machine; then what a queue that runs for months
//! costs (`lifetime`): a claim call's Redis time over a long pending list, and
//! Redis's memory over a continuous run with and without retention. Every step
//! runs on a fresh key prefix and deletes its keys afterwards, so it is safe on
//! a Redis that holds other data.

mod lifetime;
mod partitions;

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::generator::MessageGenerator;
use crate::produce;
use crate::send::{self, SendSummary};
use crate::settings::Distribution;
use crate::settings::{DelayModel, ProduceSettings, QueueSettings, SendSettings};
use crate::stats::Snapshot;
use crate::store::{QueueOptions, Store, StoreError};

/// Rounds the produce run is split into, each after a round of the ceiling
/// of the same size. A machine's speed, and its disk's under AOF, can swing
/// by a third or more within seconds, so a ceiling measured apart from the
/// run it is compared with sees other swings; interleaved finely, both see
/// the same ones. The ceiling's stream is kept across its rounds, so it grows
/// to the same length as ours, with the same cost of fresh memory.
const ROUNDS: u64 = 20;

/// The ceiling over its rounds: the overall rate, and the slowest and fastest
/// round, which show how much the machine moved.
#[derive(Debug, Clone, Copy)]
struct CeilingRounds {
    rate: f64,
    lowest: f64,
    highest: f64,
}

impl From<&[(u64, f64)]> for CeilingRounds {
    /// From each round's XADDs and rate.
    fn from(rounds: &[(u64, f64)]) -> Self {
        let count: u64 = rounds.iter().map(|(count, _)| count).sum();
        let seconds: f64 = rounds
            .iter()
            .map(|(count, rate)| *count as f64 / rate)
            .sum();
        let rates = rounds.iter().map(|(_, rate)| *rate);
        Self {
            rate: count as f64 / seconds,
            lowest: rates.clone().fold(f64::INFINITY, f64::min),
            highest: rates.fold(0.0, f64::max),
        }
    }
}

pub use crate::settings::BenchSizes;

/// Runs every measurement against `url`, writing a line per figure to
/// `out`; with `sizes.partitions`, only the comparison of partitions (see
/// `partitions.rs`), whose private cluster gets `persistence`.
pub async fn run(
    url: &str,
    sizes: BenchSizes,
    persistence: crate::embedded::Persistence,
    out: &mut dyn std::io::Write,
) -> Result<(), StoreError> {
    let mut line = |text: String| {
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    };
    if let Some(count) = sizes.partitions {
        return partitions::run(
            url,
            sizes.messages,
            count,
            sizes.cluster,
            persistence,
            &mut line,
        )
        .await;
    }
    let (store, ceiling) = produce_against_ceiling(url, sizes.messages, &mut line).await?;
    drain_with_one_and_two_senders(url, store, sizes.messages, ceiling, &mut line).await?;
    simulation_efficiency(url, sizes.simulation, &mut line).await?;
    sender_memory(url, &mut line).await?;
    end_to_end_latency(url, &mut line).await?;
    lifetime::run(url, &sizes, &mut line).await
}

/// `rate` as a fraction of the ceiling, and whether it meets `target`;
/// empty without a ceiling.
fn ratio(ceiling: Option<CeilingRounds>, rate: f64, target: f64) -> String {
    let Some(c) = ceiling else {
        return String::new();
    };
    let r = rate / c.rate;
    format!(
        "{r:.2} of ceiling (target >= {target:.2}: {})",
        met(r >= target)
    )
}

/// How a figure compares with its target.
fn met(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

/// Produces `messages` in [`ROUNDS`] rounds, each after a round of the
/// ceiling of the same size, and writes the ceiling, produce's rate and
/// Redis's memory per message. Returns the queue, full, and the ceiling
/// (`None` when a round gave no rate).
async fn produce_against_ceiling(
    url: &str,
    messages: u64,
    line: &mut dyn FnMut(String),
) -> Result<(Store, Option<CeilingRounds>), StoreError> {
    let store = fresh(url, "produce").await?;
    let ceiling_key = format!("bench-ceiling-{}", std::process::id());
    let rounds = ROUNDS.min(messages).max(1);
    let mut ceiling_rounds = Vec::new();
    let mut produce_time = Duration::ZERO;
    let mut produce_memory = 0;
    for round in 0..rounds {
        let count = messages / rounds + u64::from(round < messages % rounds);
        let rate = self::ceiling(url, &ceiling_key, count).await;
        ceiling_rounds.push(rate.map(|rate| (count, rate)));
        let before = used_memory(&store).await?;
        produce_time += produce(&store, &produce_settings(count, 1 + round))
            .await?
            .elapsed;
        produce_memory += used_memory(&store).await?.saturating_sub(before);
    }
    delete_key(url, &ceiling_key).await;
    // Any round without a rate leaves the ratios out.
    let ceiling = ceiling_rounds
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .map(|rounds| CeilingRounds::from(rounds.as_slice()));
    match &ceiling {
        Some(c) => line(format!(
            "ceiling   redis-benchmark XADD -P 64, entry of our size: {:>10.0} msg/s  ({rounds} rounds between produce's: {:.0} to {:.0})",
            c.rate, c.lowest, c.highest
        )),
        None => line(
            "ceiling   redis-benchmark is not installed or gave no rate: ratios are left out"
                .to_owned(),
        ),
    }
    let rate = messages as f64 / produce_time.as_secs_f64();
    line(format!(
        "produce   {messages} messages:            {rate:>10.0} msg/s  {}",
        ratio(ceiling, rate, 0.8)
    ));
    let per_message = produce_memory as f64 / messages as f64;
    line(format!(
        "memory    Redis per produced message:   {per_message:>10.0} B      (target <= 250: {})",
        met(per_message <= 250.0)
    ));
    Ok((store, ceiling))
}

/// Drains `store`'s `messages` with one sender, then the same messages on a
/// fresh queue with two, writing each rate.
async fn drain_with_one_and_two_senders(
    url: &str,
    store: Store,
    messages: u64,
    ceiling: Option<CeilingRounds>,
    line: &mut dyn FnMut(String),
) -> Result<(), StoreError> {
    let rate = drain(&store, messages, &[1_000]).await?;
    line(format!(
        "drain     1 sender, mean 0ms:           {rate:>10.0} msg/s  {}",
        ratio(ceiling, rate, 0.4)
    ));
    clean(&store).await?;
    let store = fresh(url, "drain2").await?;
    produce(&store, &produce_settings(messages, 1)).await?;
    let rate = drain(&store, messages, &[500, 500]).await?;
    line(format!(
        "drain     2 senders, mean 0ms:          {rate:>10.0} msg/s  {}",
        ratio(ceiling, rate, 0.4)
    ));
    clean(&store).await
}

/// Simulation efficiency: `messages` constant 20 ms sends over two senders
/// of 1,000 slots each, against the time they would take with no overhead.
async fn simulation_efficiency(
    url: &str,
    messages: u64,
    line: &mut dyn FnMut(String),
) -> Result<(), StoreError> {
    let store = fresh(url, "simulate").await?;
    produce(&store, &produce_settings(messages, 2)).await?;
    let started = Instant::now();
    let senders = start(&store, &[1_000, 1_000], Duration::from_millis(20));
    wait_settled(&store, messages).await?;
    let measured = started.elapsed().as_secs_f64();
    stop(senders).await;
    let ideal = messages as f64 * 0.020 / 2_000.0;
    let efficiency = measured / ideal;
    // The average send time tells apart the two ways to lose: sends that
    // run long (a late timer) and slots left idle between sends.
    let avg_send = Snapshot::read(&store)
        .await?
        .avg_send_ms()
        .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.2} ms"));
    line(format!(
        "simulate  {messages} messages, 20ms, 2,000 slots: {measured:.2}s, ideal {ideal:.2}s, measured/ideal {efficiency:.3} (target <= 1.05: {}; average send {avg_send})",
        met(efficiency <= 1.05)
    ));
    clean(&store).await
}

/// A sender's peak memory at 10,000 sends in flight, in a process of its own.
async fn sender_memory(url: &str, line: &mut dyn FnMut(String)) -> Result<(), StoreError> {
    let store = fresh(url, "rss").await?;
    produce(&store, &produce_settings(20_000, 4)).await?;
    match sender_peak_rss_mb(url, &store).await {
        Some(mb) => line(format!(
            "memory    sender peak RSS, concurrency 10,000: {mb:>7.1} MB     (target <= 64: {})",
            met(mb <= 64.0)
        )),
        None => line("memory    sender peak RSS: could not be read (needs /proc)".to_owned()),
    }
    clean(&store).await
}

/// End-to-end latency, produce to acknowledged, at a steady 20,000 msg/s
/// with no send delay.
async fn end_to_end_latency(url: &str, line: &mut dyn FnMut(String)) -> Result<(), StoreError> {
    let store = fresh(url, "latency").await?;
    let senders = start(&store, &[1_000], Duration::ZERO);
    let total = steady_produce(&store, 20_000, Duration::from_secs(5)).await?;
    wait_settled(&store, total).await?;
    let summaries = stop(senders).await;
    let mut e2e = crate::latency::Histogram::default();
    for summary in &summaries {
        for (all, one) in e2e.counts.iter_mut().zip(summary.flushed.end_to_end.counts) {
            *all += one;
        }
    }
    let q = |q: f64| {
        e2e.quantile_ms(q)
            .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1} ms"))
    };
    line(format!(
        "latency   produce to acknowledged, 20,000 msg/s: p50 {}, p99 {} ({} messages; ms ids, bucket-interpolated)",
        q(0.5),
        q(0.99),
        e2e.total()
    ));
    clean(&store).await
}

/// A seeded producer run of `count` messages in batches of 1,000.
fn produce_settings(count: u64, seed: u64) -> ProduceSettings {
    ProduceSettings {
        count,
        seed: Some(seed),
        batch: 1_000,
        ..ProduceSettings::default()
    }
}

/// Runs a producer to the end; the bench's queues have one producer each,
/// so a run is never taken over.
async fn produce(
    store: &Store,
    settings: &ProduceSettings,
) -> Result<produce::ProduceSummary, StoreError> {
    produce::run(store, settings, &CancellationToken::new())
        .await
        .map_err(|err| match err {
            produce::ProduceError::Store(err) => err,
            other => StoreError::Refused(other.to_string()),
        })
}

/// A store on a fresh prefix, migrated, with its group.
async fn fresh(url: &str, step: &str) -> Result<Store, StoreError> {
    fresh_with(url, step, &QueueOptions::default()).await
}

/// A store on a fresh queue created with `options`.
async fn fresh_with(url: &str, step: &str, options: &QueueOptions) -> Result<Store, StoreError> {
    let queue = QueueSettings {
        redis_url: url.to_owned(),
        prefix: format!("bench-{step}-{}", std::process::id()),
        group: "senders".to_owned(),
        ..QueueSettings::default()
    };
    let store = Store::connect(&queue).await?;
    let (store, _, _) = store.migrate(options).await?;
    Ok(store)
}

fn sender(name: String, concurrency: usize, mean: Duration) -> SendSettings {
    SendSettings {
        name,
        delay: DelayModel {
            distribution: Distribution::Constant,
            mean,
            stddev: Duration::ZERO,
        },
        failure_rate: 0.0,
        concurrency,
        max_attempts: 3,
        lease: Duration::from_secs(30),
        retry_backoff: Duration::from_secs(1),
        shutdown_timeout: Duration::from_secs(10),
        seed: Some(1),
        partitions: None,
        outage: None,
        gateway: crate::settings::GatewaySettings::default(),
        channel: None,
    }
}

type Running = Vec<(
    CancellationToken,
    tokio::task::JoinHandle<Result<SendSummary, send::SendError>>,
)>;

fn start(store: &Store, concurrency: &[usize], mean: Duration) -> Running {
    concurrency
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let stop = CancellationToken::new();
            let settings = sender(format!("bench-{i}"), *c, mean);
            (
                stop.clone(),
                tokio::spawn(send::run(store.clone(), settings, stop)),
            )
        })
        .collect()
}

async fn stop(running: Running) -> Vec<SendSummary> {
    let mut summaries = Vec::new();
    for (stop, handle) in running {
        stop.cancel();
        if let Ok(Ok(summary)) = handle.await {
            summaries.push(summary);
        }
    }
    summaries
}

/// Messages per second to drain `total` produced messages with these senders.
async fn drain(store: &Store, total: u64, concurrency: &[usize]) -> Result<f64, StoreError> {
    let started = Instant::now();
    let running = start(store, concurrency, Duration::ZERO);
    wait_settled(store, total).await?;
    let rate = total as f64 / started.elapsed().as_secs_f64();
    stop(running).await;
    Ok(rate)
}

/// Waits until `total` messages are settled. Polls every 10 ms, and every
/// millisecond over the last 1% so the end is timed to the millisecond
/// without loading Redis with snapshots for the whole run.
async fn wait_settled(store: &Store, total: u64) -> Result<(), StoreError> {
    loop {
        let snapshot = Snapshot::read(store).await?;
        let settled = snapshot.settled();
        if settled >= total && snapshot.pending == 0 {
            return Ok(());
        }
        let poll_ms = if settled >= total - total / 100 {
            1
        } else {
            10
        };
        tokio::time::sleep(Duration::from_millis(poll_ms)).await;
    }
}

/// Writes `rate` messages a second for `during`, in batches every 10 ms.
async fn steady_produce(store: &Store, rate: u64, during: Duration) -> Result<u64, StoreError> {
    let producer = store.producer();
    let per_tick = rate / 100;
    let mut generator = MessageGenerator::seeded(3);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let started = Instant::now();
    let mut seq = 0;
    let conn = producer.batch_connection().await?;
    while started.elapsed() < during {
        tick.tick().await;
        seq += 1;
        let batch: Vec<_> = (0..per_tick).map(|_| generator.next_message(0)).collect();
        conn.write(&producer.prepare_batch("bench-steady", seq, &batch))
            .await?;
    }
    Ok(seq * per_tick)
}

async fn used_memory(store: &Store) -> Result<u64, StoreError> {
    let info = store.inspector().info("memory").await?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

async fn clean(store: &Store) -> Result<(), StoreError> {
    store.operator().delete_all_keys().await
}

/// Runs this binary as a sender with 10,000 slow sends in flight and reads its
/// peak resident memory (VmHWM).
async fn sender_peak_rss_mb(url: &str, store: &Store) -> Option<f64> {
    let exe = std::env::current_exe().ok()?;
    let prefix = store.keys().messages();
    let prefix = prefix.trim_start_matches('{').split(':').next()?.to_owned();
    let mut child = tokio::process::Command::new(exe)
        .args([
            "--redis-url",
            url,
            "--prefix",
            &prefix,
            "send",
            "--name",
            "rss",
        ])
        .args([
            "--concurrency",
            "10000",
            "--mean",
            "2s",
            "--distribution",
            "constant",
        ])
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    let pid = child.id()?;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        let snapshot = Snapshot::read(store).await.ok()?;
        if snapshot.pending >= 10_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the first wave finish and the next fill the slots again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let _ = child.kill().await;
    Some(kb / 1024.0)
}

/// Redis's own XADD rate over `count` XADDs to `key`, from `redis-benchmark`
/// against the same server; `None` if it is not installed or gives no rate.
async fn ceiling(url: &str, key: &str, count: u64) -> Option<f64> {
    let parsed = url::Url::parse(url).ok()?;
    let host = parsed.host_str()?.to_owned();
    let port = parsed.port().unwrap_or(6379).to_string();
    // recipient, a body of the mean generated length (50), created_ms: our entry.
    let body = "x".repeat(50);
    let mut cmd = tokio::process::Command::new("redis-benchmark");
    let count = count.to_string();
    cmd.args(["-h", &host, "-p", &port, "-P", "64", "-n", &count, "-q"]);
    if let Some(password) = parsed.password() {
        cmd.args(["-a", password]);
    }
    cmd.args([
        "XADD",
        key,
        "*",
        "recipient",
        "+447700900123",
        "body",
        &body,
        "created_ms",
        "1700000000000",
    ]);
    let output = cmd.output().await.ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let last = text.rsplit('\r').next()?.trim().to_owned();
    let rate: f64 = last
        .split(": ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    rate.is_finite().then_some(rate)
}

/// Deletes `key`, which the ceiling's rounds wrote; best effort, as the
/// figures are already taken.
async fn delete_key(url: &str, key: &str) {
    if let Ok(client) = redis::Client::open(url)
        && let Ok(mut conn) = client.get_multiplexed_async_connection().await
    {
        let _: Result<(), _> = redis::cmd("DEL").arg(key).query_async(&mut conn).await;
    }
}
