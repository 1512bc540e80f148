//! The dashboard in a real browser: headless Chromium loads `/` of a running
//! `serve` (with an API token, passed after `#token=`), and the figures it
//! shows must be those `/api/v1/stats` gives; its screenshot is saved to
//! `target/dashboard.png`. Its requeue button's endpoint is checked too.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::http::Server;
use common::{RunningSender, all_settled, opened_queue, send_settings, start_redis, wait_until};
use serde_json::{Value, json};
use sms_alerts::settings::ServeSettings;
use tokio::process::Command;

const TOKEN: &str = "dash-t0ken";

/// Runs headless Chromium on `url` with `args`; its standard output. It
/// runs beside the server, which answers the page's requests meanwhile.
async fn chromium(url: &str, args: &[&str]) -> String {
    let run = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--virtual-time-budget=4000",
        ])
        .args(args)
        .arg(url)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("chromium ends within a minute")
        .expect(
            "chromium runs: `bash .ci/test` installs it (Debian package `chromium`), or \
             `apt-get install chromium`",
        );
    assert!(output.status.success(), "chromium failed: {output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The text of the element carrying `data-field="name"` in `dom`.
fn shown(dom: &str, name: &str) -> String {
    let marker = format!("data-field=\"{name}\"");
    let start = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no {marker} in the page"));
    let rest = &dom[start..];
    let text = &rest[rest.find('>').expect("tag ends") + 1..];
    text[..text.find('<').expect("text ends")].to_owned()
}

#[tokio::test]
async fn the_dashboard_shows_what_the_api_reports() {
    let redis = start_redis().await;
    let store = opened_queue(&redis.url, "dashboard", 2).await;
    let settings = ServeSettings {
        api_token: Some(TOKEN.to_owned()),
        ..ServeSettings::default()
    };
    let server = Server::start(&store, settings).await;
    let auth = ("Authorization", "Bearer dash-t0ken");
    let messages: Vec<Value> = (0..40)
        .map(|i| {
            json!({"phone": format!("+4915112{:06}", i), "message_body": format!("alert {i}"),
                   "transaction_id": format!("tx-{i}"), "customer_id": "c-7"})
        })
        .collect();
    let batch = json!({ "messages": messages }).to_string();
    let posted = server
        .post(&batch, &[("Content-Type", "application/json"), auth])
        .await;
    assert_eq!(posted.status, 201, "{posted:?}");

    // Half the sends fail and one attempt is all they get: dead letters.
    let mut sender_settings = send_settings("dash-a", 1, 0.5);
    sender_settings.max_attempts = 1;
    let sender = RunningSender::start(&store, sender_settings);
    wait_until("every message is settled", Duration::from_secs(30), || {
        all_settled(&store, 40)
    })
    .await;
    sender.stop().await;

    let stats = server
        .request("GET", "/api/v1/stats", None, &[auth])
        .await
        .body;
    let dead = server
        .request("GET", "/api/v1/dead", None, &[auth])
        .await
        .body;
    assert!(
        stats["dead"].as_u64() > Some(0),
        "some messages died: {stats}"
    );
    let url = format!("{}/#token={TOKEN}", server.base);
    let dom = chromium(&url, &["--dump-dom"]).await;
    assert!(
        dom.contains("data-loaded=\"true\""),
        "the page read the API: {dom}"
    );
    for field in [
        "produced",
        "sent",
        "failed",
        "dead",
        "pending",
        "duplicates",
        "live_senders",
    ] {
        assert_eq!(
            shown(&dom, field),
            stats[field].to_string(),
            "{field}: the page against /api/v1/stats"
        );
    }
    assert_eq!(shown(&dom, "state"), "sound");
    let newest = dead["dead_letters"][0]["id"]
        .as_str()
        .expect("a dead letter");
    assert!(
        dom.contains(newest),
        "the newest dead letter {newest} is listed"
    );
    assert!(dom.contains("tx-"), "dead letters show the transaction id");
    assert!(dom.contains("dash-a"), "the sender is listed");

    let screenshot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let shot = format!("--screenshot={}", screenshot.display());
    chromium(&url, &[&shot, "--window-size=1280,1100"]).await;
    let png = std::fs::read(&screenshot).expect("the screenshot is saved");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "a real screenshot"
    );
    println!("dashboard screenshot: {}", screenshot.display());

    // The requeue button's endpoint checks what it is given, then moves the
    // dead letters back.
    let bogus = server
        .request(
            "POST",
            "/api/v1/dead/requeue",
            Some(r#"{"reason": "bogus"}"#.to_owned()),
            &[auth],
        )
        .await;
    assert_eq!(
        (bogus.status, bogus.body["field"].as_str()),
        (400, Some("reason"))
    );
    let requeued = server
        .request(
            "POST",
            "/api/v1/dead/requeue",
            Some(r#"{"reason": "max_attempts"}"#.to_owned()),
            &[auth],
        )
        .await;
    assert_eq!(requeued.status, 200, "{requeued:?}");
    assert_eq!(requeued.body["requeued"], stats["dead"]);
    server.stop().await;
}
