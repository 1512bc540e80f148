//! The Redis Cluster fixture on its own, checked with plain commands sent to
//! single nodes: it comes up with the slots spread, a killed primary's replica
//! takes over, a slot moved key by key answers ASK and then MOVED, and a
//! primary added later has no Functions.

mod common;

use common::cluster::{SLOTS, TestCluster, query, slot_of};
use redis::{RedisError, Value, cmd};

/// The port of one of the fixture's `redis://127.0.0.1:port` URLs.
fn port(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a node URL")
}

/// `GET key` on the node at `url`.
async fn get(url: &str, key: &str) -> Result<Option<String>, RedisError> {
    query(port(url), cmd("GET").arg(key)).await
}

async fn set(url: &str, key: &str, value: &str) {
    let reply: Result<(), _> = query(port(url), cmd("SET").arg(key).arg(value)).await;
    reply.unwrap_or_else(|err| panic!("SET {key} on {url}: {err}"));
}

/// The redirection an error carries: its code (`MOVED`, `ASK`) and target.
fn redirection(reply: Result<Option<String>, RedisError>) -> (String, String) {
    let err = reply.expect_err("a redirection, not a value");
    let (to, _slot) = err
        .redirect_node()
        .unwrap_or_else(|| panic!("not a redirection: {err}"));
    (
        err.code().unwrap_or_default().to_owned(),
        format!("redis://{to}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_comes_up_with_partition_tags_on_three_primaries() {
    let cluster = TestCluster::start(3, 0).await;
    let primaries = cluster.primaries().await;
    assert_eq!(primaries.len(), 3, "{primaries:?}");
    let covered: u32 = primaries
        .iter()
        .flat_map(|p| &p.slots)
        .map(|r| u32::from(r.end() - r.start()) + 1)
        .sum();
    assert_eq!(covered, u32::from(SLOTS), "slots served: {primaries:?}");
    assert_eq!(cluster.node_urls().len(), 3);

    let mut owners = Vec::new();
    for partition in 0..3 {
        let key = format!("{{sms:{partition}}}:messages");
        let slot = slot_of(&key);
        let server_slot: u16 = query(
            port(&cluster.seed_url()),
            cmd("CLUSTER").arg("KEYSLOT").arg(&key),
        )
        .await
        .expect("CLUSTER KEYSLOT");
        assert_eq!(slot, server_slot, "slot of {key}");
        let owner = cluster.owner_of_slot(slot).await;
        set(&owner, &key, "here").await;
        // Any other primary sends the key to its owner.
        let other = primaries
            .iter()
            .find(|p| p.url != owner)
            .expect("another primary");
        assert_eq!(
            redirection(get(&other.url, &key).await),
            ("MOVED".to_owned(), owner.clone()),
            "{key} asked at {}",
            other.url
        );
        owners.push(owner);
    }
    owners.sort();
    owners.dedup();
    assert_eq!(
        owners.len(),
        3,
        "{{sms:0..2}} land one per primary: {owners:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_is_replaced_by_its_replica() {
    let mut cluster = TestCluster::start(3, 1).await;
    assert_eq!(cluster.node_urls().len(), 6);
    let key = "{sms:1}:messages";
    let slot = slot_of(key);
    let owner = cluster.owner_of_slot(slot).await;
    // WAIT counts the replicas that have this connection's writes, so the
    // write and the WAIT share a connection.
    let mut conn = common::raw(&owner).await;
    let _: () = cmd("SET")
        .arg(key)
        .arg("kept")
        .query_async(&mut conn)
        .await
        .expect("SET");
    let acked: i64 = cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query_async(&mut conn)
        .await
        .expect("WAIT");
    assert_eq!(
        acked, 1,
        "the replica has the write before its primary dies"
    );

    let failover = cluster.kill_primary_of(slot).await;
    assert_eq!(failover.killed, owner);
    assert_ne!(failover.promoted, owner);
    assert!(
        !cluster.node_urls().contains(&owner),
        "{owner} is not listed as running"
    );
    assert!(
        get(&owner, key).await.is_err(),
        "the killed primary {owner} still answers"
    );
    assert_eq!(cluster.primaries().await.len(), 3);
    assert_eq!(
        get(&failover.promoted, key).await.expect("GET"),
        Some("kept".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_being_migrated_answers_ask_then_moved() {
    let cluster = TestCluster::start(3, 0).await;
    let keys = ["{sms:2}:a", "{sms:2}:b", "{sms:2}:c"];
    let slot = slot_of(keys[0]);
    let source = cluster.owner_of_slot(slot).await;
    for key in keys {
        set(&source, key, key).await;
    }
    let primaries = cluster.primaries().await;
    let target = primaries
        .iter()
        .find(|p| p.url != source)
        .expect("another primary")
        .url
        .clone();

    let mut seen = Vec::new();
    let moved = cluster
        .migrate_slot(slot, &target, async |key: &str| {
            let moved_key = redirection(get(&source, key).await);
            let waiting = keys.iter().find(|k| !seen.contains(k) && **k != key);
            let waiting_value = match waiting {
                Some(waiting) => get(&source, waiting)
                    .await
                    .expect("GET a key not moved yet"),
                None => None,
            };
            seen.push(keys.iter().find(|k| **k == key).expect("one of ours"));
            assert_eq!(
                moved_key,
                ("ASK".to_owned(), target.clone()),
                "{key} after its MIGRATE"
            );
            if let Some(waiting) = waiting {
                assert_eq!(
                    waiting_value.as_deref(),
                    Some(*waiting),
                    "still served by the source"
                );
            }
        })
        .await;
    assert_eq!(moved, keys.len());
    assert_eq!(seen.len(), keys.len(), "paused after every key");

    assert_eq!(cluster.owner_of_slot(slot).await, target);
    for key in keys {
        assert_eq!(
            redirection(get(&source, key).await),
            ("MOVED".to_owned(), target.clone())
        );
        assert_eq!(get(&target, key).await.expect("GET").as_deref(), Some(key));
    }
}

const LIBRARY: &str = "#!lua name=fixture\n\
    redis.register_function('fixture_get', function(keys) return redis.call('GET', keys[1]) end)";

async fn fcall(url: &str, key: &str) -> Result<Value, RedisError> {
    query(port(url), cmd("FCALL").arg("fixture_get").arg(1).arg(key)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_added_later_has_no_functions() {
    let mut cluster = TestCluster::start(3, 0).await;
    for primary in cluster.primaries().await {
        let _: String = query(port(&primary.url), cmd("FUNCTION").arg("LOAD").arg(LIBRARY))
            .await
            .expect("FUNCTION LOAD");
    }
    let key = "{sms:0}:messages";
    let slot = slot_of(key);
    let owner = cluster.owner_of_slot(slot).await;
    set(&owner, key, "x").await;
    assert_eq!(
        fcall(&owner, key)
            .await
            .expect("FCALL on a primary with the library"),
        Value::BulkString(b"x".to_vec())
    );

    let added = cluster.add_empty_primary().await;
    let primaries = cluster.primaries().await;
    let new = primaries
        .iter()
        .find(|p| p.url == added)
        .expect("the new primary is listed");
    assert!(new.slots.is_empty(), "{new:?}");
    assert_eq!(primaries.len(), 4);

    let moved = cluster.migrate_slot(slot, &added, async |_: &str| {}).await;
    assert_eq!(moved, 1);
    assert_eq!(cluster.owner_of_slot(slot).await, added);
    let err = fcall(&added, key)
        .await
        .expect_err("no library on the new primary");
    assert!(err.to_string().contains("Function not found"), "{err}");
}
