//! `serve`: the HTTP API on a real Redis over real HTTP — single messages,
//! batches, each refusal with its status and body, idempotent repeats,
//! backpressure, Redis paused, auth, other queues, damage and shutdown.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::http::{Server, http};
use common::{TestRedis, fail_all, opened_queue, raw, start_redis, wait_until};
use redis::AsyncCommands;
use serde_json::{Value, json};
use sms_alerts::settings::ServeSettings;
use sms_alerts::stats::Snapshot;
use sms_alerts::store::{QueueOptions, Store};

const JSON: (&str, &str) = ("Content-Type", "application/json");

/// Entries in every partition's stream.
async fn entries(redis: &TestRedis, store: &Store) -> u64 {
    let mut con = raw(&redis.url).await;
    let mut total = 0;
    for partition in store.partitions() {
        let n: u64 = con.xlen(partition.keys().messages()).await.expect("XLEN");
        total += n;
    }
    total
}

/// The fields of the stream entry `id` of `partition`'s stream.
async fn entry(redis: &TestRedis, partition: &Store, id: &str) -> HashMap<String, String> {
    let found: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(partition.keys().messages())
        .arg(id)
        .arg(id)
        .query_async(&mut raw(&redis.url).await)
        .await
        .expect("XRANGE");
    found.into_iter().next().expect("the entry exists").1
}

/// `CLIENT PAUSE ms WRITE`, or `CLIENT UNPAUSE` for `None`.
async fn client_pause(redis: &TestRedis, ms: Option<u64>) {
    let mut cmd = redis::cmd("CLIENT");
    match ms {
        Some(ms) => cmd.arg("PAUSE").arg(ms).arg("WRITE"),
        None => cmd.arg("UNPAUSE"),
    };
    let _: () = cmd
        .query_async(&mut raw(&redis.url).await)
        .await
        .expect("CLIENT PAUSE/UNPAUSE");
}

fn message(i: u32) -> Value {
    json!({"recipient": format!("+49151{:07}", 1_000_000 + i), "body": format!("alert {i}")})
}

