//! Prometheus: the monitor serves /metrics; a real HTTP client scrapes it and a
//! parser of the exposition format reads it back.

mod common;

use std::time::Duration;

use common::*;
use prometheus_parse::{Scrape, Value};
use sms_alerts::stats::Snapshot;

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
