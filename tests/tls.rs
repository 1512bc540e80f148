//! TLS on every connection: a Redis that listens only on TLS, with
//! certificates made here (a CA, a server certificate for `localhost` and
//! `127.0.0.1`, a client certificate), reached through the library with
//! `rediss://` URLs: the pool, the sender's read connection and the
//! producer's batch connection all go over TLS, verified, mutual, or not at
//! all; a wrong CA or host is a certificate error.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use sms_alerts::audit;
use sms_alerts::stats::Snapshot;
use sms_alerts::store::{QueueOptions, QueueSettings, Store, StoreError, TlsSettings};

/// PEM files of one test's certificates.
struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

/// A CA (named `name`), and a server and a client certificate it signed.
fn make_pki(name: &str) -> Pki {
    make_pki_for(name, &["localhost", "127.0.0.1"])
}

/// As [`make_pki`], the server certificate naming only `server_names`, so
/// a host mismatch can be made at the address every test reaches Redis by.
fn make_pki_for(name: &str, server_names: &[&str]) -> Pki {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, name);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |names: &[&str], purpose: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("params");
        params.extended_key_usages = vec![purpose];
        let cert = params.signed_by(&key, &issuer).expect("signed");
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(server_names, ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert, client_key) = leaf(&["sms-alerts"], ExtendedKeyUsagePurpose::ClientAuth);
    Pki {
        ca: ca_cert.pem(),
        server_cert,
        server_key,
        client_cert,
        client_key,
    }
}

