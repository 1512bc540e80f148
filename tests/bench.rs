//! `sms-alerts bench` on a given Redis, at small sizes: every figure is printed
//! and every key it wrote is gone afterwards. (Its figures are measured by
//! hand on a quiet machine, see README; tests do not time anything.)

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_prints_every_figure_and_cleans_up() {
    let redis = start_redis().await;
    let output = bin()
        .args([
            "--redis-url",
            &redis.url,
            "bench",
            "--messages",
            "3000",
            "--simulation",
            "2000",
            "--reclaim-pending",
            "3000",
            "--retention-messages",
            "3000",
        ])
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for figure in [
        "ceiling ",
        "produce ",
        "Redis per produced message",
        "drain     1 sender",
        "drain     2 senders",
        "simulate ",
        "sender peak RSS",
        "latency ",
        "reclaim ",
        "retention ",
    ] {
        assert!(stdout.contains(figure), "{figure} missing:\n{stdout}");
    }
    let mut conn = raw(&redis.url).await;
    let left: Vec<String> = redis::cmd("KEYS")
        .arg("*bench*")
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    assert!(left.is_empty(), "bench left keys behind: {left:?}");
}
