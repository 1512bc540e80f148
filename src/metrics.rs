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
use crate::store::Store;

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
            "sms_dead_total",
            "Messages moved to the dead stream.",
            s.dead,
        ),
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
    ] {
        family(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {value}");
    }
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
    }
}
