//! A simulated gateway outage (`--outage-every`, `--outage-for`): every
//! attempt fails while the gateway is down, and the messages go through once
//! it is back.

mod common;

use std::time::Duration;

use common::{
    RunningSender, all_settled, produce_n, send_settings, start_redis, store, unique_prefix,
    wait_until,
};
use sms_alerts::settings::{Outage, OutageSchedule};
use sms_alerts::stats::Snapshot;

#[tokio::test]
async fn attempts_fail_while_the_gateway_is_down_and_pass_after() {
    let redis = start_redis().await;
    let store = store(&redis.url, &unique_prefix("outage")).await;
    produce_n(&store, 11, 1000).await;
    // Down half of every second: a run of over a second meets an outage
    // whenever it starts. No failure is drawn otherwise.
    let mut settings = send_settings("out-a", 10, 0.0);
    settings.concurrency = 10;
    settings.max_attempts = 100;
    settings.outage = Some(Outage::Every(OutageSchedule {
        every: Duration::from_secs(1),
        down: Duration::from_millis(500),
    }));
    let sender = RunningSender::start(&store, settings);
    wait_until("every message is settled", Duration::from_secs(60), || {
        all_settled(&store, 1000)
    })
    .await;
    sender.stop().await;
    let snapshot = Snapshot::read(&store).await.expect("reads");
    assert_eq!(
        (snapshot.sent, snapshot.dead),
        (1000, 0),
        "all sent once the gateway was back"
    );
    assert!(snapshot.failed > 0, "attempts failed during the outages");
}
