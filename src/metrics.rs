//! Prometheus metrics: `GET /metrics` in the text exposition format, read from
//! Redis at scrape time (like a monitor refresh), so every scrape is fresh and
//! nothing is kept in between.
//!
//! The series of the queue's counters, pending, lag, ages and send times are
//! per partition: on a queue with several, each carries a `partition` label
//! (`sum without (partition)` gives the queue's totals; `max` its oldest
//! age). A queue with one partition has them unlabelled, as always. The
//! queue-wide series (state, retention, memory, runs) and the per-sender
//! ones (summed over the partitions) carry no `partition`.
//!
//! On a queue of several channels each channel settles every message on its
//! own, so the series of what a channel did or holds (sent, failed, dead,
//! skipped, deferred, pending, lag, ages, send times, live senders) carry a
//! `channel` label too, one series per channel and partition. The stream's
//! own counters (produced, trimmed, requeued) are shared by the channels and
//! stay without one, so that a `sum` never counts an entry once per channel.
//! A queue of one channel has no `channel` label at all.

use std::fmt::Write as _;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::latency::{BOUNDS_US, Histogram};
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
    match Snapshot::read_watched(&store).await {
        Ok((snapshot, senders)) => {
            let text = render(&snapshot, &senders);
            ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
        }
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

/// The gauges of the queue's health: state, Redis's memory, retention,
/// unfinished producer runs.
fn queue_gauges(out: &mut String, s: &Snapshot) {
    for (name, help, value) in [
        (
            "sms_queue_state",
            "0 sound, 1 identity lost, 2 created anew, 3 group gone, 4 damaged.",
            s.state as u8 as f64,
        ),
        (
            "sms_redis_used_memory_bytes",
            "Memory Redis uses.",
            s.memory.used as f64,
        ),
        (
            "sms_redis_maxmemory_bytes",
            "Redis's memory limit (0: none).",
            s.memory.max as f64,
        ),
    ] {
        family(out, name, "gauge", help);
        let _ = writeln!(out, "{name} {value}");
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

/// The label of channel `name`, for a queue of several channels.
fn channel_label(name: &str) -> String {
    format!("channel=\"{}\"", label(name))
}

/// Each channel's and partition's labels and figures: those of
/// [`by_partition`] for a queue of one channel, else those of every
/// channel's partitions, each with its channel's label first.
fn by_channel(s: &Snapshot) -> Vec<(String, &Snapshot)> {
    if s.channels.is_empty() {
        return by_partition(s);
    }
    s.channels
        .iter()
        .flat_map(|(name, channel)| {
            let channel_label = channel_label(name);
            by_partition(channel)
                .into_iter()
                .map(move |(part, s)| (joined(&[&channel_label, &part]), s))
        })
        .collect()
}

/// `labels` separated by commas, the empty ones left out.
fn joined(labels: &[&str]) -> String {
    let labels: Vec<&str> = labels.iter().copied().filter(|l| !l.is_empty()).collect();
    labels.join(",")
}

/// `name{labels}`, the empty labels left out; `name` alone without any.
fn series(name: &str, labels: &[&str]) -> String {
    let labels = joined(labels);
    if labels.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{labels}}}")
    }
}

/// A family with one series per partition (or channel and partition) that
/// has a value: none at all when none has one.
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

/// Whose figures a counter is: the stream's, which every channel shares, or
/// each channel's own.
#[derive(Clone, Copy)]
enum Scope {
    Stream,
    Channel,
}

/// A counter family: its name, help, scope, and where a snapshot holds its
/// value.
type Counter = (&'static str, &'static str, Scope, fn(&Snapshot) -> u64);

