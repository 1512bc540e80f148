//! What a queue that runs for months costs: the Redis time of one claim call
//! over a long pending list (it must stay bounded, whatever the list's
//! length), and Redis's memory over a continuous run in waves with retention
//! 0s, beside the same run keeping everything.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{BenchSizes, clean, fresh_with, produce, start, stop, used_memory, wait_settled};
use crate::audit;
use crate::settings::ProduceSettings;
use crate::store::{QueueOptions, Retention, Store, StoreError};

/// Reads per round trip while the pending list is filled.
const FILL_READ: usize = 50_000;
/// Claim calls timed that find nothing to claim, and that claim a batch.
const IDLE_CALLS: u64 = 200;
const CLAIMING_CALLS: u64 = 20;
/// Entries a timed claim call asks for: as many as a sender of concurrency
/// 1,000 asks for at most (the call claims what its bound allows).
const CLAIM_BATCH: usize = 1_000;
/// Messages per wave of the continuous runs.
const WAVE: u64 = 250_000;
/// How often Redis's memory is sampled during the continuous runs.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// The memory bound the run with retention 0s must keep.
const MEMORY_TARGET_MB: f64 = 60.0;

/// Runs both measurements, writing a line per figure.
pub(super) async fn run(
    url: &str,
    sizes: &BenchSizes,
    line: &mut dyn FnMut(String),
) -> Result<(), StoreError> {
    if sizes.reclaim_pending > 0 {
        let (idle, (claiming, per_call)) = reclaim_cost(url, sizes.reclaim_pending).await?;
        let worst = idle.max(claiming);
        line(format!(
            "reclaim   {} pending: {idle:.2} ms of Redis time per claim call that finds nothing \
             idle, {claiming:.2} ms per call claiming {per_call} (target <= 5 ms: {})",
            sizes.reclaim_pending,
            if worst <= 5.0 { "met" } else { "NOT met" }
        ));
    }
    if sizes.retention > 0 {
        let zero = continuous(url, sizes.retention, Retention::Keep(Duration::ZERO)).await?;
        let forever = continuous(url, sizes.retention, Retention::Forever).await?;
        line(format!(
            "retention {} messages in waves of {}, 2 senders: Redis used_memory after the first \
             wave at most {:.1} MB with retention 0s (target < {MEMORY_TARGET_MB:.0}: {}), \
             {:.1} MB keeping everything; trimmed {}; audit {}",
            sizes.retention,
            WAVE.min(sizes.retention),
            zero.peak_mb,
            if zero.peak_mb < MEMORY_TARGET_MB {
                "met"
            } else {
                "NOT met"
            },
            forever.peak_mb,
            zero.trimmed,
            if zero.consistent && forever.consistent {
                "consistent"
            } else {
                "INCONSISTENT"
            }
        ));
    }
    Ok(())
}

/// Claim calls' Redis time (ms, from `INFO commandstats`) with `pending`
/// entries pending: calls whose scan finds nothing idle, and calls that
/// claim all they may (with how many each claimed).
async fn reclaim_cost(url: &str, pending: u64) -> Result<(f64, (f64, u64)), StoreError> {
    let store = fresh_with(url, "reclaim", &QueueOptions::default()).await?;
    produce(
        &store,
        &ProduceSettings {
            count: pending,
            seed: Some(5),
            batch: 1_000,
            ..ProduceSettings::default()
        },
    )
    .await?;
    let reader = store.read_connection(Duration::ZERO).await?;
    let mut read = 0;
    while read < pending {
        let entries = store
            .sender()
            .read_new(&reader, "holder", FILL_READ, 0)
            .await?;
        if entries.is_empty() {
            break;
        }
        read += entries.len() as u64;
    }
    let lease = Duration::from_secs(3600);
    let idle = timed(&store, IDLE_CALLS, |cursor| {
        let store = store.clone();
        async move {
            store
                .sender()
                .claim("claimer", lease, cursor.as_deref(), CLAIM_BATCH, 3, None)
                .await
                .map(|reply| reply.cursor)
        }
    })
    .await?;
    let claimed = Arc::new(AtomicU64::new(0));
    let claiming = timed(&store, CLAIMING_CALLS, |cursor| {
        let store = store.clone();
        let claimed = Arc::clone(&claimed);
        async move {
            let reply = store
                .sender()
                .claim(
                    "claimer",
                    Duration::ZERO,
                    cursor.as_deref(),
                    CLAIM_BATCH,
                    3,
                    None,
                )
                .await?;
            claimed.fetch_add(reply.claimed.len() as u64, Ordering::Relaxed);
            Ok(reply.cursor)
        }
    })
    .await?;
    clean(&store).await?;
    let per_call = claimed.load(Ordering::Relaxed) / CLAIMING_CALLS;
    Ok((idle, (claiming, per_call)))
}

