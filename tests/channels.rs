//! Channels: every message goes out on each channel of the queue (SMS and
//! e-mail), each settling it on its own books. A channel whose senders are
//! down only lags; its dead letters go back to it alone; a channel added
//! later begins where it is told to.

mod common;

use std::time::Duration;

use common::{
    KillOnDrop, RunningSender, send_settings, spawn_sender_process, start_redis, terminate,
    unique_prefix, wait_exit, wait_until,
};
use serde_json::json;
use sms_alerts::audit;
use sms_alerts::channel::Channel;
use sms_alerts::dead::{self, Selection};
use sms_alerts::settings::ServeSettings;
use sms_alerts::stats::Snapshot;
use sms_alerts::store::{ChannelStart, QueueOptions, Store};

const DEADLINE: Duration = Duration::from_secs(60);

fn sms_and_email() -> Vec<Channel> {
    vec![
        Channel::parse("sms").expect("sms"),
        Channel::parse("email").expect("email"),
    ]
}

/// A queue with `channels` over `partitions` partitions, opened.
async fn queue_with(url: &str, test: &str, channels: Vec<Channel>, partitions: u32) -> Store {
    let options = QueueOptions {
        channels,
        partitions: Some(partitions),
        ..QueueOptions::default()
    };
    common::store_with(url, &unique_prefix(test), &options)
        .await
        .open()
        .await
        .expect("opens")
}

/// Entries of the queue's streams with no e-mail address.
async fn without_email(url: &str, store: &Store) -> u64 {
    let mut conn = common::raw(url).await;
    let mut count = 0;
    for partition in store.partitions() {
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(partition.keys().messages())
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .expect("XRANGE");
        count += entries
            .iter()
            .filter(|(_, fields)| !fields.iter().any(|(name, _)| name == "email"))
            .count() as u64;
    }
    count
}

/// A queue of the one default channel, opened, with 20 messages.
async fn twenty_on_one_channel(url: &str, test: &str) -> Store {
    let store = common::store_with(url, &unique_prefix(test), &QueueOptions::default())
        .await
        .open()
        .await
        .expect("opens");
    common::produce_n(&store, 5, 20).await;
    store
}

async fn snapshot(store: &Store) -> Snapshot {
    Snapshot::read(store).await.expect("snapshot")
}

#[tokio::test]
async fn each_channel_settles_every_message_and_one_down_only_lags() {
    let redis = start_redis().await;
    let store = queue_with(&redis.url, "fanout", sms_and_email(), 2).await;
    let email = store.for_channel("email").expect("email channel");
    assert_eq!(
        store.channel().name,
        "sms",
        "the first channel is the default"
    );
    common::produce_n(&store, 11, 3000).await;
    let no_address = without_email(&redis.url, &store).await;
    assert!(
        (150..=450).contains(&no_address),
        "about one message in ten has no e-mail address: {no_address}"
    );

    let sms_sender = RunningSender::start(&store, send_settings("sms-1", 1, 0.1));
    // A process of its own, to be killed as a crash would: what it holds
    // stays pending under its name.
    let mail_args = [
        "--channel",
        "email",
        "--mean",
        "1ms",
        "--failure-rate",
        "0.1",
        "--lease",
        "2s",
        "--retry-backoff",
        "50ms",
        "--max-attempts",
        "3",
        "--seed",
        "7",
    ];
    let prefix = store.prefix().to_owned();
    let mut email_sender = KillOnDrop(spawn_sender_process(
        &redis.url, &prefix, "mail-1", &mail_args,
    ));
    wait_until("the e-mail channel has sent some", DEADLINE, || async {
        snapshot(&email).await.sent >= 300
    })
    .await;
    email_sender.kill().expect("SIGKILL");
    email_sender.wait().expect("reaped");
    wait_until("the SMS channel is done", DEADLINE, || async {
        let s = snapshot(&store).await;
        s.pending == 0 && s.settled() == 3000
    })
    .await;
    let lagging = snapshot(&store).await;
    let mail = &lagging.channels["email"];
    assert!(!lagging.is_done(), "not done while e-mail lags");
    assert!(
        mail.settled() < 3000 && mail.lag.unwrap_or(0) + mail.pending > 0,
        "the e-mail channel lags, visibly: {mail:?}"
    );
    assert!(lagging.channels["sms"].settled() == 3000);

    // Restarted under the same name, it resumes its own pending work.
    let mut email_sender = KillOnDrop(spawn_sender_process(
        &redis.url, &prefix, "mail-1", &mail_args,
    ));
    wait_until("both channels are done", DEADLINE, || async {
        snapshot(&store).await.is_done()
    })
    .await;
    terminate(&email_sender);
    assert!(wait_exit(&mut email_sender, DEADLINE).await.success());
    sms_sender.stop().await;

    let done = snapshot(&store).await;
    for (name, channel) in &done.channels {
        assert_eq!(
            channel.sent + channel.dead + channel.skipped,
            3000,
            "channel {name}: {channel:?}"
        );
        assert!(channel.failed > 0, "channel {name} failed some attempts");
    }
    assert_eq!(done.channels["sms"].skipped, 0);
    assert_eq!(
        done.channels["email"].skipped, no_address,
        "e-mail skips exactly the messages without an address"
    );
    let report = audit::run(&store, 500).await.expect("audit");
    assert!(report.is_consistent(), "{}", report.to_text());
    assert_eq!(report.channels.len(), 2, "{}", report.to_text());
    for (name, channel) in &report.channels {
        assert!(
            channel.is_consistent(),
            "channel {name}: {}",
            channel.to_text()
        );
        assert_eq!(channel.produced, 3000);
    }
}