/// The counter families, in the order they are written.
const COUNTERS: [Counter; 13] = [
    (
        "sms_produced_total",
        "Entries ever added to the stream.",
        Scope::Stream,
        |s| s.produced,
    ),
    (
        "sms_sent_total",
        "Messages sent, each counted once.",
        Scope::Channel,
        |s| s.sent,
    ),
    (
        "sms_failed_total",
        "Failed send attempts.",
        Scope::Channel,
        |s| s.failed,
    ),
    (
        "sms_duplicates_total",
        "Successful sends of already settled messages.",
        Scope::Channel,
        |s| s.duplicates,
    ),
    (
        "sms_attempts_total",
        "Send attempts of any outcome.",
        Scope::Channel,
        |s| s.attempts,
    ),
    (
        "sms_trimmed_total",
        "Settled entries removed from the stream by retention.",
        Scope::Stream,
        |s| s.trimmed,
    ),
    (
        "sms_dead_trimmed_total",
        "Dead letters removed by their retention.",
        Scope::Channel,
        |s| s.dead_trimmed,
    ),
    (
        "sms_dead_purged_total",
        "Dead letters removed by `dead purge`.",
        Scope::Channel,
        |s| s.dead_purged,
    ),
    (
        "sms_requeued_total",
        "Dead letters moved back into the stream.",
        Scope::Stream,
        |s| s.requeued,
    ),
    (
        "sms_abandoned_total",
        "Messages a repair gave up when it re-created a lost group.",
        Scope::Channel,
        |s| s.abandoned,
    ),
    (
        "sms_uncounted_total",
        "Messages settled before a repair re-created lost counters.",
        Scope::Channel,
        |s| s.uncounted,
    ),
    (
        "sms_skipped_total",
        "Messages settled as nothing for the channel (no address of its kind).",
        Scope::Channel,
        |s| s.skipped,
    ),
    (
        "sms_deferred_total",
        "Times a message was set back without spending an attempt (throttled, breaker open).",
        Scope::Channel,
        |s| s.deferred,
    ),
];

/// Renders the queue's figures in the Prometheus text format.
pub fn render(s: &Snapshot, senders: &[SenderSnapshot]) -> String {
    let mut out = String::new();
    let parts = by_partition(s);
    let channels = by_channel(s);
    for (name, help, scope, value) in COUNTERS {
        let over = match scope {
            Scope::Stream => &parts,
            Scope::Channel => &channels,
        };
        partition_family(&mut out, over, (name, "counter", help), |s| {
            Some(value(s) as f64)
        });
    }
    dead_by_reason(&mut out, &channels);
    let seconds = |ms: u64| ms as f64 / 1000.0;
    for (name, help, value) in [
        (
            "sms_oldest_queued_age_seconds",
            "Age of the oldest message never delivered.",
            (|s: &Snapshot| s.oldest_queued_age_ms) as fn(&Snapshot) -> Option<u64>,
        ),
        (
            "sms_oldest_pending_age_seconds",
            "Age of the oldest message delivered and not settled.",
            |s| s.oldest_pending_age_ms,
        ),
    ] {
        partition_family(&mut out, &channels, (name, "gauge", help), |s| {
            value(s).map(seconds)
        });
    }
    live_senders(&mut out, s);
    queue_gauges(&mut out, s);
    partition_family(
        &mut out,
        &channels,
        (
            "sms_pending",
            "gauge",
            "Messages delivered to a sender and not yet settled.",
        ),
        |s| Some(s.pending as f64),
    );
    partition_family(
        &mut out,
        &channels,
        ("sms_lag", "gauge", "Messages never delivered yet."),
        |s| s.lag.map(|lag| lag as f64),
    );
    sender_series(&mut out, s, senders);
    histogram(&mut out, &channels);
    sender_histogram(&mut out, s, senders);
    out
}

/// Dead letters by reason, for each channel and partition.
fn dead_by_reason(out: &mut String, channels: &[(String, &Snapshot)]) {
    family(
        out,
        "sms_dead_total",
        "counter",
        "Messages moved to the dead stream, by reason.",
    );
    for (label, p) in channels {
        for (reason, value) in [
            ("max_attempts", p.dead_max_attempts),
            ("malformed", p.dead_malformed),
            ("deleted", p.dead_deleted),
            ("expired", p.dead_expired),
        ] {
            let reason = format!("reason=\"{reason}\"");
            let _ = writeln!(
                out,
                "{} {value}",
                series("sms_dead_total", &[label, &reason])
            );
        }
    }
}