/// Makes `calls` claim calls walking the cursor, and returns the Redis time
/// of one, in ms, from the change in FCALL's `INFO commandstats`.
async fn timed<F, Fut>(store: &Store, calls: u64, mut call: F) -> Result<f64, StoreError>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: Future<Output = Result<Option<String>, StoreError>>,
{
    let (calls_before, usec_before) = fcall_stats(store).await?;
    let mut cursor = None;
    for _ in 0..calls {
        cursor = call(cursor).await?;
    }
    let (calls_after, usec_after) = fcall_stats(store).await?;
    let made = calls_after.saturating_sub(calls_before).max(1);
    Ok(usec_after.saturating_sub(usec_before) as f64 / made as f64 / 1000.0)
}

/// FCALL's calls and microseconds so far.
async fn fcall_stats(store: &Store) -> Result<(u64, u64), StoreError> {
    let info = store.inspector().info("commandstats").await?;
    let line = info
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_fcall:"))
        .unwrap_or_default();
    let field = |name: &str| {
        line.split(',')
            .find_map(|part| part.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((field("calls"), field("usec")))
}

/// What a continuous run showed.
struct Continuous {
    /// Highest used_memory sampled after the first wave, in MB.
    peak_mb: f64,
    /// Entries trimmed.
    trimmed: u64,
    /// Whether the audit balanced at the end.
    consistent: bool,
}

/// Produces `total` messages in waves of [`WAVE`], each drained by two
/// senders before the next, on a queue with `retention`, sampling Redis's
/// memory throughout.
async fn continuous(url: &str, total: u64, retention: Retention) -> Result<Continuous, StoreError> {
    let options = QueueOptions {
        retention: Some(retention),
        ..QueueOptions::default()
    };
    let store = fresh_with(url, "retention", &options).await?;
    let peak = Arc::new(AtomicU64::new(0));
    let counting = Arc::new(AtomicBool::new(false));
    let done = CancellationToken::new();
    let sampler = tokio::spawn(sample(
        store.clone(),
        Arc::clone(&peak),
        Arc::clone(&counting),
        done.clone(),
    ));
    let senders = start(&store, &[1_000, 1_000], Duration::ZERO);
    let mut produced = 0;
    let started = Instant::now();
    while produced < total {
        let wave = WAVE.min(total - produced);
        let settings = ProduceSettings {
            count: wave,
            seed: Some(produced),
            batch: 1_000,
            ..ProduceSettings::default()
        };
        produce(&store, &settings).await?;
        produced += wave;
        wait_settled(&store, produced).await?;
        counting.store(true, Ordering::Relaxed);
    }
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        "continuous run drained"
    );
    stop(senders).await;
    done.cancel();
    let _ = sampler.await;
    let report = audit::run(&store, audit::DEFAULT_PAGE).await?;
    clean(&store).await?;
    Ok(Continuous {
        peak_mb: peak.load(Ordering::Relaxed) as f64 / (1024.0 * 1024.0),
        trimmed: report.counters.trimmed,
        consistent: report.is_consistent(),
    })
}

/// Records the highest used_memory seen while `counting`, until `done`.
async fn sample(
    store: Store,
    peak: Arc<AtomicU64>,
    counting: Arc<AtomicBool>,
    done: CancellationToken,
) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = done.cancelled() => return,
        }
        if counting.load(Ordering::Relaxed)
            && let Ok(used) = used_memory(&store).await
        {
            peak.fetch_max(used, Ordering::Relaxed);
        }
    }
}
