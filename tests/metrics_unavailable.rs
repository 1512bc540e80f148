//! A scrape while Redis is down answers 503 with the reason, instead of
//! stale or zero figures that Prometheus would record as real.

mod common;

use std::time::Duration;

use common::*;
use tokio_util::sync::CancellationToken;

/// The status and body of `GET url`, errors statuses included.
fn get(url: &str) -> Option<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into();
    let mut response = agent.get(url).call().ok()?;
    let status = response.status().as_u16();
    Some((status, response.body_mut().read_to_string().ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_while_redis_is_down_answers_503_naming_the_cause() {
    let redis = start_redis().await;
    let store = store(&redis.url, &unique_prefix("down")).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let url = format!("http://{}/metrics", listener.local_addr().expect("bound"));
    let stop = CancellationToken::new();
    let server = tokio::spawn(sms_alerts::metrics::serve(
        store.clone(),
        listener,
        stop.clone(),
    ));
    let fetch = |url: String| async move {
        tokio::task::spawn_blocking(move || get(&url))
            .await
            .expect("the client thread ends")
    };
    let up = fetch(url.clone()).await.expect("an answer");
    assert_eq!(up.0, 200, "{}", up.1);
    assert!(up.1.contains("sms_produced_total 0"), "{}", up.1);

    redis.container.stop().await.expect("Redis stops");
    let (status, body) = fetch(url).await.expect("an answer");
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("cannot read Redis: "), "{body}");

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server stops on shutdown")
        .expect("no panic")
        .expect("served without an I/O error");
}
