//! Prometheus metrics: `GET /metrics` in the text exposition format, read from
//! Redis at scrape time (like a monitor refresh), so every scrape is fresh and
//! nothing is kept in between.
//!
//! The series of the queue's counters, pending, lag, ages and send times are
//! per partition: on a queue with several, each carries a `partition` label
//! (`sum without (partition)` gives the queue's totals; `max` its oldest
//! age). A queue with one partition has them unlabelled, as always. The
//! queue-wide series (state, retention, live senders, memory, runs) and the
//! per-sender ones (summed over the partitions) carry no `partition`.

use std::fmt::Write as _;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::latency::BOUNDS_US;
use crate::stats::{SenderSnapshot, Snapshot};
use crate::store::{RunState, Store};

/// The exposition format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `/metrics` on `listener` until `shutdown` fires. The caller binds,
/// so a port already in use fails at start-up, not mid-run.
pub async fn serve(
    store: Store,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "serving Prometheus metrics on /metrics");
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(store);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

async fn scrape(State(store): State<Store>) -> Response {
    let read = async {
        let snapshot = Snapshot::read(&store).await?;
        let senders = SenderSnapshot::read_all(&store).await?;
        Ok::<_, crate::store::StoreError>(render(&snapshot, &senders))
    };
    match read.await {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(err) => {
            tracing::warn!(error = %err, "metrics scrape could not read Redis");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot read Redis: {err}\n"),
            )
                .into_response()
        }
    }
}

/// Escapes a label value as the exposition format requires.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The gauges of the queue's health: live senders, retention, state,
/// Redis's memory, unfinished producer runs.
fn queue_gauges(out: &mut String, s: &Snapshot) {
    for (name, help, value) in [
        (
            "sms_live_senders",
            "Senders whose process is alive.",
            Some(s.live_senders as f64),
        ),
        (
            "sms_queue_state",
            "0 sound, 1 identity lost, 2 created anew, 3 group gone, 4 damaged.",
            Some(s.state as u8 as f64),
        ),
        (
            "sms_redis_used_memory_bytes",
            "Memory Redis uses.",
            Some(s.memory.used as f64),
        ),
        (
            "sms_redis_maxmemory_bytes",
            "Redis's memory limit (0: none).",
            Some(s.memory.max as f64),
        ),
    ] {
        if let Some(value) = value {
            family(out, name, "gauge", help);
            let _ = writeln!(out, "{name} {value}");
        }
    }
    family(
        out,
        "sms_retention_seconds",
        "gauge",
        "How long settled messages and dead letters are kept (-1: forever).",
    );
    for (stream, retention) in [("messages", s.retention), ("dead", s.dead_retention)] {
        if let Some(retention) = retention {
            let value = match retention {
                crate::store::Retention::Forever => -1.0,
                crate::store::Retention::Keep(age) => age.as_secs_f64(),
            };
            let _ = writeln!(out, "sms_retention_seconds{{stream=\"{stream}\"}} {value}");
        }
    }
    family(
        out,
        "sms_producer_runs",
        "gauge",
        "Producer runs not finished, by state.",
    );
    for state in [RunState::Running, RunState::Stopped, RunState::Died] {
        let count = s.open_runs.iter().filter(|run| run.state == state).count();
        let _ = writeln!(out, "sms_producer_runs{{state=\"{state}\"}} {count}");
    }
}

/// Each partition's label and figures; a queue with one partition has one
/// unlabelled, as before queues had partitions.
fn by_partition(s: &Snapshot) -> Vec<(String, &Snapshot)> {
    if s.partitions.len() <= 1 {
        return vec![(String::new(), s)];
    }
    (0..)
        .zip(&s.partitions)
        .map(|(p, part): (u32, _)| (format!("partition=\"{p}\""), part))
        .collect()
}

/// `name{labels}`, the empty labels left out; `name` alone without any.
fn series(name: &str, labels: &[&str]) -> String {
    let labels: Vec<&str> = labels.iter().copied().filter(|l| !l.is_empty()).collect();
    if labels.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{}}}", labels.join(","))
    }
}

