//! Gateways: a throughput cap shared by every sender of a gateway, a
//! circuit breaker that stops attempts while the gateway is down, answers
//! of "throttled" and waits that spend no attempt, alert expiry, and
//! operators pausing a channel.

mod common;

use std::time::{Duration, Instant};

use common::{RunningSender, send_settings, start_redis, unique_prefix, wait_until};
use sms_alerts::audit;
use sms_alerts::channel::Channel;
use sms_alerts::settings::{BreakerSettings, GatewaySettings, Outage, SendSettings};
use sms_alerts::stats::{SenderSnapshot, Snapshot};
use sms_alerts::store::{QueueOptions, Store};

const DEADLINE: Duration = Duration::from_secs(60);

async fn snapshot(store: &Store) -> Snapshot {
    Snapshot::read(store).await.expect("snapshot")
}

fn through(
    gateway: &str,
    mut settings: SendSettings,
    tune: impl FnOnce(&mut GatewaySettings),
) -> SendSettings {
    settings.gateway.name = gateway.to_owned();
    tune(&mut settings.gateway);
    settings
}

#[tokio::test]
async fn three_senders_share_one_gateway_cap() {
    const RATE: u32 = 400;
    const TOTAL: u64 = 2400;
    let redis = start_redis().await;
    let store = common::opened_queue(&redis.url, "cap", 2).await;
    common::produce_n(&store, 2, TOTAL).await;
    let started = Instant::now();
    let senders: Vec<RunningSender> = (0..3)
        .map(|i| {
            let settings = through("shared", send_settings(&format!("s{i}"), 2, 0.0), |g| {
                g.rate = Some(RATE);
            });
            RunningSender::start(&store, settings)
        })
        .collect();
    wait_until("every message is sent", DEADLINE, || async {
        snapshot(&store).await.is_done()
    })
    .await;
    let took = started.elapsed();
    let mut per_sender = Vec::new();
    for sender in senders {
        per_sender.push(sender.stop().await.flushed.sent);
    }
    let rate = TOTAL as f64 / took.as_secs_f64();
    println!(
        "{TOTAL} messages through a {RATE}/s gateway shared by 3 senders in {took:.2?}: \
         {rate:.0}/s ({:.1}% of the cap); per sender {per_sender:?}",
        100.0 * rate / f64::from(RATE)
    );
    // The cap is never exceeded: the bucket holds a tenth of a second and
    // each sender at most as much again.
    let most_early = 4 * u64::from(RATE / 10);
    let shortest = Duration::from_secs_f64((TOTAL - most_early) as f64 / f64::from(RATE));
    assert!(
        took >= shortest,
        "{TOTAL} sent in {took:?}, faster than the cap allows ({shortest:?})"
    );
    assert!(
        per_sender.iter().all(|&n| n > 0),
        "every sender had its share: {per_sender:?}"
    );
}

/// A queue of `count` messages sent by `senders` senders sharing a gateway
/// of `rate`/s that goes down once, 1 s after they start, for `down`, with
/// --max-attempts 3: returns the figures once every message is settled,
/// and the breaker states the first sender published meanwhile.
async fn through_an_outage(
    redis_url: &str,
    count: u64,
    senders: usize,
    rate: u32,
    down: Duration,
    breaker: Option<BreakerSettings>,
) -> (Snapshot, Vec<String>) {
    let store = common::opened_queue(redis_url, "outage", 1).await;
    common::produce_n(&store, 3, count).await;
    let running: Vec<RunningSender> = (0..senders)
        .map(|i| {
            let mut settings = through("flaky", send_settings(&format!("s{i}"), 5, 0.0), |g| {
                g.rate = Some(rate);
                g.breaker = breaker;
            });
            settings.max_attempts = 3;
            settings.concurrency = 16;
            settings.outage = Some(Outage::Once {
                after: Duration::from_secs(1),
                down,
            });
            RunningSender::start(&store, settings)
        })
        .collect();
    let seen = std::sync::Mutex::new(Vec::<String>::new());
    wait_until("every message is settled", DEADLINE, || async {
        if let Some(s) = SenderSnapshot::read_all(&store)
            .await
            .expect("senders")
            .first()
        {
            let mut seen = seen.lock().unwrap();
            if seen.last() != Some(&s.breaker) {
                seen.push(s.breaker.clone());
            }
        }
        snapshot(&store).await.is_done()
    })
    .await;
    let seen = seen.into_inner().unwrap();
    for sender in running {
        sender.stop().await;
    }
    let report = audit::run(&store, 500).await.expect("audit");
    assert!(report.is_consistent(), "{}", report.to_text());
    (snapshot(&store).await, seen)
}

#[tokio::test]
async fn an_open_breaker_spends_no_attempts_while_the_gateway_is_down() {
    let redis = start_redis().await;
    let breaker = BreakerSettings {
        failures: 5,
        cooldown: Duration::from_secs(1),
        max_cooldown: Duration::from_secs(4),
        probes: 3,
    };
    // Three senders probing the same dead gateway for 10 s: the oldest
    // messages are every probe's, and still none may die of it.
    let (with, states) = through_an_outage(
        &redis.url,
        4500,
        3,
        300,
        Duration::from_secs(10),
        Some(breaker),
    )
    .await;
    println!(
        "with a breaker: dead {}, failed {}, states {states:?}",
        with.dead, with.failed
    );
    assert_eq!(
        with.dead_max_attempts, 0,
        "no message died of the outage: {with:?}"
    );
    assert_eq!(with.sent, 4500);
    assert!(with.failed > 0, "probes and the sends in flight failed");
    assert!(
        states.iter().any(|s| s == "open"),
        "the breaker was seen open: {states:?}"
    );
    assert_eq!(
        states.last().map(String::as_str),
        Some("closed"),
        "and closed again"
    );

    // A shorter outage without a breaker burns every attempt.
    let (without, _) =
        through_an_outage(&redis.url, 1500, 1, 500, Duration::from_secs(3), None).await;
    println!("without: dead {}, failed {}", without.dead, without.failed);
    assert!(
        without.dead_max_attempts > 0,
        "without a breaker messages die: {without:?}"
    );
}

