//! Prometheus: the monitor serves /metrics; a real HTTP client scrapes it and a
//! parser of the exposition format reads it back, on a queue of one channel
//! and on one of two, whose channels are series of their own.

mod common;

use std::time::Duration;

use common::*;
use prometheus_parse::{Scrape, Value};
use sms_alerts::channel::Channel;
use sms_alerts::settings::QueueSettings;
use sms_alerts::stats::Snapshot;
use sms_alerts::store::{QueueOptions, Store};
use tokio_util::sync::CancellationToken;

fn scrape(url: &str) -> Option<(String, String)> {
    let mut response = ureq::get(url).call().ok()?;
    let content_type = response
        .headers()
        .get("content-type")?
        .to_str()
        .ok()?
        .to_owned();
    Some((content_type, response.body_mut().read_to_string().ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_serves_metrics_that_parse_and_match_the_counters() {
    let redis = start_redis().await;
    let prefix = unique_prefix("metrics");
    let store = store(&redis.url, &prefix).await;
    produce_n(&store, 6, 500).await;
    let sender = RunningSender::start(&store, send_settings("alpha", 2, 0.2));
    wait_until("everything is settled", Duration::from_secs(30), || async {
        Snapshot::read(&store)
            .await
            .map(|s| s.pending == 0 && s.settled() == 500)
            .unwrap_or(false)
    })
    .await;
    sender.stop().await;

    let addr = format!("127.0.0.1:{}", free_port());
    let mut monitor = spawn_process(
        &redis.url,
        &prefix,
        "monitor",
        &["monitor", "--metrics-addr", &addr],
    );
    let url = format!("http://{addr}/metrics");
    let mut body = None;
    wait_until("/metrics answers", Duration::from_secs(20), || {
        let url = url.clone();
        let got = std::thread::spawn(move || scrape(&url))
            .join()
            .ok()
            .flatten();
        let ready = got.is_some();
        if ready {
            body = got;
        }
        async move { ready }
    })
    .await;
    terminate(&monitor);
    assert!(
        wait_exit(&mut monitor, Duration::from_secs(10))
            .await
            .success()
    );
    let (content_type, text) = body.expect("a scrape");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );

    let scrape =
        Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("valid exposition format");
    let value = |name: &str, label: Option<(&str, &str)>| -> f64 {
        let sample = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .unwrap_or_else(|| panic!("{name} missing in:\n{text}"));
        match &sample.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            other => panic!("{name} is {other:?}"),
        }
    };
    let snapshot = Snapshot::read(&store).await.expect("snapshot");
    assert_eq!(value("sms_produced_total", None), 500.0);
    assert_eq!(value("sms_sent_total", None), snapshot.sent as f64);
    assert_eq!(value("sms_failed_total", None), snapshot.failed as f64);
    let dead: f64 = ["max_attempts", "malformed", "deleted"]
        .into_iter()
        .map(|reason| value("sms_dead_total", Some(("reason", reason))))
        .sum();
    assert_eq!(dead, snapshot.dead as f64, "dead letters by reason add up");
    assert_eq!(value("sms_queue_state", None), 0.0);
    assert_eq!(
        value("sms_retention_seconds", Some(("stream", "messages"))),
        3600.0
    );
    assert_eq!(value("sms_pending", None), 0.0);
    assert_eq!(value("sms_lag", None), 0.0);
    assert_eq!(
        value("sms_sender_sent_total", Some(("sender", "alpha"))),
        snapshot.sent as f64
    );
    let histogram = scrape
        .samples
        .iter()
        .find(|s| s.metric == "sms_send_duration_seconds")
        .expect("the latency histogram");
    let Value::Histogram(buckets) = &histogram.value else {
        panic!("not a histogram: {:?}", histogram.value)
    };
    let total = buckets.iter().map(|b| b.count).fold(0.0, f64::max);
    assert_eq!(
        total, snapshot.attempts as f64,
        "every attempt is in the histogram"
    );
    assert!(
        buckets.windows(2).all(|w| w[0].count <= w[1].count),
        "cumulative buckets"
    );
    // The one sender made every attempt: its own histogram is the queue's.
    let of_sender = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "sms_sender_send_duration_seconds"
                && s.labels.get("sender") == Some("alpha")
        })
        .expect("the sender's histogram");
    let Value::Histogram(sender_buckets) = &of_sender.value else {
        panic!("not a histogram: {:?}", of_sender.value)
    };
    assert_eq!(
        sender_buckets.iter().map(|b| b.count).collect::<Vec<_>>(),
        buckets.iter().map(|b| b.count).collect::<Vec<_>>(),
        "the sender's buckets are the queue's"
    );
}