#[tokio::test]
async fn a_requeued_dead_letter_goes_back_to_its_channel_alone() {
    let redis = start_redis().await;
    let store = queue_with(&redis.url, "requeue", sms_and_email(), 1).await;
    let email = store.for_channel("email").expect("email channel");
    common::produce_n(&store, 5, 200).await;
    let mut failing = send_settings("mail-bad", 0, 1.0);
    failing.max_attempts = 1;
    let sms_sender = RunningSender::start(&store, send_settings("sms-1", 0, 0.0));
    let bad = RunningSender::start(&email, failing);
    wait_until(
        "every message is settled on both channels",
        DEADLINE,
        || async { snapshot(&store).await.is_done() },
    )
    .await;
    bad.stop().await;
    let before = snapshot(&store).await;
    let dead_mail = before.channels["email"].dead;
    assert!(dead_mail > 150, "e-mails went dead: {dead_mail}");
    assert_eq!(before.channels["sms"].dead, 0);

    let requeued = dead::requeue(&email, &Selection::Reason("max_attempts".into()))
        .await
        .expect("requeues");
    assert_eq!(requeued.requeued, dead_mail);
    let good = RunningSender::start(&email, send_settings("mail-good", 0, 0.0));
    wait_until("the requeued e-mails are sent", DEADLINE, || async {
        snapshot(&store).await.is_done()
    })
    .await;
    good.stop().await;
    sms_sender.stop().await;

    let after = snapshot(&store).await;
    let (sms, mail) = (&after.channels["sms"], &after.channels["email"]);
    assert_eq!(sms.sent, 200, "no SMS went out twice");
    assert_eq!(
        sms.skipped, dead_mail,
        "the SMS channel skipped the requeued e-mails"
    );
    assert_eq!(mail.sent, dead_mail, "the requeued e-mails went out");
    assert_eq!(after.produced, 200 + dead_mail);
    let report = audit::run(&store, 100).await.expect("audit");
    assert!(report.is_consistent(), "{}", report.to_text());
}

#[tokio::test]
async fn a_channel_added_later_begins_where_it_is_told() {
    let redis = start_redis().await;
    let prefix = unique_prefix("added");
    let first = common::store_with(&redis.url, &prefix, &QueueOptions::default()).await;
    let store = first.open().await.expect("opens");
    assert_eq!(store.channels().len(), 1);
    common::produce_n(&store, 3, 100).await;

    let add = |channel: &str, channel_start| QueueOptions {
        channels: vec![Channel::parse(channel).expect("channel")],
        channel_start,
        ..QueueOptions::default()
    };
    let (_, _, identity) = store
        .migrate(&add("email", ChannelStart::End))
        .await
        .expect("adds email");
    assert_eq!(identity.added_channels, ["email"]);
    let (_, _, identity) = store
        .migrate(&add("relay:email", ChannelStart::Beginning))
        .await
        .expect("adds relay");
    assert_eq!(identity.added_channels, ["relay"]);
    let names: Vec<String> = identity.channels.iter().map(|c| c.to_string()).collect();
    assert_eq!(names, ["sms:sms", "email:email", "relay:email"]);
    let refused = store
        .migrate(&add("email:sms", ChannelStart::End))
        .await
        .expect_err("a channel keeps its kind");
    assert!(refused.to_string().contains("email"), "{refused}");

    let store = store.open().await.expect("reopens");
    common::produce_n(&store, 4, 50).await;
    let senders: Vec<RunningSender> = ["sms", "email", "relay"]
        .into_iter()
        .map(|name| {
            let channel = store.for_channel(name).expect("channel");
            RunningSender::start(&channel, send_settings(&format!("{name}-1"), 0, 0.0))
        })
        .collect();
    wait_until("every channel is done", DEADLINE, || async {
        snapshot(&store).await.is_done()
    })
    .await;
    for sender in senders {
        sender.stop().await;
    }
    let done = snapshot(&store).await;
    let settled = |name: &str| done.channels[name].settled();
    assert_eq!(settled("sms"), 150);
    assert_eq!(settled("email"), 50, "email began after the first 100");
    assert_eq!(done.channels["email"].unseen, 100);
    assert_eq!(settled("relay"), 150, "relay began with the oldest message");
    // The first 100 were produced before any e-mail channel: no addresses.
    assert!(done.channels["relay"].skipped >= 100);
    let report = audit::run(&store, 100).await.expect("audit");
    assert!(report.is_consistent(), "{}", report.to_text());

    let twice = store
        .migrate(&add("sms", ChannelStart::End))
        .await
        .expect("sms is there already: nothing to add");
    assert_eq!(twice.2.added_channels, Vec::<String>::new());
    let unknown = store.for_channel("fax").expect_err("no such channel");
    assert!(unknown.to_string().contains("'fax'"), "{unknown}");
}

