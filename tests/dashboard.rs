//! The dashboard in a real browser: headless Chromium loads `/` of a running
//! `serve` (with an API token, passed after `#token=`) over a queue of two
//! channels, and the figures it shows, the totals and each channel's row,
//! must be those `/api/v1/stats` gives; its screenshot is saved to
//! `target/tmp/dashboard.png`. Its requeue button's endpoint is checked too.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::http::Server;
use common::{
    RunningSender, all_settled, queue, send_settings, start_redis, unique_prefix, wait_until,
};
use serde_json::{Value, json};
use sms_alerts::channel::Channel;
use sms_alerts::settings::{QueueSettings, ServeSettings};
use sms_alerts::stats::Snapshot;
use sms_alerts::store::{QueueOptions, Store};
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
    text_at(dom, &format!("data-field=\"{name}\""))
}

/// The text of the element with `id="name"` in `dom`.
fn text_of_id(dom: &str, name: &str) -> String {
    text_at(dom, &format!("id=\"{name}\""))
}

/// The answer to a requeue request of `body`.
async fn requeue(server: &Server, body: &str, auth: (&str, &str)) -> common::http::Answer {
    server
        .request(
            "POST",
            "/api/v1/dead/requeue",
            Some(body.to_owned()),
            &[("Content-Type", "application/json"), auth],
        )
        .await
}

/// The text of the element whose tag holds `marker`.
fn text_at(dom: &str, marker: &str) -> String {
    let start = dom
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker} in the page"));
    let rest = &dom[start..];
    let text = &rest[rest.find('>').expect("tag ends") + 1..];
    text[..text.find('<').expect("text ends")].to_owned()
}

/// The texts of the cells of the row carrying `data-channel="name"` in `dom`.
fn channel_row(dom: &str, name: &str) -> Vec<String> {
    row_of(dom, "channel", name)
}

/// The texts of the cells of the row carrying `data-<attribute>="name"`.
fn row_of(dom: &str, attribute: &str, name: &str) -> Vec<String> {
    let marker = format!("data-{attribute}=\"{name}\"");
    let start = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no {marker} in the page"));
    let row = &dom[start..];
    let row = &row[..row.find("</tr>").expect("row ends")];
    row.split("<td>")
        .skip(1)
        .map(|cell| cell[..cell.find("</td>").expect("cell ends")].to_owned())
        .collect()
}

/// Whether `cell` shows `value` as the page does: `-` for none, a mark when
/// done, whole numbers as they are, others to two places.
fn shows(cell: &str, value: &Value) -> bool {
    match value {
        Value::Null => cell == "-",
        Value::Bool(done) => cell == if *done { "\u{2713}" } else { "" },
        Value::Number(n) if n.is_u64() => cell == n.to_string(),
        Value::Number(n) => cell
            .parse::<f64>()
            .is_ok_and(|shown| (shown - n.as_f64().unwrap_or(f64::NAN)).abs() < 0.0051),
        _ => false,
    }
}

/// A queue of two partitions and two channels, `sms` then `email`, opened
/// on `sms`.
async fn two_channel_queue(url: &str) -> Store {
    let settings = QueueSettings {
        group: "sms".to_owned(),
        ..queue(url, &unique_prefix("dashboard"))
    };
    let connected = Store::connect(&settings).await.expect("connects");
    let channel = |spec: &str| Channel::parse(spec).expect("a valid channel");
    let options = QueueOptions {
        partitions: Some(2),
        channels: vec![channel("sms"), channel("email")],
        ..QueueOptions::default()
    };
    connected
        .migrate(&options)
        .await
        .expect("the queue is created");
    connected.open().await.expect("opens")
}