#[tokio::test]
async fn throttled_answers_spend_no_attempt() {
    let redis = start_redis().await;
    let store = common::opened_queue(&redis.url, "throttled", 1).await;
    common::produce_n(&store, 4, 500).await;
    let mut settings = through("busy", send_settings("s1", 1, 0.0), |g| {
        g.throttle_rate = 0.5
    });
    settings.max_attempts = 1;
    let sender = RunningSender::start(&store, settings);
    wait_until("every message is sent", DEADLINE, || async {
        snapshot(&store).await.is_done()
    })
    .await;
    sender.stop().await;
    let done = snapshot(&store).await;
    assert_eq!((done.sent, done.dead), (500, 0), "{done:?}");
    assert!(
        done.deferred > 200,
        "half the answers were throttled: {}",
        done.deferred
    );
    let report = audit::run(&store, 100).await.expect("audit");
    assert!(report.is_consistent(), "{}", report.to_text());
}

#[tokio::test]
async fn alerts_older_than_their_limit_go_dead_as_expired() {
    let redis = start_redis().await;
    let store = common::opened_queue(&redis.url, "expired", 1).await;
    common::produce_n(&store, 5, 100).await;
    let produced = Instant::now();
    wait_until(
        "the messages are older than the limit",
        DEADLINE,
        || async { produced.elapsed() > Duration::from_millis(300) },
    )
    .await;
    let settings = through("late", send_settings("s1", 1, 0.0), |g| {
        g.expire_after = Some(Duration::from_millis(250));
    });
    let sender = RunningSender::start(&store, settings);
    wait_until("every message is settled", DEADLINE, || async {
        snapshot(&store).await.is_done()
    })
    .await;
    sender.stop().await;
    let done = snapshot(&store).await;
    assert_eq!(
        (done.sent, done.dead_expired, done.dead),
        (0, 100, 100),
        "{done:?}"
    );
    let report = audit::run(&store, 100).await.expect("audit");
    assert!(report.is_consistent(), "{}", report.to_text());
    assert_eq!(report.dead_by_reason.get("expired"), Some(&100));
}

#[tokio::test]
async fn a_paused_channel_sends_nothing_until_resumed() {
    let redis = start_redis().await;
    let options = QueueOptions {
        channels: vec![
            Channel::parse("sms").unwrap(),
            Channel::parse("email").unwrap(),
        ],
        ..QueueOptions::default()
    };
    let store = common::store_with(&redis.url, &unique_prefix("pause"), &options)
        .await
        .open()
        .await
        .expect("opens");
    let email = store.for_channel("email").expect("email");
    assert!(email.operator().set_paused(true).await.expect("pauses"));
    assert!(
        !email.operator().set_paused(true).await.expect("pauses"),
        "once"
    );
    assert!(email.inspector().is_paused().await.expect("reads"));
    assert!(
        !store.inspector().is_paused().await.expect("reads"),
        "sms goes on"
    );
    common::produce_n(&store, 6, 300).await;
    let sms = RunningSender::start(&store, send_settings("sms-1", 1, 0.0));
    let mail = RunningSender::start(&email, send_settings("mail-1", 1, 0.0));
    wait_until("the SMS channel is done", DEADLINE, || async {
        let s = snapshot(&store).await;
        s.channels["sms"].settled() == 300
    })
    .await;
    let paused = snapshot(&store).await;
    assert_eq!(
        paused.channels["email"].sent, 0,
        "nothing sent while paused"
    );
    assert_eq!(paused.channels["email"].attempts, 0, "nor attempted");
    assert!(email.operator().set_paused(false).await.expect("resumes"));
    wait_until("the e-mail channel is done too", DEADLINE, || async {
        snapshot(&store).await.is_done()
    })
    .await;
    mail.stop().await;
    sms.stop().await;
    let done = snapshot(&store).await;
    assert_eq!(done.channels["email"].settled(), 300);
    assert_eq!(done.channels["email"].dead, 0);
}

#[tokio::test]
async fn throttled_probes_never_jam_a_half_open_breaker() {
    let redis = start_redis().await;
    let store = common::opened_queue(&redis.url, "jam", 1).await;
    common::produce_n(&store, 8, 600).await;
    let mut settings = through("busy-and-flaky", send_settings("s1", 5, 0.0), |g| {
        g.rate = Some(300);
        g.throttle_rate = 0.5;
        g.breaker = Some(BreakerSettings {
            failures: 3,
            cooldown: Duration::from_millis(200),
            max_cooldown: Duration::from_millis(400),
            probes: 3,
        });
    });
    settings.max_attempts = 5;
    settings.outage = Some(Outage::Once {
        after: Duration::from_millis(500),
        down: Duration::from_secs(1),
    });
    let sender = RunningSender::start(&store, settings);
    wait_until(
        "every message is sent after the outage",
        DEADLINE,
        || async { snapshot(&store).await.is_done() },
    )
    .await;
    sender.stop().await;
    let done = snapshot(&store).await;
    assert_eq!((done.sent, done.dead), (600, 0), "{done:?}");
    let report = audit::run(&store, 100).await.expect("audit");
    assert!(report.is_consistent(), "{}", report.to_text());
}
