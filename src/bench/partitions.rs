//! `sms-alerts bench --partitions N --cluster K`: what partitions buy. The
//! same messages are produced and then drained three ways in one run: one
//! partition on one Redis, N partitions on that Redis, and N partitions on
//! a private cluster of K primaries; plus each primary's share of the
//! cluster's Redis CPU (`INFO cpu`), which shows whether the partitions
//! spread the work.
//!
//! One Redis runs every command on one thread, so it is the ceiling of a
//! single queue; partitions on a cluster put each primary's thread to work.
//! On a machine with fewer cores than primaries plus the client, the
//! primaries share the cores, and the gain is bounded by them.

use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use super::{fresh_with, produce, produce_settings, start, stop, wait_settled};
use crate::embedded::{EmbeddedCluster, Persistence};
use crate::store::{QueueOptions, Store, StoreError};

/// Send slots of each of the two draining senders.
const DRAIN_CONCURRENCY: usize = 500;

/// One configuration's figures.
#[derive(Debug, Clone, Copy)]
struct Figures {
    produce: f64,
    drain: f64,
    /// Messages over the time to produce and then drain them.
    both: f64,
}

/// Runs the comparison: one partition and `partitions` on the Redis at
/// `url`, then `partitions` on a private cluster of `primaries` with
/// `persistence`, `messages` each; a line per figure to `line`.
pub(super) async fn run(
    url: &str,
    messages: u64,
    partitions: u32,
    primaries: u32,
    persistence: Persistence,
    line: &mut dyn FnMut(String),
) -> Result<(), StoreError> {
    let single = measure(url, "p1", 1, messages).await?;
    line(report("1 partition, one Redis", single, None));
    let spread = measure(url, "pn", partitions, messages).await?;
    line(report(
        &format!("{partitions} partitions, one Redis"),
        spread,
        Some(single),
    ));
    let primaries_nz = NonZeroUsize::new(primaries as usize).unwrap_or(NonZeroUsize::MIN);
    let cluster = EmbeddedCluster::start(primaries_nz, persistence)
        .await
        .map_err(|err| StoreError::Refused(format!("cannot start a private cluster: {err}")))?;
    let nodes: Vec<String> = cluster.urls().into_iter().map(str::to_owned).collect();
    let before = cpu_seconds(&nodes).await?;
    let clustered = measure(cluster.seed_url(), "pc", partitions, messages).await;
    let after = cpu_seconds(&nodes).await;
    cluster.stop().await;
    let clustered = clustered?;
    let after = after?;
    line(report(
        &format!("{partitions} partitions, {primaries}-primary cluster"),
        clustered,
        Some(single),
    ));
    let gain = clustered.both / single.both;
    line(format!(
        "partitions  cluster vs 1 partition on one Redis: {gain:.2}x (target >= 1.00: {})",
        super::met(gain >= 1.0)
    ));
    let used: Vec<f64> = after
        .iter()
        .zip(&before)
        .map(|(a, b)| (a - b).max(0.0))
        .collect();
    let total: f64 = used.iter().sum();
    let fair = 1.0 / f64::from(primaries);
    let shares: Vec<f64> = used.iter().map(|u| u / total.max(f64::EPSILON)).collect();
    let even = shares.iter().all(|s| (s - fair).abs() <= 0.2 * fair);
    line(format!(
        "cpu         Redis CPU by primary: {} of {total:.1}s (target: each within 20% of {:.0}%: {})",
        shares
            .iter()
            .map(|s| format!("{:.0}%", s * 100.0))
            .collect::<Vec<_>>()
            .join(" / "),
        fair * 100.0,
        super::met(even)
    ));
    Ok(())
}

fn report(what: &str, figures: Figures, against: Option<Figures>) -> String {
    let versus = against.map_or_else(String::new, |base| {
        format!("  ({:.2}x)", figures.both / base.both)
    });
    format!(
        "partitions  {what:<32} produce {:>9.0} msg/s, drain {:>9.0} msg/s, produce+drain {:>9.0} msg/s{versus}",
        figures.produce, figures.drain, figures.both
    )
}

/// Produces `messages` on a fresh queue of `partitions` at `url`, then
/// drains them with two senders; removes the queue.
async fn measure(
    url: &str,
    step: &str,
    partitions: u32,
    messages: u64,
) -> Result<Figures, StoreError> {
    let options = QueueOptions {
        partitions: Some(partitions),
        ..QueueOptions::default()
    };
    let store = fresh_with(url, step, &options).await?;
    let started = Instant::now();
    produce(&store, &produce_settings(messages, 7)).await?;
    let produced = started.elapsed();
    let started = Instant::now();
    let senders = start(
        &store,
        &[DRAIN_CONCURRENCY, DRAIN_CONCURRENCY],
        Duration::ZERO,
    );
    wait_settled(&store, messages).await?;
    let drained = started.elapsed();
    stop(senders).await;
    clean_all(&store).await?;
    let rate = |time: Duration| messages as f64 / time.as_secs_f64();
    Ok(Figures {
        produce: rate(produced),
        drain: rate(drained),
        both: rate(produced + drained),
    })
}

/// Removes the keys of every partition of the queue.
async fn clean_all(store: &Store) -> Result<(), StoreError> {
    for partition in store.partitions() {
        partition.operator().delete_all_keys().await?;
    }
    Ok(())
}

/// Each node's Redis CPU time so far (`used_cpu_sys` + `used_cpu_user`).
async fn cpu_seconds(nodes: &[String]) -> Result<Vec<f64>, StoreError> {
    let mut seconds = Vec::with_capacity(nodes.len());
    for url in nodes {
        let unreachable = |err: redis::RedisError| StoreError::Unreachable {
            url: url.clone(),
            reason: err.to_string(),
        };
        let client = redis::Client::open(url.as_str()).map_err(unreachable)?;
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(unreachable)?;
        let info: String = redis::cmd("INFO")
            .arg("cpu")
            .query_async(&mut conn)
            .await
            .map_err(StoreError::redis("INFO cpu"))?;
        let field = |name: &str| {
            info.lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|value| value.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        seconds.push(field("used_cpu_sys:") + field("used_cpu_user:"));
    }
    Ok(seconds)
}