/// Senders whose process is alive: of the queue, or of each channel (a
/// sender serves one channel).
fn live_senders(out: &mut String, s: &Snapshot) {
    let name = "sms_live_senders";
    family(out, name, "gauge", "Senders whose process is alive.");
    if s.channels.is_empty() {
        let _ = writeln!(out, "{name} {}", s.live_senders);
    }
    for (channel, c) in &s.channels {
        let labels = channel_label(channel);
        let _ = writeln!(out, "{} {}", series(name, &[&labels]), c.live_senders);
    }
}

/// A sender's labels: its channel on a queue of several channels, its
/// gateway when it named one, and its name.
fn sender_labels(s: &Snapshot, sender: &SenderSnapshot) -> Vec<String> {
    let mut labels = Vec::new();
    if !s.channels.is_empty() {
        let channel = if sender.channel.is_empty() {
            &s.channel
        } else {
            &sender.channel
        };
        labels.push(channel_label(channel));
    }
    if !sender.gateway.is_empty() {
        labels.push(format!("gateway=\"{}\"", label(&sender.gateway)));
    }
    labels.push(format!("sender=\"{}\"", label(&sender.name)));
    labels
}

/// The per-sender series, each labelled with its sender's channel on a
/// queue of several channels.
fn sender_series(out: &mut String, s: &Snapshot, senders: &[SenderSnapshot]) {
    if senders.is_empty() {
        return;
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
        (
            "sms_sender_breaker_open",
            "gauge",
            "Whether a sender's gateway breaker is open or half-open (1) or closed (0).",
            |x| u64::from(!x.breaker.is_empty() && x.breaker != "closed"),
        ),
        (
            "sms_sender_breaker_opened_total",
            "counter",
            "Times a sender's gateway breaker opened.",
            |x| x.breaker_opened,
        ),
    ] {
        family(out, name, kind, help);
        for sender in senders {
            let labels = sender_labels(s, sender);
            let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
            let _ = writeln!(out, "{} {}", series(name, &labels), value(sender));
        }
    }
}

/// The send-time histogram, one per channel and partition.
fn histogram(out: &mut String, parts: &[(String, &Snapshot)]) {
    let name = "sms_send_duration_seconds";
    family(out, name, "histogram", "Simulated send time per attempt.");
    for (label, s) in parts {
        histogram_series(out, name, &[label], &s.latency, s.send_time_us);
    }
}

/// Each sender's send-time histogram, labelled with its channel and
/// gateway, so that a gateway's percentiles are a sum by `gateway`.
fn sender_histogram(out: &mut String, s: &Snapshot, senders: &[SenderSnapshot]) {
    if senders.is_empty() {
        return;
    }
    let name = "sms_sender_send_duration_seconds";
    family(
        out,
        name,
        "histogram",
        "Simulated send time per attempt, per sender.",
    );
    for sender in senders {
        let labels = sender_labels(s, sender);
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        histogram_series(out, name, &labels, &sender.latency, sender.send_time_us);
    }
}

