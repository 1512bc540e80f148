//! The sender's read connection (its own socket and reply decoding) connects,
//! logs in and selects the database exactly as the URL says, like every other
//! connection: with a password, with an ACL user, on a database other than 0,
//! over a Unix socket.

mod common;

use std::time::Duration;

use common::*;
use sms_alerts::stats::Snapshot;
use sms_alerts::store::Store;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn senders_read_through_a_password_an_acl_user_and_a_database_number() {
    let redis = start_redis_with(RedisOptions {
        extra_args: vec![
            "--requirepass",
            "s3cret",
            "--user",
            "reader",
            "on",
            ">r3ader",
            "~*",
            "&*",
            "+@all",
        ],
        ..RedisOptions::default()
    })
    .await;
    const TOTAL: u64 = 500;
    let port = redis.port;
    for (url, db, name) in [
        (
            format!("redis://:s3cret@127.0.0.1:{port}/3"),
            3,
            "by-password",
        ),
        (
            format!("redis://reader:r3ader@127.0.0.1:{port}/5"),
            5,
            "by-user",
        ),
    ] {
        let store = produce_and_send_all(&url, name, TOTAL).await;
        let snapshot = Snapshot::read(&store).await.expect("snapshot");
        assert_eq!(snapshot.sent, TOTAL, "{name}");
        assert_eq!(snapshot.duplicates, 0, "{name}");

        // The messages were read from database `db`, where they were written;
        // database 0 never saw the stream.
        let messages = store.keys().messages();
        let mut there = raw(&url).await;
        let len: u64 = redis::cmd("XLEN")
            .arg(&messages)
            .query_async(&mut there)
            .await
            .expect("XLEN");
        assert_eq!(len, TOTAL, "{name}: the stream is in database {db}");
        let mut db0 = raw(&format!("redis://:s3cret@127.0.0.1:{port}/0")).await;
        let in_db0: u64 = redis::cmd("EXISTS")
            .arg(&messages)
            .query_async(&mut db0)
            .await
            .expect("EXISTS");
        assert_eq!(in_db0, 0, "{name}: database 0 holds no stream");
    }
}

#[tokio::test]
async fn a_wrong_password_is_refused_with_redis_own_error() {
    let redis = start_redis_with(RedisOptions {
        extra_args: vec!["--requirepass", "s3cret"],
        ..RedisOptions::default()
    })
    .await;
    let good = format!("redis://:s3cret@127.0.0.1:{}", redis.port);
    let store = store(&good, &unique_prefix("auth")).await;
    // The password changes after the store connected: the next connection
    // is refused, and the error says why and is not retried forever.
    let mut admin = raw(&good).await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("changed")
        .query_async(&mut admin)
        .await
        .expect("CONFIG SET");
    let err = store
        .read_connection(Duration::from_secs(1))
        .await
        .expect_err("the old password is refused");
    assert!(
        !err.is_transient(),
        "a refused login is not transient: {err}"
    );
    assert!(
        err.to_string().contains("WRONGPASS") || err.to_string().contains("invalid"),
        "Redis's own reason is kept: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn senders_work_over_a_unix_socket() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The container's redis user must be able to create the socket here.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod");
    let _redis = start_redis_with(RedisOptions {
        extra_args: vec![
            "--unixsocket",
            "/shared/redis.sock",
            "--unixsocketperm",
            "777",
        ],
        shared_dir: Some(dir.path().to_owned()),
        ..RedisOptions::default()
    })
    .await;
    let url = format!("redis+unix://{}", dir.path().join("redis.sock").display());
    produce_and_send_all(&url, "over-unix", 300).await;
}

/// Produces `total` messages through `url` and has one sender send them all.
async fn produce_and_send_all(url: &str, name: &str, total: u64) -> Store {
    let store = store(url, &unique_prefix(name)).await;
    produce_n(&store, 11, total).await;
    let sender = RunningSender::start(&store, send_settings(name, 1, 0.0));
    wait_until("every message is sent", Duration::from_secs(60), || {
        all_settled(&store, total)
    })
    .await;
    let summary = sender.stop().await;
    assert_eq!(
        summary.flushed.sent, total,
        "{name}: the sender read and sent them all"
    );
    store
}