/// The value of the sample of `name` whose labels include every one of
/// `labels`.
fn sample(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .unwrap_or_else(|| panic!("no {name} with {labels:?}"));
    match &found.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        Value::Histogram(buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
        other => panic!("{name} is {other:?}"),
    }
}

/// A queue of two channels, `sms` then `email`, opened on `sms`.
async fn two_channel_queue(url: &str, prefix: &str) -> Store {
    let settings = QueueSettings {
        group: "sms".to_owned(),
        ..queue(url, prefix)
    };
    let connected = Store::connect(&settings).await.expect("connects");
    let channel = |spec: &str| Channel::parse(spec).expect("a valid channel");
    let options = QueueOptions {
        channels: vec![channel("sms"), channel("email")],
        ..QueueOptions::default()
    };
    connected
        .migrate(&options)
        .await
        .expect("the queue is created");
    connected.open().await.expect("opens")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_channel_is_scraped_as_series_of_its_own() {
    let redis = start_redis().await;
    let store = two_channel_queue(&redis.url, &unique_prefix("metrics-channels")).await;
    produce_n(&store, 11, 200).await;
    // Only the e-mail channel sends: it settles all 200 (sent, dead, or
    // skipped for want of an address), the SMS channel none.
    let email = store.for_channel("email").expect("an email channel");
    let sender = RunningSender::start(&email, send_settings("mailer", 1, 0.3));
    wait_until(
        "the email channel settled all",
        Duration::from_secs(30),
        || async {
            Snapshot::read(&store).await.is_ok_and(|s| {
                s.channels
                    .get("email")
                    .is_some_and(|c| c.pending == 0 && c.settled() == 200)
            })
        },
    )
    .await;
    sender.stop().await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    let url = format!("http://{}/metrics", listener.local_addr().expect("bound"));
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(sms_alerts::metrics::serve(
        store.clone(),
        listener,
        shutdown.clone(),
    ));
    let (_, text) = tokio::task::spawn_blocking(move || scrape(&url))
        .await
        .expect("joins")
        .expect("a scrape");
    shutdown.cancel();
    server.await.expect("joins").expect("stops cleanly");

    let scrape =
        Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("valid exposition format");
    let snapshot = Snapshot::read(&store).await.expect("snapshot");
    let (sms, mail) = (&snapshot.channels["sms"], &snapshot.channels["email"]);
    assert!(
        mail.sent > 0 && mail.skipped > 0 && mail.dead > 0,
        "the email channel sent, skipped and dead-lettered: {mail:?}"
    );
    for (name, channel, expected) in [
        ("sms_sent_total", "email", mail.sent),
        ("sms_sent_total", "sms", 0),
        ("sms_skipped_total", "email", mail.skipped),
        ("sms_skipped_total", "sms", 0),
        ("sms_failed_total", "email", mail.failed),
        ("sms_attempts_total", "email", mail.attempts),
        ("sms_attempts_total", "sms", 0),
        ("sms_deferred_total", "email", mail.deferred),
        ("sms_pending", "email", 0),
        ("sms_lag", "email", 0),
        (
            "sms_lag",
            "sms",
            sms.lag.expect("the sms channel's lag is known"),
        ),
        ("sms_send_duration_seconds", "email", mail.attempts),
        ("sms_send_duration_seconds", "sms", 0),
    ] {
        assert_eq!(
            sample(&scrape, name, &[("channel", channel)]),
            expected as f64,
            "{name} of channel {channel} in:\n{text}"
        );
    }
    assert_eq!(sms.lag, Some(200), "the sms channel read nothing");
    let dead: f64 = ["max_attempts", "malformed", "deleted", "expired"]
        .into_iter()
        .map(|reason| {
            sample(
                &scrape,
                "sms_dead_total",
                &[("channel", "email"), ("reason", reason)],
            )
        })
        .sum();
    assert_eq!(
        dead, mail.dead as f64,
        "the email channel's dead letters by reason"
    );
    assert_eq!(sample(&scrape, "sms_produced_total", &[]), 200.0);
    for shared in [
        "sms_produced_total",
        "sms_trimmed_total",
        "sms_requeued_total",
    ] {
        assert!(
            scrape
                .samples
                .iter()
                .filter(|s| s.metric == shared)
                .all(|s| s.labels.get("channel").is_none()),
            "{shared} is the stream's, not a channel's:\n{text}"
        );
    }
}

#[test]
fn a_bad_metrics_address_is_a_usage_error() {
    let output = bin()
        .args(["monitor", "--metrics-addr", "localhost"])
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--metrics-addr") && stderr.contains("localhost"),
        "{stderr}"
    );
}
