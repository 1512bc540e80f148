//! `EmbeddedCluster`: private redis-servers from PATH formed into a Redis
//! Cluster whose three primaries together serve every slot.

use std::num::NonZeroUsize;
use std::time::Duration;

use sms_alerts::embedded::{EmbeddedCluster, Persistence};

async fn query<T: redis::FromRedisValue>(url: &str, command: &redis::Cmd) -> T {
    let mut conn = redis::Client::open(url)
        .expect("valid url")
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|err| panic!("connect to {url}: {err}"));
    command
        .query_async(&mut conn)
        .await
        .unwrap_or_else(|err| panic!("on {url}: {err}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_a_cluster_serving_every_slot() {
    let nodes = NonZeroUsize::new(3).expect("not zero");
    let cluster = tokio::time::timeout(
        Duration::from_secs(60),
        EmbeddedCluster::start(nodes, Persistence::None),
    )
    .await
    .expect("the cluster starts within 60s")
    .expect("redis-server is on PATH and the cluster forms");
    let urls: Vec<String> = cluster.urls().into_iter().map(str::to_owned).collect();
    assert_eq!(urls.len(), 3, "{urls:?}");
    assert_eq!(cluster.seed_url(), urls[0]);

    for url in &urls {
        let info: String = query(url, redis::cmd("CLUSTER").arg("INFO")).await;
        assert!(info.contains("cluster_state:ok"), "{url}:\n{info}");
        assert!(info.contains("cluster_known_nodes:3"), "{url}:\n{info}");
    }

    // CLUSTER SLOTS: [start, end, [ip, port, id], replicas...] per range.
    let ranges: Vec<(u16, u16, Vec<redis::Value>)> =
        query(cluster.seed_url(), redis::cmd("CLUSTER").arg("SLOTS")).await;
    let mut ranges: Vec<(u16, u16, u16)> = ranges
        .into_iter()
        .map(|(start, end, primary)| {
            let port = match primary.get(1) {
                Some(redis::Value::Int(port)) => u16::try_from(*port).expect("a port"),
                other => panic!("no port in {other:?}"),
            };
            (start, end, port)
        })
        .collect();
    ranges.sort();
    let mut next = 0;
    for (start, end, _) in &ranges {
        assert_eq!(*start, next, "slots from {next} are served: {ranges:?}");
        next = end + 1;
    }
    assert_eq!(next, 16384, "every slot is served: {ranges:?}");
    let mut primaries: Vec<String> = ranges
        .iter()
        .map(|(_, _, port)| format!("redis://127.0.0.1:{port}"))
        .collect();
    primaries.sort();
    primaries.dedup();
    let mut expected = urls.clone();
    expected.sort();
    assert_eq!(primaries, expected, "each node is a primary with slots");

    cluster.stop().await;
    for url in &urls {
        assert!(
            redis::Client::open(url.as_str())
                .expect("valid url")
                .get_multiplexed_async_connection()
                .await
                .is_err(),
            "{url} still answers after stop"
        );
    }
}
