//! Prometheus metrics: `GET /metrics` in the text exposition format, read from
//! Redis at scrape time (three round trips, like a monitor refresh), so every
//! scrape is fresh and nothing is kept in between.

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
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

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

/// The gauges of the queue's health: ages, live senders, retention, state,
/// Redis's memory, unfinished producer runs.
fn queue_gauges(out: &mut String, s: &Snapshot) {
    let seconds = |ms: u64| ms as f64 / 1000.0;
    for (name, help, value) in [
        (
            "sms_oldest_queued_age_seconds",
            "Age of the oldest message never delivered.",
            s.oldest_queued_age_ms.map(seconds),
        ),
        (
            "sms_oldest_pending_age_seconds",
            "Age of the oldest message delivered and not settled.",
            s.oldest_pending_age_ms.map(seconds),
        ),
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

/// Renders the queue's figures in the Prometheus text format.
pub fn render(s: &Snapshot, senders: &[SenderSnapshot]) -> String {
    let mut out = String::new();
    for (name, help, value) in [
        (
            "sms_produced_total",
            "Entries ever added to the stream.",
            s.produced,
        ),
        (
            "sms_sent_total",
            "Messages sent, each counted once.",
            s.sent,
        ),
        ("sms_failed_total", "Failed send attempts.", s.failed),
        (
            "sms_duplicates_total",
            "Successful sends of already settled messages.",
            s.duplicates,
        ),
        (
            "sms_attempts_total",
            "Send attempts of any outcome.",
            s.attempts,
        ),
        (
            "sms_trimmed_total",
            "Settled entries removed from the stream by retention.",
            s.trimmed,
        ),
        (
            "sms_dead_trimmed_total",
            "Dead letters removed by their retention.",
            s.dead_trimmed,
        ),
        (
            "sms_dead_purged_total",
            "Dead letters removed by `dead purge`.",
            s.dead_purged,
        ),
        (
            "sms_requeued_total",
            "Dead letters moved back into the stream.",
            s.requeued,
        ),
        (
            "sms_abandoned_total",
            "Messages a repair gave up when it re-created a lost group.",
            s.abandoned,
        ),
    ] {
        family(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {value}");
    }
    family(
        &mut out,
        "sms_dead_total",
        "counter",
        "Messages moved to the dead stream, by reason.",
    );
    for (reason, value) in [
        ("max_attempts", s.dead_max_attempts),
        ("malformed", s.dead_malformed),
        ("deleted", s.dead_deleted),
    ] {
        let _ = writeln!(out, "sms_dead_total{{reason=\"{reason}\"}} {value}");
    }
    queue_gauges(&mut out, s);
    family(
        &mut out,
        "sms_pending",
        "gauge",
        "Messages delivered to a sender and not yet settled.",
    );
    let _ = writeln!(out, "sms_pending {}", s.pending);
    if let Some(lag) = s.lag {
        family(
            &mut out,
            "sms_lag",
            "gauge",
            "Messages never delivered yet.",
        );
        let _ = writeln!(out, "sms_lag {lag}");
    }

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

    let name = "sms_send_duration_seconds";
    family(
        &mut out,
        name,
        "histogram",
        "Simulated send time per attempt.",
    );
    let mut cumulative = 0;
    for (bound, count) in BOUNDS_US.iter().zip(s.latency.counts) {
        cumulative += count;
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"{}\"}} {cumulative}",
            *bound as f64 / 1e6
        );
    }
    let total = s.latency.total();
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
    let _ = writeln!(out, "{name}_sum {}", s.send_time_us as f64 / 1e6);
    let _ = writeln!(out, "{name}_count {total}");
    out
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
            idle_ms: 0,
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
}