/// A family with one series per partition that has a value: none at all
/// when no partition has one.
fn partition_family(
    out: &mut String,
    parts: &[(String, &Snapshot)],
    (name, kind, help): (&str, &str, &str),
    value: impl Fn(&Snapshot) -> Option<f64>,
) {
    let values: Vec<(&str, f64)> = parts
        .iter()
        .filter_map(|(label, s)| Some((label.as_str(), value(s)?)))
        .collect();
    if values.is_empty() {
        return;
    }
    family(out, name, kind, help);
    for (label, value) in values {
        let _ = writeln!(out, "{} {value}", series(name, &[label]));
    }
}

/// A counter family: its name, help, and where a snapshot holds its value.
type Counter = (&'static str, &'static str, fn(&Snapshot) -> u64);

/// Renders the queue's figures in the Prometheus text format.
pub fn render(s: &Snapshot, senders: &[SenderSnapshot]) -> String {
    let mut out = String::new();
    let parts = by_partition(s);
    let counters: [Counter; 10] = [
        (
            "sms_produced_total",
            "Entries ever added to the stream.",
            |s| s.produced,
        ),
        ("sms_sent_total", "Messages sent, each counted once.", |s| {
            s.sent
        }),
        ("sms_failed_total", "Failed send attempts.", |s| s.failed),
        (
            "sms_duplicates_total",
            "Successful sends of already settled messages.",
            |s| s.duplicates,
        ),
        ("sms_attempts_total", "Send attempts of any outcome.", |s| {
            s.attempts
        }),
        (
            "sms_trimmed_total",
            "Settled entries removed from the stream by retention.",
            |s| s.trimmed,
        ),
        (
            "sms_dead_trimmed_total",
            "Dead letters removed by their retention.",
            |s| s.dead_trimmed,
        ),
        (
            "sms_dead_purged_total",
            "Dead letters removed by `dead purge`.",
            |s| s.dead_purged,
        ),
        (
            "sms_requeued_total",
            "Dead letters moved back into the stream.",
            |s| s.requeued,
        ),
        (
            "sms_abandoned_total",
            "Messages a repair gave up when it re-created a lost group.",
            |s| s.abandoned,
        ),
    ];
    for (name, help, value) in counters {
        partition_family(&mut out, &parts, (name, "counter", help), |s| {
            Some(value(s) as f64)
        });
    }
    family(
        &mut out,
        "sms_dead_total",
        "counter",
        "Messages moved to the dead stream, by reason.",
    );
    for (label, p) in &parts {
        for (reason, value) in [
            ("max_attempts", p.dead_max_attempts),
            ("malformed", p.dead_malformed),
            ("deleted", p.dead_deleted),
        ] {
            let reason = format!("reason=\"{reason}\"");
            let _ = writeln!(
                out,
                "{} {value}",
                series("sms_dead_total", &[label, &reason])
            );
        }
    }
    let seconds = |ms: u64| ms as f64 / 1000.0;
    partition_family(
        &mut out,
        &parts,
        (
            "sms_oldest_queued_age_seconds",
            "gauge",
            "Age of the oldest message never delivered.",
        ),
        |s| s.oldest_queued_age_ms.map(seconds),
    );
    partition_family(
        &mut out,
        &parts,
        (
            "sms_oldest_pending_age_seconds",
            "gauge",
            "Age of the oldest message delivered and not settled.",
        ),
        |s| s.oldest_pending_age_ms.map(seconds),
    );
    queue_gauges(&mut out, s);
    partition_family(
        &mut out,
        &parts,
        (
            "sms_pending",
            "gauge",
            "Messages delivered to a sender and not yet settled.",
        ),
        |s| Some(s.pending as f64),
    );
    partition_family(
        &mut out,
        &parts,
        ("sms_lag", "gauge", "Messages never delivered yet."),
        |s| s.lag.map(|lag| lag as f64),
    );

    for (name, kind, help, value) in [
        (
            "sms_sender_sent_total",
            "counter",
            "Messages a sender sent.",
            (|x: &SenderSnapshot| x.sent) as fn(&SenderSnapshot) -> u64,
        ),
        (
            "sms_sender_failed_total",
            "counter",
            "A sender's failed attempts.",
            |x| x.failed,
        ),
        (
            "sms_sender_dead_total",
            "counter",
            "Messages a sender dead-lettered.",
            |x| x.dead,
        ),
        (
            "sms_sender_pending",
            "gauge",
            "Messages a sender holds.",
            |x| x.pending,
        ),
    ] {
        if senders.is_empty() {
            break;
        }
        family(&mut out, name, kind, help);
        for sender in senders {
            let _ = writeln!(
                out,
                "{name}{{sender=\"{}\"}} {}",
                label(&sender.name),
                value(sender)
            );
        }
    }

    histogram(&mut out, &parts);
    out
}