/// The bucket, sum and count series of one histogram.
fn histogram_series(
    out: &mut String,
    name: &str,
    labels: &[&str],
    latency: &Histogram,
    send_time_us: u64,
) {
    let bucket = format!("{name}_bucket");
    let with = |le: &str| {
        let mut all = labels.to_vec();
        all.push(le);
        series(&bucket, &all)
    };
    let mut cumulative = 0;
    for (bound, count) in BOUNDS_US.iter().zip(latency.counts) {
        cumulative += count;
        let le = format!("le=\"{}\"", *bound as f64 / 1e6);
        let _ = writeln!(out, "{} {cumulative}", with(&le));
    }
    let total = latency.total();
    let _ = writeln!(out, "{} {total}", with("le=\"+Inf\""));
    let sum = send_time_us as f64 / 1e6;
    let _ = writeln!(out, "{} {sum}", series(&format!("{name}_sum"), labels));
    let _ = writeln!(out, "{} {total}", series(&format!("{name}_count"), labels));
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
            gateway: String::new(),
            breaker: String::new(),
            breaker_opened: 0,
            channel: String::new(),
            name: "we\"ird".to_owned(),
            sent: 3,
            failed: 0,
            dead: 0,
            attempts: 3,
            send_time_us: 30_000,
            latency: snapshot.latency,
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
        for line in [
            "sms_sender_send_duration_seconds_bucket{sender=\"we\\\"ird\",le=\"0.01\"} 2\n",
            "sms_sender_send_duration_seconds_bucket{sender=\"we\\\"ird\",le=\"+Inf\"} 3\n",
            "sms_sender_send_duration_seconds_sum{sender=\"we\\\"ird\"} 0.03\n",
            "sms_sender_send_duration_seconds_count{sender=\"we\\\"ird\"} 3\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
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

    #[test]
    fn each_channel_is_its_own_series_and_the_stream_is_not_counted_twice() {
        let part = |produced: u64, sent: u64, skipped: u64| {
            let mut s = Snapshot {
                produced,
                sent,
                skipped,
                attempts: sent,
                lag: Some(produced - sent - skipped),
                ..Snapshot::default()
            };
            s.latency.counts[0] = sent;
            s
        };
        let channel = |name: &str, parts: Vec<Snapshot>, live: u64| {
            let mut s = Snapshot::total(parts);
            s.channel = name.to_owned();
            s.live_senders = live;
            s
        };
        let sms = channel("sms", vec![part(4, 4, 0), part(6, 5, 0)], 2);
        let mut email = channel("email", vec![part(4, 1, 1), part(6, 0, 2)], 1);
        email.dead_expired = 3;
        email.partitions[1].dead_expired = 3;
        let mut queue = sms.clone();
        queue.channels = [("sms".to_owned(), sms.clone()), ("email".to_owned(), email)].into();
        let sender = SenderSnapshot {
            gateway: String::new(),
            breaker: String::new(),
            breaker_opened: 0,
            channel: String::new(),
            name: "a".to_owned(),
            sent: 9,
            failed: 0,
            dead: 0,
            attempts: 9,
            send_time_us: 0,
            latency: Histogram::default(),
            pending: 0,
            pending_by_partition: vec![0, 0],
            idle_ms: 0,
            live: true,
        };
        let text = render(&queue, &[sender]);
        for line in [
            "sms_sent_total{channel=\"sms\",partition=\"1\"} 5\n",
            "sms_sent_total{channel=\"email\",partition=\"0\"} 1\n",
            "sms_skipped_total{channel=\"email\",partition=\"1\"} 2\n",
            "sms_skipped_total{channel=\"sms\",partition=\"0\"} 0\n",
            "sms_deferred_total{channel=\"email\",partition=\"0\"} 0\n",
            "sms_dead_total{channel=\"email\",partition=\"1\",reason=\"expired\"} 3\n",
            "sms_dead_total{channel=\"sms\",partition=\"1\",reason=\"expired\"} 0\n",
            "sms_lag{channel=\"email\",partition=\"1\"} 4\n",
            "sms_lag{channel=\"sms\",partition=\"1\"} 1\n",
            "sms_send_duration_seconds_count{channel=\"sms\",partition=\"1\"} 5\n",
            "sms_send_duration_seconds_bucket{channel=\"email\",partition=\"0\",le=\"+Inf\"} 1\n",
            "sms_live_senders{channel=\"sms\"} 2\n",
            "sms_live_senders{channel=\"email\"} 1\n",
            "sms_sender_sent_total{channel=\"sms\",sender=\"a\"} 9\n",
            "sms_produced_total{partition=\"1\"} 6\n",
        ] {
            assert!(text.contains(line), "{line:?} missing in:\n{text}");
        }
        for absent in [
            "sms_produced_total{channel=",
            "sms_sent_total{partition=",
            "\nsms_live_senders ",
        ] {
            assert!(!text.contains(absent), "{absent:?} found in:\n{text}");
        }
        assert_eq!(
            text.matches("# TYPE sms_sent_total counter").count(),
            1,
            "one family, a series per channel and partition"
        );

        let alone = render(&sms, &[]);
        assert!(
            !alone.contains("channel="),
            "one channel, no channel label:\n{alone}"
        );
        assert!(
            alone.contains("sms_skipped_total{partition=\"0\"} 0\n"),
            "{alone}"
        );
    }
}