#[tokio::test]
async fn a_queue_from_before_channels_is_not_given_a_second_sms_channel() {
    let redis = start_redis().await;
    let prefix = unique_prefix("legacy");
    let settings = sms_alerts::store::QueueSettings {
        group: "senders".to_owned(),
        ..common::queue(&redis.url, &prefix)
    };
    let legacy = Store::connect(&settings).await.expect("connects");
    legacy
        .migrate(&QueueOptions::default())
        .await
        .expect("creates");
    let store = Store::connect(&common::queue(&redis.url, &prefix))
        .await
        .expect("connects");
    let refused = store
        .migrate(&QueueOptions {
            channels: sms_and_email(),
            ..QueueOptions::default()
        })
        .await
        .expect_err("sms would send every SMS again");
    assert!(
        refused.to_string().contains("'senders' sends sms already"),
        "{refused}"
    );
    let (_, _, identity) = store
        .migrate(&QueueOptions {
            channels: vec![
                Channel::parse("senders").unwrap(),
                Channel::parse("email").unwrap(),
            ],
            ..QueueOptions::default()
        })
        .await
        .expect("adds email beside senders");
    assert_eq!(identity.added_channels, ["email"]);
}

#[tokio::test]
async fn serve_adds_the_channels_a_queue_lacks_and_never_creates_one() {
    let redis = start_redis().await;
    let prefix = unique_prefix("ensure");
    let store = common::store_with(&redis.url, &prefix, &QueueOptions::default())
        .await
        .open()
        .await
        .expect("opens");
    common::produce_n(&store, 7, 40).await;
    let added = store.ensure_channels(&sms_and_email()).await.expect("adds");
    assert_eq!(added, ["email"]);
    let reopened = store.open().await.expect("reopens");
    assert_eq!(reopened.channels(), sms_and_email().as_slice());
    assert!(
        reopened
            .ensure_channels(&sms_and_email())
            .await
            .expect("checks")
            .is_empty()
    );
    let email = Snapshot::read(&reopened).await.expect("snapshot").channels["email"].clone();
    assert_eq!(
        (email.unseen, email.lag),
        (40, Some(0)),
        "it begins after the newest"
    );

    let nothing = Store::connect(&common::queue(&redis.url, &unique_prefix("none")))
        .await
        .expect("connects");
    assert!(nothing.open().await.is_err(), "no queue to add channels to");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_alone_goes_out_by_email_and_the_sms_channel_skips_it() {
    let redis = start_redis().await;
    let store = queue_with(&redis.url, "mail-only", sms_and_email(), 1).await;
    let server = common::http::Server::start(&store, ServeSettings::default()).await;
    // One SMS holds 100 characters; an e-mail's text, 1,000.
    let long = "m".repeat(1_000);
    let batch = json!({"messages": [
        {"email": "a@example.org", "message_body": long},
        {"phone": "+4915112345678", "email": "b@example.org", "message_body": "Flood",
         "email_body": long},
        {"phone": "+4915112345679", "message_body": "Flood"},
    ]})
    .to_string();
    let posted = server
        .post(&batch, &[("Content-Type", "application/json")])
        .await;
    assert_eq!(posted.status, 201, "{posted:?}");
    let sms = RunningSender::start(&store, send_settings("sms-1", 1, 0.0));
    let email = store.for_channel("email").expect("an email channel");
    let mailer = RunningSender::start(&email, send_settings("mail-1", 1, 0.0));
    wait_until("both channels settled all three", DEADLINE, || async {
        Snapshot::read(&store).await.is_ok_and(|s| {
            s.pending == 0
                && s.settled() == 3
                && s.channels
                    .get("email")
                    .is_some_and(|c| c.pending == 0 && c.settled() == 3)
        })
    })
    .await;
    sms.stop().await;
    mailer.stop().await;
    server.stop().await;

    let snapshot = Snapshot::read(&store).await.expect("reads");
    let mail = &snapshot.channels["email"];
    assert_eq!(
        (snapshot.sent, snapshot.skipped, snapshot.dead),
        (2, 1, 0),
        "SMS: the two with a phone number; the e-mail alone skipped"
    );
    assert_eq!(
        (mail.sent, mail.skipped, mail.dead),
        (2, 1, 0),
        "e-mail: the two with an address, long texts and all; none malformed"
    );
    let report = audit::run(&store, 100).await.expect("audit");
    assert!(report.is_consistent(), "{}", report.to_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_whose_counters_are_gone_is_refused_not_refilled() {
    let redis = start_redis().await;
    let store = queue_with(&redis.url, "lost-counters", sms_and_email(), 1).await;
    let counters = store.for_channel("email").expect("email").keys().stats();
    let mut conn = common::raw(&redis.url).await;
    let _: i64 = redis::cmd("DEL")
        .arg(&counters)
        .query_async(&mut conn)
        .await
        .expect("DEL");

    let wanted = [Channel::parse("backup:sms").expect("a channel")];
    let err = store
        .ensure_channels(&wanted)
        .await
        .expect_err("a group without its counters is damage");
    assert!(
        matches!(err, sms_alerts::store::StoreError::Damaged(_))
            && err.to_string().contains(&counters),
        "{err}"
    );
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&counters)
        .query_async(&mut conn)
        .await
        .expect("EXISTS");
    assert_eq!(exists, 0, "the counters were not made up anew");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_added_from_the_beginning_skips_the_requeued_copies() {
    let redis = start_redis().await;
    let store = twenty_on_one_channel(&redis.url, "requeue-then-add").await;
    // One attempt, always failing: all 20 dead, then requeued and sent.
    let mut hopeless = send_settings("hopeless", 0, 1.0);
    hopeless.max_attempts = 1;
    let sender = RunningSender::start(&store, hopeless);
    wait_until("all dead", DEADLINE, || async {
        snapshot(&store).await.dead == 20
    })
    .await;
    sender.stop().await;
    let requeued = dead::requeue(&store, &Selection::Reason("max_attempts".to_owned()))
        .await
        .expect("requeues");
    assert_eq!(requeued.requeued, 20);

    let options = QueueOptions {
        channels: vec![Channel::parse("backup:sms").expect("channel")],
        channel_start: ChannelStart::Beginning,
        ..QueueOptions::default()
    };
    store.migrate(&options).await.expect("adds backup");
    let store = store.open().await.expect("reopens");
    let backup = store.for_channel("backup").expect("backup");
    let sender = RunningSender::start(&backup, send_settings("backup-1", 0, 0.0));
    wait_until("the backup channel is done", DEADLINE, || async {
        snapshot(&store)
            .await
            .channels
            .get("backup")
            .is_some_and(|c| c.pending == 0 && c.settled() == 40)
    })
    .await;
    sender.stop().await;
    let backup = &snapshot(&store).await.channels["backup"];
    assert_eq!(
        (backup.sent, backup.skipped),
        (20, 20),
        "each alert once: the originals sent, the copies requeued for sms skipped"
    );
    let report = audit::run(&store, 100).await.expect("audit");
    assert!(report.is_consistent(), "{}", report.to_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_alone_that_died_is_requeued_whole() {
    let redis = start_redis().await;
    let store = queue_with(&redis.url, "mail-requeue", sms_and_email(), 1).await;
    let server = common::http::Server::start(&store, ServeSettings::default()).await;
    let text = "m".repeat(1_000);
    let posted = server
        .post(
            &json!({"email": "a@example.org", "message_body": text}).to_string(),
            &[("Content-Type", "application/json")],
        )
        .await;
    assert_eq!(posted.status, 201, "{posted:?}");
    server.stop().await;
    let email = store.for_channel("email").expect("an email channel");
    let mut down = send_settings("mail-down", 0, 1.0);
    down.max_attempts = 1;
    let sender = RunningSender::start(&email, down);
    wait_until("the e-mail died", DEADLINE, || async {
        snapshot(&store).await.channels["email"].dead == 1
    })
    .await;
    sender.stop().await;

    let report = dead::requeue(&email, &Selection::Reason("max_attempts".to_owned()))
        .await
        .expect("requeues");
    assert_eq!(
        (report.requeued, report.skipped.len()),
        (1, 0),
        "an e-mail alone is a message: {report:?}"
    );
    let sender = RunningSender::start(&email, send_settings("mail-up", 0, 0.0));
    wait_until("the e-mail went out", DEADLINE, || async {
        snapshot(&store).await.channels["email"].sent == 1
    })
    .await;
    sender.stop().await;
    let report = audit::run(&store, 100).await.expect("audit");
    assert!(report.is_consistent(), "{}", report.to_text());
}

/// A writer whose bytes the test reads while the monitor writes.
#[derive(Clone, Default)]
struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Shared {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("unpoisoned").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Shared {
    /// The JSON reports written so far.
    fn reports(&self) -> Vec<serde_json::Value> {
        let bytes = self.0.lock().expect("unpoisoned").clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_follows_a_channel_added_while_it_runs() {
    use sms_alerts::monitor::{self, MonitorOutcome, Sink};
    use sms_alerts::settings::MonitorSettings;
    use tokio_util::sync::CancellationToken;

    let redis = start_redis().await;
    let store = twenty_on_one_channel(&redis.url, "followed").await;
    let output = Shared::default();
    let settings = MonitorSettings {
        interval: Duration::from_millis(50),
        until_done: true,
        json: true,
        by_partition: false,
        alerts: Default::default(),
        metrics_addr: None,
    };
    let monitor = {
        let (store, mut output) = (store.clone(), output.clone());
        tokio::spawn(async move {
            let shutdown = CancellationToken::new();
            monitor::run(&store, &settings, Sink::Writer(&mut output), &shutdown).await
        })
    };
    wait_until("a first report", DEADLINE, || async {
        !output.reports().is_empty()
    })
    .await;

    // A channel from the beginning: it has the 20 to send as well.
    let backup = QueueOptions {
        channels: vec![Channel::parse("backup:sms").expect("a channel")],
        channel_start: ChannelStart::Beginning,
        ..QueueOptions::default()
    };
    store.migrate(&backup).await.expect("adds backup");
    let sender = RunningSender::start(&store, send_settings("sms-1", 0, 0.0));
    wait_until(
        "the monitor shows sms done, backup not",
        DEADLINE,
        || async {
            output.reports().iter().any(|report| {
                let channels = &report["channels"];
                channels["sms"]["done"] == true && channels["backup"]["done"] == false
            })
        },
    )
    .await;
    sender.stop().await;
    assert!(!monitor.is_finished(), "the backup channel has work left");

    let reopened = store.open().await.expect("reopens");
    let backup = reopened.for_channel("backup").expect("backup");
    let sender = RunningSender::start(&backup, send_settings("backup-1", 0, 0.0));
    let outcome = tokio::time::timeout(DEADLINE, monitor)
        .await
        .expect("the monitor ends once both are done")
        .expect("joins")
        .expect("the monitor runs");
    sender.stop().await;
    let MonitorOutcome::Done(done) = outcome else {
        panic!("not done: {outcome:?}")
    };
    assert_eq!(done.channels["backup"].settled(), 20, "{done:?}");
    assert_eq!(done.channels["sms"].settled(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_added_by_two_processes_at_once_are_both_kept() {
    let redis = start_redis().await;
    let store = twenty_on_one_channel(&redis.url, "two-adders").await;
    // Two processes opened the queue when it had one channel; one adds
    // e-mail, then the other, unaware of it, adds a backup.
    let (first, second) = (store.clone(), store.open().await.expect("opens"));
    let email = [Channel::parse("email").expect("a channel")];
    assert_eq!(
        first.ensure_channels(&email).await.expect("adds"),
        ["email"]
    );
    let backup = [Channel::parse("backup:sms").expect("a channel")];
    assert_eq!(
        second
            .ensure_channels(&backup)
            .await
            .expect("adds beside it"),
        ["backup"]
    );
    let reopened = store.open().await.expect("reopens");
    let names: Vec<String> = reopened.channels().iter().map(|c| c.to_string()).collect();
    assert_eq!(names, ["sms:sms", "email:email", "backup:sms"]);
    // A stale handle asking for what is there already changes nothing.
    assert!(
        first
            .ensure_channels(&email)
            .await
            .expect("no-op")
            .is_empty()
    );
    let again = store.open().await.expect("reopens");
    assert_eq!(again.channels(), reopened.channels());
}