/// Writes `content` to a file of its own for this test; its path.
fn write(test: &str, name: &str, content: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("tls-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("certificate directory");
    let path = dir.join(name);
    std::fs::write(&path, content).expect("certificate file");
    path
}

/// A Redis listening on TLS only, its certificates from `pki`; with
/// `mutual`, it asks for a client certificate signed by the same CA.
async fn start_tls_redis(pki: &Pki, mutual: bool, extra: &[&'static str]) -> TestRedis {
    let mut args = vec![
        "--port",
        "0",
        "--tls-port",
        "6379",
        "--tls-cert-file",
        "/tls/server.pem",
        "--tls-key-file",
        "/tls/server.key",
        "--tls-ca-cert-file",
        "/tls/ca.pem",
        "--tls-auth-clients",
        if mutual { "yes" } else { "no" },
    ];
    args.extend_from_slice(extra);
    start_redis_with(RedisOptions {
        extra_args: args,
        files: vec![
            ("/tls/ca.pem", pki.ca.clone().into_bytes()),
            ("/tls/server.pem", pki.server_cert.clone().into_bytes()),
            ("/tls/server.key", pki.server_key.clone().into_bytes()),
        ],
        ..RedisOptions::default()
    })
    .await
}

fn tls_queue(host: &str, redis: &TestRedis, prefix: &str, tls: TlsSettings) -> QueueSettings {
    QueueSettings {
        tls,
        ..queue(&format!("rediss://{host}:{}", redis.port), prefix)
    }
}

/// Creates the queue, produces `count` seeded messages, sends them all with
/// an in-process sender, and checks the counters and the audit: the pool,
/// the read connection and the batch connection all worked.
async fn whole_run(queue: &QueueSettings, seed: u64, count: u64) {
    let store = Store::connect(queue).await.expect("connects over TLS");
    let (store, _, _) = store
        .migrate(&QueueOptions::default())
        .await
        .expect("migrates over TLS");
    // A connection that is not really TLS would retry for ever: a deadline.
    tokio::time::timeout(Duration::from_secs(60), produce_n(&store, seed, count))
        .await
        .expect("produced over TLS within 60s");
    let sender = RunningSender::start(&store, send_settings("tls-sender", 1, 0.0));
    wait_until(
        "every message is sent over TLS",
        Duration::from_secs(60),
        || all_settled(&store, count),
    )
    .await;
    let summary = sender.stop().await;
    let snapshot = Snapshot::read(&store).await.expect("snapshot over TLS");
    assert_eq!(
        (snapshot.produced, snapshot.sent, snapshot.pending),
        (count, count, 0),
        "produced, sent, pending; sender summary {summary:?}"
    );
    let report = audit::run(&store, 100).await.expect("audit over TLS");
    assert!(report.is_consistent(), "{}", report.to_text());
    assert_eq!(report.produced, count, "{}", report.to_text());
    assert_eq!(report.acknowledged, count, "{}", report.to_text());
}

/// The error of connecting with `queue`, which must fail.
async fn connect_error(queue: &QueueSettings) -> StoreError {
    match tokio::time::timeout(Duration::from_secs(30), Store::connect(queue)).await {
        Ok(Ok(store)) => panic!("connected to {} though it must fail", store.url()),
        Ok(Err(err)) => err,
        Err(_) => panic!("connecting did not end within 30s"),
    }
}

fn assert_certificate_error(err: &StoreError, what: &str) {
    let text = err.to_string();
    assert!(
        matches!(err, StoreError::Certificate { .. }),
        "{what}: expected StoreError::Certificate, got {err:?}"
    );
    assert!(
        text.starts_with("TLS certificate problem") && !text.contains('\n'),
        "{what}: one line naming a certificate problem, got {text:?}"
    );
    assert!(!err.is_transient(), "{what}: not worth retrying: {text}");
}

#[tokio::test]
async fn a_run_goes_over_tls_verified_against_the_ca_file() {
    let pki = make_pki("sms-alerts test CA");
    let redis = start_tls_redis(&pki, false, &[]).await;
    let tls = TlsSettings {
        ca_cert: Some(write("verified", "ca.pem", &pki.ca)),
        ..TlsSettings::default()
    };
    let queue = tls_queue("127.0.0.1", &redis, &unique_prefix("tls"), tls);
    whole_run(&queue, 11, 600).await;
}

#[tokio::test]
async fn mutual_tls_presents_the_client_certificate_and_the_password() {
    let pki = make_pki("sms-alerts test CA");
    let redis = start_tls_redis(&pki, true, &["--requirepass", "tls-secret"]).await;
    let ca = write("mutual", "ca.pem", &pki.ca);
    let with_cert = TlsSettings {
        ca_cert: Some(ca.clone()),
        cert: Some(write("mutual", "client.pem", &pki.client_cert)),
        key: Some(write("mutual", "client.key", &pki.client_key)),
        insecure_skip_verify: false,
    };
    // The URL's password is wrong: the one given apart must win.
    let mut queue = tls_queue("127.0.0.1", &redis, &unique_prefix("mtls"), with_cert);
    queue.redis_url = format!("rediss://:wrong@127.0.0.1:{}", redis.port);
    queue.password = Some("tls-secret".to_owned());
    whole_run(&queue, 12, 300).await;

    let without_cert = TlsSettings {
        ca_cert: Some(ca),
        ..TlsSettings::default()
    };
    let refused = QueueSettings {
        tls: without_cert,
        ..queue.clone()
    };
    let err = connect_error(&refused).await;
    let text = err.to_string();
    assert!(
        !text.contains("tls-secret") && !text.contains("wrong"),
        "no password in {text}"
    );
    assert_certificate_error(&err, "no client certificate");
}

/// Connecting to `redis` as `host`, trusting only `ca`, fails as a
/// certificate problem whose message holds `detail`.
async fn assert_refused(redis: &TestRedis, host: &str, ca: &str, test: &str, detail: &str) {
    let tls = TlsSettings {
        ca_cert: Some(write(test, "ca.pem", ca)),
        ..TlsSettings::default()
    };
    let err = connect_error(&tls_queue(host, redis, &unique_prefix(test), tls)).await;
    assert_certificate_error(&err, test);
    assert!(err.to_string().contains(detail), "{test}: {err}");
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_a_certificate_error() {
    let pki = make_pki("sms-alerts test CA");
    let redis = start_tls_redis(&pki, false, &[]).await;
    let other = make_pki("another CA");
    assert_refused(&redis, "127.0.0.1", &other.ca, "wrong-ca", "UnknownIssuer").await;
}

#[tokio::test]
async fn a_host_the_certificate_does_not_name_is_a_certificate_error() {
    // A certificate for another host, reached at 127.0.0.1.
    let pki = make_pki_for("sms-alerts test CA", &["redis.example.internal"]);
    let redis = start_tls_redis(&pki, false, &[]).await;
    assert_refused(&redis, "127.0.0.1", &pki.ca, "wrong-host", "127.0.0.1").await;
}

#[tokio::test]
async fn insecure_skip_verify_accepts_a_certificate_nobody_vouches_for() {
    let pki = make_pki_for("sms-alerts test CA", &["redis.example.internal"]);
    let redis = start_tls_redis(&pki, false, &[]).await;
    let insecure = TlsSettings {
        insecure_skip_verify: true,
        ..TlsSettings::default()
    };
    // Not even the host matches: nothing is checked.
    let queue = tls_queue("127.0.0.1", &redis, &unique_prefix("insecure"), insecure);
    whole_run(&queue, 13, 200).await;

    // The same without the flag: the system roots do not know the test CA.
    let verified = QueueSettings {
        tls: TlsSettings::default(),
        ..queue
    };
    assert_certificate_error(&connect_error(&verified).await, "system roots");
}

/// Runs the binary with `args` after the TLS options and waits for its exit.
async fn run_binary(tls_args: &[String], args: &[&str]) -> std::process::Output {
    let mut command = bin();
    command.args(tls_args).args(args);
    tokio::task::spawn_blocking(move || command.output().expect("the binary runs"))
        .await
        .expect("joins")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_runs_produce_send_monitor_and_audit_over_mutual_tls() {
    let pki = make_pki("sms-alerts test CA");
    let redis = start_tls_redis(&pki, true, &["--requirepass", "cli-secret"]).await;
    let test = "cli-mtls";
    let prefix = unique_prefix(test);
    let password = write(test, "password", "cli-secret\n");
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let path = |p: PathBuf| p.to_str().expect("utf-8").to_owned();
    let tls_args: Vec<String> = vec![
        "--redis-url".into(),
        url.clone(),
        "--prefix".into(),
        prefix.clone(),
        "--redis-password-file".into(),
        path(password),
        "--tls-ca-cert".into(),
        path(write(test, "ca.pem", &pki.ca)),
        "--tls-cert".into(),
        path(write(test, "client.pem", &pki.client_cert)),
        "--tls-key".into(),
        path(write(test, "client.key", &pki.client_key)),
    ];
    for args in [
        &["migrate"][..],
        &["produce", "--count", "400", "--seed", "21"][..],
    ] {
        let out = run_binary(&tls_args, args).await;
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut sender = bin()
        .args(&tls_args)
        .args(["send", "--name", "tls-cli", "--mean", "0ms"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log_path(&format!("{prefix}-sender"))).expect("log"))
        .spawn()
        .expect("sender starts");
    let monitor = run_binary(
        &tls_args,
        &["monitor", "--until-done", "--json", "--interval", "100ms"],
    )
    .await;
    terminate(&sender);
    let status = wait_exit(&mut sender, Duration::from_secs(30)).await;
    assert!(status.success(), "sender: {status:?}");
    let last = String::from_utf8_lossy(&monitor.stdout)
        .lines()
        .last()
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(monitor.status.success(), "monitor: {last}");
    let report: serde_json::Value = serde_json::from_str(&last).expect("JSON line");
    assert_eq!(
        (report["produced"].as_u64(), report["sent"].as_u64()),
        (Some(400), Some(400)),
        "{last}"
    );
    let audit = run_binary(&tls_args, &["audit"]).await;
    let text = String::from_utf8_lossy(&audit.stdout);
    assert!(
        audit.status.success() && text.contains("consistent"),
        "{text}"
    );

    // The same with a CA that did not sign the server's certificate: exit 1,
    // one line that says it is a certificate problem, no password.
    let mut wrong = tls_args.clone();
    let ca_at = wrong.iter().position(|a| a == "--tls-ca-cert").expect("ca") + 1;
    wrong[ca_at] = path(write(test, "other-ca.pem", &make_pki("another CA").ca));
    let refused = run_binary(&wrong, &["audit"]).await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("certificate") && !stderr.contains("cli-secret"),
        "{stderr}"
    );
}