/// The send-time histogram, one per partition.
fn histogram(out: &mut String, parts: &[(String, &Snapshot)]) {
    let name = "sms_send_duration_seconds";
    family(out, name, "histogram", "Simulated send time per attempt.");
    for (label, s) in parts {
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        for (bound, count) in BOUNDS_US.iter().zip(s.latency.counts) {
            cumulative += count;
            let le = format!("le=\"{}\"", *bound as f64 / 1e6);
            let _ = writeln!(out, "{} {cumulative}", series(&bucket, &[label, &le]));
        }
        let total = s.latency.total();
        let le = "le=\"+Inf\"";
        let _ = writeln!(out, "{} {total}", series(&bucket, &[label, le]));
        let sum = s.send_time_us as f64 / 1e6;
        let _ = writeln!(out, "{} {sum}", series(&format!("{name}_sum"), &[label]));
        let _ = writeln!(
            out,
            "{} {total}",
            series(&format!("{name}_count"), &[label])
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_labels_escaped() {
        let mut snapshot = Snapshot {
            sent: 3,
            attempts: 3,
            send_time_us: 30_000,
            lag: None,
            ..Snapshot::default()
        };
        snapshot.latency.counts[3] = 2;
        snapshot.latency.counts[4] = 1;
        let sender = SenderSnapshot {
            name: "we\"ird".to_owned(),
            sent: 3,
            failed: 0,
            dead: 0,
            attempts: 3,
            send_time_us: 30_000,
            pending: 0,
            pending_by_partition: vec![0],
            idle_ms: 0,
            live: true,
        };
        let text = render(&snapshot, &[sender]);
        assert!(
            text.contains("sms_send_duration_seconds_bucket{le=\"0.01\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("sms_send_duration_seconds_bucket{le=\"0.02\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("sms_send_duration_seconds_bucket{le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("sms_sender_sent_total{sender=\"we\\\"ird\"} 3\n"),
            "{text}"
        );
        assert!(!text.contains("sms_lag"), "an unknown lag is left out");
        assert!(
            text.contains("sms_dead_total{reason=\"malformed\"} 0\n"),
            "{text}"
        );
        assert!(
            !text.contains("sms_oldest_queued_age_seconds"),
            "no age without a message"
        );
    }

    #[test]
    fn each_partition_is_a_labelled_series_that_sums_to_the_total() {
        let part = |sent: u64, lag: Option<u64>| {
            let mut s = Snapshot {
                sent,
                attempts: sent,
                lag,
                ..Snapshot::default()
            };
            s.latency.counts[0] = sent;
            s
        };
        let total = Snapshot::total(vec![part(2, Some(1)), part(0, None), part(5, Some(0))]);
        let text = render(&total, &[]);
        for line in [
            "sms_sent_total{partition=\"0\"} 2\n",
            "sms_sent_total{partition=\"2\"} 5\n",
            "sms_dead_total{partition=\"1\",reason=\"malformed\"} 0\n",
            "sms_lag{partition=\"0\"} 1\n",
            "sms_send_duration_seconds_bucket{partition=\"2\",le=\"+Inf\"} 5\n",
            "sms_send_duration_seconds_count{partition=\"0\"} 2\n",
            "sms_queue_state 0\n",
        ] {
            assert!(text.contains(line), "{line:?} missing in:\n{text}");
        }
        assert!(
            !text.contains("\nsms_sent_total "),
            "no unlabelled series:\n{text}"
        );
        assert!(
            !text.contains("sms_lag{partition=\"1\"}"),
            "an unknown lag is left out:\n{text}"
        );
        assert_eq!(
            text.matches("# TYPE sms_sent_total counter").count(),
            1,
            "one family, three series"
        );
    }
}