#[tokio::test]
async fn the_dashboard_shows_what_the_api_reports() {
    let redis = start_redis().await;
    let store = two_channel_queue(&redis.url).await;
    let settings = ServeSettings {
        api_token: Some(TOKEN.to_owned()),
        ..ServeSettings::default()
    };
    let server = Server::start(&store, settings).await;
    let auth = ("Authorization", "Bearer dash-t0ken");
    // Every third message has an e-mail address; the email channel skips
    // the others.
    let messages: Vec<Value> = (0..40)
        .map(|i| {
            let mut message = json!({"phone": format!("+4915112{:06}", i),
                "message_body": format!("alert {i}"), "transaction_id": format!("tx-{i}"),
                "customer_id": "c-7"});
            if i % 3 == 0 {
                message["email"] = json!(format!("user{i}@example.org"));
                message["email_body"] = json!(format!("mail text {i}"));
            }
            message
        })
        .collect();
    let batch = json!({ "messages": messages }).to_string();
    let posted = server
        .post(&batch, &[("Content-Type", "application/json"), auth])
        .await;
    assert_eq!(posted.status, 201, "{posted:?}");

    // Half the sends fail and one attempt is all they get: dead letters, on
    // both channels. Each channel's senders go through a gateway of its own.
    let mut sender_settings = send_settings("dash-a", 1, 0.5);
    sender_settings.max_attempts = 1;
    sender_settings.gateway.name = "gw-sms".to_owned();
    let sender = RunningSender::start(&store, sender_settings);
    let email = store.for_channel("email").expect("an email channel");
    let mut mailer_settings = send_settings("dash-mail", 2, 0.5);
    mailer_settings.max_attempts = 1;
    mailer_settings.gateway.name = "gw-mail".to_owned();
    let mailer = RunningSender::start(&email, mailer_settings);
    wait_until(
        "every message is settled",
        Duration::from_secs(30),
        || async {
            let mailed = Snapshot::read(&store).await.is_ok_and(|s| {
                s.channels
                    .get("email")
                    .is_some_and(|c| c.pending == 0 && c.settled() == 40)
            });
            mailed && all_settled(&store, 40).await
        },
    )
    .await;
    sender.stop().await;
    mailer.stop().await;

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
    let channels = stats["channels"].as_object().expect("a channels object");
    assert_eq!(channels.len(), 2, "two channels: {stats}");
    assert!(
        channels["email"]["skipped"].as_u64() > Some(0),
        "the email channel skipped those without an address: {stats}"
    );
    let columns = [
        "to_settle",
        "sent",
        "failed",
        "dead",
        "skipped",
        "deferred",
        "pending",
        "lag",
        "avg_send_ms",
        "p50_ms",
        "p99_ms",
        "done",
    ];
    for (name, report) in channels {
        let cells = channel_row(&dom, name);
        assert_eq!(cells.len(), columns.len() + 1, "{name}'s row: {cells:?}");
        assert_eq!(&cells[0], name);
        for (column, cell) in columns.iter().zip(&cells[1..]) {
            assert!(
                shows(cell, &report[column]),
                "channel {name}, {column}: the page shows {cell:?}, /api/v1/stats has {}",
                report[column]
            );
        }
    }
    let newest = dead["dead_letters"][0]["id"]
        .as_str()
        .expect("a dead letter");
    assert!(
        dom.contains(newest),
        "the newest dead letter {newest} is listed"
    );
    assert!(dom.contains("tx-"), "dead letters show the transaction id");
    assert!(dom.contains("dash-a"), "the sender is listed");

    // Gateways and senders, each with its own send-time percentiles, as
    // /api/v1/stats has them; a gateway's figures are its senders' sums.
    let senders = stats["senders"].as_array().expect("senders");
    let gateways = stats["gateways"].as_array().expect("gateways");
    let gateway_columns = [
        "sent",
        "failed",
        "dead",
        "pending",
        "rate_per_s",
        "p50_ms",
        "p99_ms",
    ];
    for (gateway, channel) in [("gw-sms", "sms"), ("gw-mail", "email")] {
        let cells = row_of(&dom, "gateway", gateway);
        let of_gateway: Vec<&Value> = senders.iter().filter(|s| s["gateway"] == gateway).collect();
        assert_eq!(of_gateway.len(), 1, "{gateway}'s sender: {stats}");
        let sender = of_gateway[0];
        let report = gateways
            .iter()
            .find(|g| g["name"] == gateway)
            .unwrap_or_else(|| panic!("{gateway} in {stats}"));
        assert_eq!(cells[..3], [gateway, channel, "1"], "{gateway}: {cells:?}");
        for (column, cell) in gateway_columns.iter().zip(&cells[3..]) {
            assert!(
                shows(cell, &report[column]),
                "{gateway} {column}: the page shows {cell:?}, /api/v1/stats has {}",
                report[column]
            );
            assert_eq!(
                report[column], sender[column],
                "{gateway} {column}: {stats}"
            );
        }
        assert!(
            report["p50_ms"].as_f64() > Some(0.0)
                && report["p99_ms"].as_f64() >= report["p50_ms"].as_f64(),
            "{gateway} has percentiles: {report}"
        );
        let name = sender["name"].as_str().expect("a name");
        let cells = row_of(&dom, "sender", &format!("{channel}/{name}"));
        for (column, cell) in ["p50_ms", "p99_ms"].iter().zip(&cells[9..11]) {
            assert!(
                shows(cell, &sender[column]),
                "sender {name} {column}: the page shows {cell:?}, /api/v1/stats has {}",
                sender[column]
            );
        }
    }
    let not_closed = senders
        .iter()
        .filter(|s| s["breaker"].as_str().is_some_and(|b| b != "closed"))
        .count();
    assert_eq!(
        text_of_id(&dom, "open-breakers"),
        not_closed.to_string(),
        "breakers not closed"
    );
    // Dead letters by reason, per channel: both channels lost some.
    for (name, report) in channels {
        let died = report["dead_by_reason"]["max_attempts"]
            .as_u64()
            .unwrap_or(0);
        assert!(died > 0, "channel {name} has dead letters: {stats}");
        let cells = row_of(&dom, "reason", &format!("{name}/max_attempts"));
        assert_eq!(
            cells[..3],
            [name.as_str(), "max_attempts", &died.to_string()]
        );
    }
    let dead_channels: Vec<&str> = dead["dead_letters"]
        .as_array()
        .expect("dead letters")
        .iter()
        .filter_map(|letter| letter["channel"].as_str())
        .collect();
    assert!(
        dead_channels.contains(&"sms") && dead_channels.contains(&"email"),
        "dead letters of both channels, each named: {dead_channels:?}"
    );
    // Each lists the address and the text its channel sent: the e-mail
    // channel's own text for e-mail.
    for letter in dead["dead_letters"].as_array().expect("dead letters") {
        let (address, text) = if letter["channel"] == "email" {
            (&letter["email"], &letter["email_body"])
        } else {
            (&letter["recipient"], &letter["body"])
        };
        assert!(
            letter["address"] == *address && letter["text"] == *text && text.is_string(),
            "{letter}"
        );
    }
    let mailed = dead["dead_letters"]
        .as_array()
        .and_then(|letters| letters.iter().find(|l| l["channel"] == "email"))
        .expect("an e-mail dead letter");
    // `?channel=` lists one channel's dead letters alone.
    let mails = server
        .request("GET", "/api/v1/dead?channel=email", None, &[auth])
        .await;
    let letters = mails.body["dead_letters"].as_array().expect("dead letters");
    assert!(
        !letters.is_empty() && letters.iter().all(|l| l["channel"] == "email"),
        "{mails:?}"
    );
    let text = mailed["text"].as_str().expect("a text");
    assert!(
        text.starts_with("mail text") && dom.contains(&format!("<td>{text}</td>")),
        "the page shows the e-mail text {text}"
    );

    let screenshot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let shot = format!("--screenshot={}", screenshot.display());
    chromium(&url, &[&shot, "--window-size=1280,1250"]).await;
    let png = std::fs::read(&screenshot).expect("the screenshot is saved");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "a real screenshot"
    );
    println!("dashboard screenshot: {}", screenshot.display());

    // The requeue button's endpoint checks what it is given, then moves the
    // dead letters back.
    let bogus = requeue(&server, r#"{"reason": "bogus"}"#, auth).await;
    assert_eq!(
        (bogus.status, bogus.body["field"].as_str()),
        (400, Some("reason"))
    );
    let requeued = requeue(&server, r#"{"reason": "max_attempts"}"#, auth).await;
    assert_eq!(requeued.status, 200, "{requeued:?}");
    assert_eq!(requeued.body["requeued"], stats["dead"]);
    let unknown = requeue(
        &server,
        r#"{"reason": "max_attempts", "channel": "fax"}"#,
        auth,
    )
    .await;
    assert_eq!(
        (unknown.status, unknown.body["value"].as_str()),
        (400, Some("fax")),
        "{unknown:?}"
    );
    let mails = requeue(
        &server,
        r#"{"reason": "max_attempts", "channel": "email"}"#,
        auth,
    )
    .await;
    assert_eq!(mails.status, 200, "{mails:?}");
    assert_eq!(
        mails.body["requeued"], channels["email"]["dead"],
        "the email channel's own dead letters"
    );
    server.stop().await;
}