#[tokio::test]
async fn single_and_batch_messages_land_where_routing_says() {
    let redis = start_redis().await;
    let store = opened_queue(&redis.url, "single", 3).await;
    let server = Server::start(&store, ServeSettings::default()).await;

    let one = server.post(&message(1).to_string(), &[JSON]).await;
    assert_eq!(one.status, 201, "{one:?}");
    let id = one.body["id"].as_str().expect("an id");
    let partition = one.body["partition"].as_u64().expect("a partition") as u32;
    assert_eq!(
        partition,
        sms_alerts::routing::partition_of_key(
            message(1)["recipient"]
                .as_str()
                .expect("a recipient")
                .as_bytes(),
            3
        ),
        "routed by recipient"
    );
    let fields = entry(&redis, &store.partition(partition), id).await;
    assert_eq!(fields["body"], "alert 1", "the id names the entry");

    // 200 messages over 3 partitions: large enough per partition to go as
    // transactions.
    let batch: Vec<Value> = (0..200).map(message).collect();
    let many = server
        .post(&json!({ "messages": batch }).to_string(), &[JSON])
        .await;
    assert_eq!(many.status, 201, "{many:?}");
    let results = many.body["results"].as_array().expect("results");
    assert_eq!(results.len(), 200);
    let first = &results[0];
    let partition = first["partition"].as_u64().expect("partition") as u32;
    let fields = entry(
        &redis,
        &store.partition(partition),
        first["id"].as_str().expect("id"),
    )
    .await;
    assert_eq!(
        fields["body"], "alert 0",
        "a transaction's ids name its entries"
    );
    let used: std::collections::BTreeSet<u64> = results
        .iter()
        .filter_map(|r| r["partition"].as_u64())
        .collect();
    assert_eq!(used.len(), 3, "200 recipients spread over the 3 partitions");
    let keyed = server
        .post(
            &json!({"messages": [
                {"recipient": "+4915112345678", "body": "a", "key": "district-4"},
                {"recipient": "+4915112345679", "body": "b", "key": "district-4"},
                {"recipient": "+4915112345670", "body": "c", "partition": 2}
            ]})
            .to_string(),
            &[JSON],
        )
        .await;
    let parts: Vec<u64> = keyed.body["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["partition"].as_u64().expect("partition"))
        .collect();
    let by_key = u64::from(sms_alerts::routing::partition_of_key(b"district-4", 3));
    assert_eq!(parts, [by_key, by_key, 2]);
    assert_eq!(entries(&redis, &store).await, 204);

    let stats = server.request("GET", "/api/v1/stats", None, &[]).await;
    assert_eq!(stats.status, 200);
    assert_eq!(stats.body["produced"], 204, "{:?}", stats.body);
    let ready = server.request("GET", "/readyz", None, &[]).await;
    assert_eq!(ready.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn every_refusal_has_its_status_and_names_what_is_wrong() {
    let redis = start_redis().await;
    let store = opened_queue(&redis.url, "refusals", 2).await;
    let settings = ServeSettings {
        max_batch: 3,
        max_body: 4096,
        ..ServeSettings::default()
    };
    let server = Server::start(&store, settings).await;

    let bad = server
        .post(r#"{"recipient": "555-1234", "body": "x"}"#, &[JSON])
        .await;
    assert_eq!(bad.status, 400, "{bad:?}");
    assert_eq!(bad.body["field"], "recipient");
    assert_eq!(bad.body["value"], "555-1234");

    let partial = server
        .post(
            &json!({"messages": [message(1), {"recipient": "+4915112345678", "body": ""}, message(2)]})
                .to_string(),
            &[JSON],
        )
        .await;
    assert_eq!(partial.status, 207, "{partial:?}");
    let results = partial.body["results"].as_array().expect("results");
    assert!(results[0]["id"].is_string() && results[2]["id"].is_string());
    assert_eq!(results[1]["status"], 400);
    assert_eq!(results[1]["field"], "body");
    assert_eq!(entries(&redis, &store).await, 2, "the good ones landed");

    let beyond = server
        .post(
            r#"{"recipient": "+4915112345678", "body": "x", "partition": 2}"#,
            &[JSON],
        )
        .await;
    assert_eq!(
        (beyond.status, beyond.body["field"].as_str()),
        (400, Some("partition"))
    );
    let mistyped = server
        .post(
            r#"{"recipient": "+4915112345678", "body": "x", "partition": "two"}"#,
            &[JSON],
        )
        .await;
    assert_eq!(
        (
            mistyped.status,
            mistyped.body["field"].as_str(),
            mistyped.body["value"].as_str()
        ),
        (400, Some("partition"), Some("\"two\"")),
        "{mistyped:?}"
    );

    let four: Vec<Value> = (0..4).map(message).collect();
    let too_many = server
        .post(&json!({ "messages": four }).to_string(), &[JSON])
        .await;
    assert_eq!(too_many.status, 413, "{too_many:?}");
    let huge = json!({"recipient": "+4915112345678", "body": "x".repeat(5000)}).to_string();
    let too_big = server.post(&huge, &[JSON]).await;
    assert_eq!(too_big.status, 413, "{too_big:?}");
    assert!(
        too_big.body["error"]
            .as_str()
            .expect("error")
            .contains("4096")
    );

    let text = server
        .post(&message(1).to_string(), &[("Content-Type", "text/plain")])
        .await;
    assert_eq!(text.status, 415, "{text:?}");
    let garbage = server.post("recipient=+49151&body=x", &[]).await;
    assert_eq!(garbage.status, 415, "{garbage:?}");
    let broken = server.post("{\"recipient\": ", &[JSON]).await;
    assert_eq!(broken.status, 400, "{broken:?}");

    let nowhere = server
        .post(
            r#"{"phone": "+4915112345678", "message_body": "x", "topic_name": "no-such-queue"}"#,
            &[JSON],
        )
        .await;
    assert_eq!(nowhere.status, 404, "{nowhere:?}");
    assert_eq!(nowhere.body["value"], "no-such-queue");
    let bad_key = server
        .post(&message(1).to_string(), &[JSON, ("Idempotency-Key", "a b")])
        .await;
    assert_eq!(
        (bad_key.status, bad_key.body["field"].as_str()),
        (400, Some("Idempotency-Key"))
    );
    let two_keys = [JSON, ("Idempotency-Key", "k-1"), ("Idempotency-Key", "k-2")];
    let two_keys = server.post(&message(1).to_string(), &two_keys).await;
    assert_eq!(
        (two_keys.status, two_keys.body["field"].as_str()),
        (400, Some("Idempotency-Key")),
        "{two_keys:?}"
    );
    assert_eq!(
        entries(&redis, &store).await,
        2,
        "no refusal wrote anything"
    );
    // A keyed request refused whole takes no record: the key stays free.
    let free = ("Idempotency-Key", "k-free");
    let refused = server
        .post(r#"{"recipient": "555", "body": "x"}"#, &[JSON, free])
        .await;
    assert_eq!(refused.status, 400, "{refused:?}");
    let landed = server.post(&message(3).to_string(), &[JSON, free]).await;
    assert_eq!(landed.status, 201, "{landed:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_json_body_without_a_content_type_is_refused_and_writes_nothing() {
    let redis = start_redis().await;
    let store = opened_queue(&redis.url, "untyped", 1).await;
    let server = Server::start(&store, ServeSettings::default()).await;
    let batch = json!({ "messages": (0..3).map(message).collect::<Vec<_>>() }).to_string();
    assert_eq!(server.post(&batch, &[JSON]).await.status, 201);
    fail_all(&store, "failing", 3).await;

    // What any web page can make a browser send here with no CORS
    // preflight: valid JSON, no Content-Type.
    let requeue = r#"{"reason": "max_attempts"}"#;
    let produced = server.post(&message(9).to_string(), &[]).await;
    let requeued = server
        .request(
            "POST",
            "/api/v1/dead/requeue",
            Some(requeue.to_owned()),
            &[],
        )
        .await;
    for answer in [&produced, &requeued] {
        assert_eq!(answer.status, 415, "{answer:?}");
        assert!(
            answer.body["error"]
                .as_str()
                .is_some_and(|e| e.contains("send Content-Type: application/json")),
            "{answer:?}"
        );
    }
    assert_eq!(entries(&redis, &store).await, 3, "nothing was written");
    let dead = Snapshot::read(&store).await.expect("reads").dead;
    assert_eq!(dead, 3, "nothing was requeued");

    // Typed as JSON, the same requests go through.
    let typed = server
        .request(
            "POST",
            "/api/v1/dead/requeue",
            Some(requeue.to_owned()),
            &[JSON],
        )
        .await;
    assert_eq!(
        (typed.status, typed.body["requeued"].as_u64()),
        (200, Some(3)),
        "{typed:?}"
    );
    let produced = server.post(&message(9).to_string(), &[JSON]).await;
    assert_eq!(produced.status, 201, "{produced:?}");
    server.stop().await;
}

#[tokio::test]
async fn dead_letters_are_listed_for_a_channel_the_queue_has() {
    let redis = start_redis().await;
    let store = opened_queue(&redis.url, "dead-channel", 1).await;
    let server = Server::start(&store, ServeSettings::default()).await;
    let batch = json!({ "messages": (0..2).map(message).collect::<Vec<_>>() }).to_string();
    assert_eq!(server.post(&batch, &[JSON]).await.status, 201);
    fail_all(&store, "failing", 2).await;

    let all = server.request("GET", "/api/v1/dead", None, &[]).await;
    assert_eq!(all.status, 200, "{all:?}");
    let channel = all.body["dead_letters"][0]["channel"]
        .as_str()
        .expect("a dead letter's channel");
    let own = server
        .request("GET", &format!("/api/v1/dead?channel={channel}"), None, &[])
        .await;
    assert_eq!(own.body, all.body, "the queue's one channel: {own:?}");

    // An unknown channel is refused as requeue refuses it, not listed empty.
    let listed = server
        .request("GET", "/api/v1/dead?channel=nope", None, &[])
        .await;
    let requeued = server
        .request(
            "POST",
            "/api/v1/dead/requeue",
            Some(r#"{"reason": "max_attempts", "channel": "nope"}"#.to_owned()),
            &[JSON],
        )
        .await;
    for answer in [&listed, &requeued] {
        assert_eq!(
            (
                answer.status,
                answer.body["field"].as_str(),
                answer.body["value"].as_str()
            ),
            (400, Some("channel"), Some("nope")),
            "{answer:?}"
        );
        assert!(
            answer.body["error"]
                .as_str()
                .is_some_and(|e| e.contains("no channel 'nope'")),
            "{answer:?}"
        );
    }
    // A misspelt parameter is refused, not ignored.
    let misspelt = server
        .request("GET", "/api/v1/dead?chanel=nope", None, &[])
        .await;
    assert_eq!(
        (misspelt.status, misspelt.body["field"].as_str()),
        (400, Some("chanel")),
        "{misspelt:?}"
    );

    // A channel added while the server runs is one it lists and requeues.
    let added = QueueOptions {
        channels: [channel, "backup"]
            .map(|name| sms_alerts::channel::Channel::parse(name).expect("a channel"))
            .to_vec(),
        ..QueueOptions::default()
    };
    store.migrate(&added).await.expect("adds a channel");
    let listed = server
        .request("GET", "/api/v1/dead?channel=backup", None, &[])
        .await;
    let requeued = server
        .request(
            "POST",
            "/api/v1/dead/requeue",
            Some(r#"{"reason": "max_attempts", "channel": "backup"}"#.to_owned()),
            &[JSON],
        )
        .await;
    assert_eq!(listed.status, 200, "{listed:?}");
    assert_eq!(
        (requeued.status, requeued.body["requeued"].as_u64()),
        (200, Some(0)),
        "{requeued:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_repeated_request_lands_once_and_gets_the_same_ids() {
    let redis = start_redis().await;
    let store = opened_queue(&redis.url, "idempotent", 3).await;
    let server = Server::start(&store, ServeSettings::default()).await;
    let batch = json!({ "messages": (0..20).map(message).collect::<Vec<_>>() }).to_string();
    let key = ("Idempotency-Key", "order-4711");

    let first = server.post(&batch, &[JSON, key]).await;
    assert_eq!(first.status, 201, "{first:?}");
    assert_eq!(entries(&redis, &store).await, 20);
    let again = server.post(&batch, &[JSON, key]).await;
    assert_eq!(again.status, 201, "{again:?}");
    assert_eq!(again.body, first.body, "the same answer, the same ids");
    assert_eq!(
        again.headers.get("idempotent-replayed").map(String::as_str),
        Some("true")
    );
    assert_eq!(entries(&redis, &store).await, 20, "nothing landed twice");

    let other = json!({ "messages": (100..103).map(message).collect::<Vec<_>>() }).to_string();
    let reused = server.post(&other, &[JSON, key]).await;
    assert_eq!(reused.status, 422, "{reused:?}");
    assert_eq!(reused.body["field"], "Idempotency-Key");
    assert_eq!(
        entries(&redis, &store).await,
        20,
        "a reused key writes nothing"
    );

    // The alerting-request shape: request_id is the key when no header gives one.
    let theirs = json!({"request_id": "req-1", "topic_name": store.prefix(),
        "message_body": "Evacuate", "transaction_id": "tx-9", "email": "a@example.org",
        "phone": "+4915112345678", "customer_id": "c-7"})
    .to_string();
    let first = server.post(&theirs, &[JSON]).await;
    assert_eq!(first.status, 201, "{first:?}");
    let again = server.post(&theirs, &[JSON]).await;
    assert_eq!(again.body["id"], first.body["id"]);
    assert_eq!(entries(&redis, &store).await, 21);
    let partition = first.body["partition"].as_u64().expect("partition") as u32;
    let id = first.body["id"].as_str().expect("id");
    let fields = entry(&redis, &store.partition(partition), id).await;
    assert_eq!(fields["body"], "Evacuate");
    assert_eq!(fields["email"], "a@example.org");
    assert_eq!(fields["transaction_id"], "tx-9");
    assert_eq!(fields["customer_id"], "c-7");
    assert_eq!(fields["request_id"], "req-1");
    server.stop().await;
}

#[tokio::test]
async fn a_request_id_repeated_in_a_batch_lands_once() {
    let redis = start_redis().await;
    let store = opened_queue(&redis.url, "repeated-id", 2).await;
    let server = Server::start(&store, ServeSettings::default()).await;
    let batch = json!({"messages": [
        {"phone": "+4915112345678", "message_body": "a", "request_id": "r2"},
        {"phone": "+4915112345678", "message_body": "b", "request_id": "r2"}
    ]});
    let answer = server.post(&batch.to_string(), &[JSON]).await;
    assert_eq!(answer.status, 207, "{answer:?}");
    let results = answer.body["results"].as_array().expect("results");
    let id = results[0]["id"].as_str().expect("the first lands");
    assert_eq!(
        (
            &results[1]["status"],
            results[1]["field"].as_str(),
            results[1]["value"].as_str()
        ),
        (&json!(400), Some("request_id"), Some("r2")),
        "the repeat is refused: {answer:?}"
    );
    assert!(results[1]["id"].is_null(), "{answer:?}");
    assert_eq!(entries(&redis, &store).await, 1, "one message landed");

    // The id stands for the first message: sent alone, it replays.
    let alone = json!({"phone": "+4915112345678", "message_body": "a", "request_id": "r2"});
    let again = server.post(&alone.to_string(), &[JSON]).await;
    assert_eq!(
        (again.status, again.body["id"].as_str()),
        (201, Some(id)),
        "{again:?}"
    );
    assert_eq!(entries(&redis, &store).await, 1, "nothing landed twice");

    // A batch of nothing but repeats of one id still lands its first.
    let only = json!({"messages": [alone, alone]});
    let answer = server.post(&only.to_string(), &[JSON]).await;
    assert_eq!(answer.status, 207, "{answer:?}");
    assert_eq!(answer.body["results"][0]["id"].as_str(), Some(id));
    assert_eq!(entries(&redis, &store).await, 1);
    server.stop().await;
}

#[tokio::test]
async fn a_key_reused_on_another_queue_or_a_grown_one_writes_nothing() {
    let redis = start_redis().await;
    let store = opened_queue(&redis.url, "reuse", 2).await;
    let other = opened_queue(&redis.url, "reuse-other", 1).await;
    let server = Server::start(&store, ServeSettings::default()).await;
    let key = ("Idempotency-Key", "k-1");
    let home = json!({ "messages": (0..4).map(message).collect::<Vec<_>>() }).to_string();
    assert_eq!(server.post(&home, &[JSON, key]).await.status, 201);

    // The same key on a request to another queue: refused before anything
    // is written there.
    let elsewhere =
        json!({"phone": "+4915112345678", "message_body": "x", "topic_name": other.prefix()})
            .to_string();
    let reused = server.post(&elsewhere, &[JSON, key]).await;
    assert_eq!(reused.status, 422, "{reused:?}");
    assert_eq!(
        entries(&redis, &other).await,
        0,
        "nothing written to the other queue"
    );

    // A request_id reused with another partition is refused, whichever
    // partition either goes to, and nothing more is written.
    let first = json!({"recipient": "+4915112345678", "body": "A", "request_id": "r-9",
                       "partition": 0});
    let moved = json!({"recipient": "+4915112345678", "body": "B", "request_id": "r-9",
                       "partition": 1});
    assert_eq!(server.post(&first.to_string(), &[JSON]).await.status, 201);
    let reused = server.post(&moved.to_string(), &[JSON]).await;
    assert_eq!(
        (reused.status, reused.body["field"].as_str()),
        (422, Some("request_id"))
    );
    let again = server.post(&first.to_string(), &[JSON]).await;
    assert_eq!(
        again.status, 201,
        "the first request's repeat replays: {again:?}"
    );
    assert_eq!(entries(&redis, &store).await, 5);

    // A message's request_id is a key of its own kind: the same text as a
    // header key is no conflict.
    let by_id = json!({"recipient": "+4915112345678", "body": "y", "request_id": "k-1"});
    assert_eq!(server.post(&by_id.to_string(), &[JSON]).await.status, 201);
    assert_eq!(entries(&redis, &store).await, 6);

    // The queue grows: the same request now routes differently, so its
    // repeat is refused instead of written again where no record is.
    let options = QueueOptions {
        partitions: Some(5),
        ..QueueOptions::default()
    };
    store.migrate(&options).await.expect("grows");
    wait_until(
        "the server routes over 5 partitions",
        Duration::from_secs(10),
        || async {
            let answer = server.post(&home, &[JSON, key]).await;
            assert!(matches!(answer.status, 201 | 422), "{answer:?}");
            answer.status == 422
        },
    )
    .await;
    assert_eq!(
        entries(&redis, &store.open().await.expect("opens")).await,
        6
    );
    server.stop().await;
}

#[tokio::test]
async fn a_backlog_over_the_limit_gets_429_with_retry_after() {
    let redis = start_redis().await;
    let store = opened_queue(&redis.url, "backlog", 1).await;
    let settings = ServeSettings {
        max_lag: Some(5),
        ..ServeSettings::default()
    };
    let server = Server::start(&store, settings).await;
    let batch = json!({ "messages": (0..10).map(message).collect::<Vec<_>>() }).to_string();
    assert_eq!(server.post(&batch, &[JSON]).await.status, 201);
    wait_until(
        "the backlog refuses writes",
        Duration::from_secs(10),
        || async {
            let answer = server.post(&message(99).to_string(), &[JSON]).await;
            if answer.status == 429 {
                assert_eq!(
                    answer.headers.get("retry-after").map(String::as_str),
                    Some("1")
                );
                assert!(
                    answer.body["error"]
                        .as_str()
                        .expect("error")
                        .contains("--max-lag 5")
                );
                return true;
            }
            assert_eq!(answer.status, 201, "{answer:?}");
            false
        },
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn redis_paused_gets_503_and_a_token_guards_the_api() {
    let redis = start_redis().await;
    let store = opened_queue(&redis.url, "paused", 1).await;
    let settings = ServeSettings {
        request_timeout: Duration::from_millis(500),
        api_token: Some("s3cret".to_owned()),
        ..ServeSettings::default()
    };
    let server = Server::start(&store, settings).await;
    let auth = ("Authorization", "Bearer s3cret");

    let none = server.post(&message(1).to_string(), &[JSON]).await;
    assert_eq!(none.status, 401, "{none:?}");
    let wrong = server
        .post(
            &message(1).to_string(),
            &[JSON, ("Authorization", "Bearer s3cre")],
        )
        .await;
    assert_eq!(wrong.status, 401);
    assert_eq!(
        server
            .request("GET", "/api/v1/stats", None, &[])
            .await
            .status,
        401
    );
    assert_eq!(
        server.request("GET", "/healthz", None, &[]).await.status,
        200
    );
    assert_eq!(
        server
            .post(&message(1).to_string(), &[JSON, auth])
            .await
            .status,
        201
    );
    // The scheme is case-insensitive (RFC 7235).
    let lower = server
        .request(
            "GET",
            "/api/v1/stats",
            None,
            &[("Authorization", "bearer s3cret")],
        )
        .await;
    assert_eq!(lower.status, 200, "{lower:?}");

    client_pause(&redis, Some(3000)).await;
    let paused = server
        .post(
            &message(2).to_string(),
            &[JSON, auth, ("Idempotency-Key", "k-2")],
        )
        .await;
    assert_eq!(paused.status, 503, "{paused:?}");
    assert_eq!(
        paused.headers.get("retry-after").map(String::as_str),
        Some("1")
    );
    client_pause(&redis, None).await;
    // The paused write may land once Redis resumes; a retry with the key
    // lands it at most once either way.
    let retried = server
        .post(
            &message(2).to_string(),
            &[JSON, auth, ("Idempotency-Key", "k-2")],
        )
        .await;
    assert_eq!(retried.status, 201, "{retried:?}");
    wait_until(
        "the paused write settles",
        Duration::from_secs(10),
        || async { entries(&redis, &store).await == 2 },
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn requests_in_flight_finish_when_the_server_stops() {
    let redis = start_redis().await;
    let store = opened_queue(&redis.url, "shutdown", 1).await;
    let server = Server::start(&store, ServeSettings::default()).await;
    client_pause(&redis, Some(1500)).await;
    let url = format!("{}/api/v1/produce", server.base);
    let body = message(1).to_string();
    let in_flight = tokio::task::spawn_blocking(move || {
        http(
            "POST",
            &url,
            Some(body),
            &[("Content-Type".into(), "application/json".into())],
        )
    });
    wait_until(
        "the write waits in Redis",
        Duration::from_secs(10),
        || async {
            let clients: String = redis::cmd("CLIENT")
                .arg("LIST")
                .query_async(&mut raw(&redis.url).await)
                .await
                .expect("CLIENT LIST");
            // A client held by the pause has flag `b` (with `x` inside a
            // transaction).
            clients.lines().any(|line| {
                line.split(' ')
                    .find_map(|field| field.strip_prefix("flags="))
                    .is_some_and(|flags| flags.contains('b'))
            })
        },
    )
    .await;
    server.shutdown.cancel();
    let late = tokio::task::spawn_blocking({
        let url = format!("{}/api/v1/produce", server.base);
        let body = message(2).to_string();
        move || {
            http(
                "POST",
                &url,
                Some(body),
                &[("Content-Type".into(), "application/json".into())],
            )
        }
    })
    .await
    .expect("the late request thread");
    if let Ok(late) = &late {
        assert_eq!(
            late.status, 503,
            "a request after shutdown is refused: {late:?}"
        );
    }
    let finished = in_flight.await.expect("thread").expect("answered");
    assert_eq!(finished.status, 201, "{finished:?}");
    tokio::time::timeout(Duration::from_secs(10), server.task)
        .await
        .expect("the server stops")
        .expect("joins")
        .expect("stops cleanly");
    assert_eq!(entries(&redis, &store).await, 1);
}

#[tokio::test]
async fn other_queues_by_topic_and_a_flushed_queue_stops_the_server() {
    let redis = start_redis().await;
    let store = opened_queue(&redis.url, "home", 1).await;
    let other = opened_queue(&redis.url, "other", 2).await;
    let server = Server::start(&store, ServeSettings::default()).await;
    let to_other =
        json!({"phone": "+4915112345678", "message_body": "x", "topic_name": other.prefix()});
    let answer = server.post(&to_other.to_string(), &[JSON]).await;
    assert_eq!(answer.status, 201, "{answer:?}");
    assert_eq!(entries(&redis, &other).await, 1);
    assert_eq!(entries(&redis, &store).await, 0);

    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut raw(&redis.url).await)
        .await
        .expect("FLUSHALL");
    let ready = server.request("GET", "/readyz", None, &[]).await;
    assert_eq!(ready.status, 503, "a flushed queue is not ready: {ready:?}");
    // A batch large enough to go as a transaction checks the identity too.
    let batch = json!({ "messages": (0..100).map(message).collect::<Vec<_>>() }).to_string();
    let lost = server.post(&batch, &[JSON]).await;
    assert_eq!(lost.status, 500, "{lost:?}");
    assert!(
        lost.body["results"][0]["error"]
            .as_str()
            .expect("error")
            .contains("gone"),
        "{lost:?}"
    );
    assert_eq!(
        entries(&redis, &store).await,
        0,
        "nothing written after the flush"
    );
    let stopped = tokio::time::timeout(Duration::from_secs(10), server.task)
        .await
        .expect("the server stops by itself")
        .expect("joins");
    let err = stopped.expect_err("the loss is the server's error");
    assert!(
        err.store_error().is_some_and(|e| e.is_queue_state()),
        "{err}"
    );
}

/// Reads from `stream` until the server closes it or `deadline` passes;
/// what arrived, and whether it was closed.
async fn read_until_closed(
    stream: &mut tokio::net::TcpStream,
    deadline: Duration,
) -> (String, bool) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(deadline, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

#[tokio::test]
async fn a_client_that_trickles_its_request_is_cut_off() {
    use tokio::io::AsyncWriteExt;
    let redis = start_redis().await;
    let store = opened_queue(&redis.url, "slowloris", 1).await;
    let settings = ServeSettings {
        client_timeout: Duration::from_millis(500),
        ..ServeSettings::default()
    };
    let server = Server::start(&store, settings).await;
    let addr = server.base.trim_start_matches("http://").to_owned();

    // A head that never ends: the connection is closed.
    let mut head = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connects");
    head.write_all(b"POST /api/v1/produce HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("writes");
    let started = std::time::Instant::now();
    let (_, closed) = read_until_closed(&mut head, Duration::from_secs(10)).await;
    assert!(
        closed,
        "the server closed a connection whose head never ended"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "not before the timeout"
    );

    // A body that never ends: 408, naming the limit.
    let mut body = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connects");
    body.write_all(
        b"POST /api/v1/produce HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{\"recipient\": ",
    )
    .await
    .expect("writes");
    let (answer, closed) = read_until_closed(&mut body, Duration::from_secs(10)).await;
    assert!(closed, "the connection ends after the answer: {answer}");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("--client-timeout 500ms"), "{answer}");

    // A kept-alive connection that sends no next request is closed after
    // the timeout too; its answer said not to count on more (0 seconds).
    let mut idle = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connects");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("writes");
    let started = std::time::Instant::now();
    let (answer, closed) = read_until_closed(&mut idle, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("keep-alive: timeout=0\r\n"), "{answer}");
    assert!(
        closed && started.elapsed() >= Duration::from_millis(400),
        "closed once idle for the timeout"
    );

    // Clients that send in time are served as ever.
    let posted = server.post(&message(1).to_string(), &[JSON]).await;
    assert_eq!(posted.status, 201, "{posted:?}");
    assert_eq!(
        entries(&redis, &store).await,
        1,
        "only the prompt request landed"
    );
    server.stop().await;
}

#[tokio::test]
async fn only_the_listed_topics_can_be_named() {
    let redis = start_redis().await;
    let store = opened_queue(&redis.url, "topics-home", 1).await;
    let drills = opened_queue(&redis.url, "drills", 1).await;
    let secret = opened_queue(&redis.url, "secret", 1).await;
    let settings = ServeSettings {
        topics: Some(vec![drills.prefix().to_owned()]),
        ..ServeSettings::default()
    };
    let server = Server::start(&store, settings).await;
    let to = |topic: &str| {
        json!({"phone": "+4915112345678", "message_body": "x", "topic_name": topic}).to_string()
    };
    let listed = server.post(&to(drills.prefix()), &[JSON]).await;
    assert_eq!(listed.status, 201, "{listed:?}");
    let home = server.post(&to(store.prefix()), &[JSON]).await;
    assert_eq!(home.status, 201, "the server's own queue: {home:?}");
    let unlisted = server.post(&to(secret.prefix()), &[JSON]).await;
    let missing = server.post(&to("no-such-queue"), &[JSON]).await;
    assert_eq!(unlisted.status, 404, "{unlisted:?}");
    assert_eq!(
        unlisted.body["error"]
            .as_str()
            .map(|e| e.replace(secret.prefix(), "Q")),
        missing.body["error"]
            .as_str()
            .map(|e| e.replace("no-such-queue", "Q")),
        "an unlisted queue is answered as a missing one"
    );
    assert_eq!(
        (
            entries(&redis, &drills).await,
            entries(&redis, &store).await,
            entries(&redis, &secret).await
        ),
        (1, 1, 0)
    );
    server.stop().await;
}
