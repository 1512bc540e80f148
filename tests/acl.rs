//! Least privilege: a Redis user made from `acl::rule` (plus a password) runs
//! every subcommand that talks to Redis, through the binary, and Redis's
//! `ACL LOG` stays empty; a rule missing one command fails naming it. The
//! password shows in no output and no log line.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use sms_alerts::acl;
use sms_alerts::keys::Keys;
use sms_alerts::stats::Snapshot;
use sms_alerts::store::Store;

/// The restricted user's password: it must show nowhere.
const PASSWORD: &str = "acl-Pa55-never-printed";

/// How long one subcommand that ends on its own may take.
const DEADLINE: Duration = Duration::from_secs(60);

/// Creates `user` on `redis` with `rule` and the password, empties the ACL
/// log, and returns the URL that logs in as `user`.
async fn create_user(redis: &TestRedis, user: &str, rule: &str) -> String {
    let mut conn = raw(&redis.url).await;
    let mut setuser = redis::cmd("ACL");
    setuser.arg("SETUSER");
    for word in rule.split_whitespace() {
        setuser.arg(word);
    }
    setuser.arg(format!(">{PASSWORD}"));
    let () = setuser
        .query_async(&mut conn)
        .await
        .unwrap_or_else(|err| panic!("ACL SETUSER {rule}: {err}"));
    let () = redis::cmd("ACL")
        .arg("LOG")
        .arg("RESET")
        .query_async(&mut conn)
        .await
        .expect("ACL LOG RESET");
    format!("redis://{user}:{PASSWORD}@127.0.0.1:{}", redis.port)
}

/// Redis's ACL log: one line per denial (reason, command or key).
async fn acl_log(redis: &TestRedis) -> Vec<String> {
    let entries: Vec<redis::Value> = redis::cmd("ACL")
        .arg("LOG")
        .query_async(&mut raw(&redis.url).await)
        .await
        .expect("ACL LOG");
    entries.iter().map(|entry| format!("{entry:?}")).collect()
}

/// What one run of the binary printed, and how it ended.
struct Ran {
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
}

/// Paths of the stdout and stderr files of run `name`.
fn outputs(prefix: &str, name: &str) -> (PathBuf, PathBuf) {
    (
        log_path(&format!("{prefix}-{name}.out")),
        log_path(&format!("{prefix}-{name}.err")),
    )
}

/// Starts the binary as the user of `url`, logging at info level so that
/// every line it can print is checked for the password.
fn start(url: &str, prefix: &str, name: &str, args: &[&str]) -> KillOnDrop {
    let (out, err) = outputs(prefix, name);
    KillOnDrop(
        bin()
            .env("RUST_LOG", "info")
            .args(["--redis-url", url, "--prefix", prefix])
            .args(args)
            .stdout(std::fs::File::create(out).expect("stdout file"))
            .stderr(std::fs::File::create(err).expect("stderr file"))
            .spawn()
            .expect("the binary starts"),
    )
}

/// Waits for `child` (run `name`) to end, with a deadline; what it printed.
async fn finish(mut child: KillOnDrop, prefix: &str, name: &str) -> Ran {
    let status = wait_exit(&mut child, DEADLINE).await;
    let (out, err) = outputs(prefix, name);
    let ran = Ran {
        status,
        stdout: std::fs::read_to_string(out).expect("stdout"),
        stderr: std::fs::read_to_string(err).expect("stderr"),
    };
    for line in ran.stdout.lines().chain(ran.stderr.lines()) {
        assert!(
            !line.contains(PASSWORD),
            "`{name}` printed the password: {line}"
        );
    }
    ran
}

/// Runs the binary with `args` to its end, which must be a success.
async fn run_ok(url: &str, prefix: &str, args: &[&str]) -> Ran {
    let name = args.join("_").replace(['-', ' '], "");
    let ran = finish(start(url, prefix, &name, args), prefix, &name).await;
    assert!(
        ran.status.success(),
        "`{}` as the restricted user ended with {}:\n{}\n{}",
        args.join(" "),
        ran.status,
        ran.stdout,
        ran.stderr
    );
    ran
}

/// Runs a sender as the user of `url` until every one of `total` messages
/// is sent or dead, then stops it with SIGTERM.
async fn send_all(url: &str, prefix: &str, name: &str, failure_rate: &str, total: u64) {
    let sender = start(
        url,
        prefix,
        name,
        &[
            "send",
            "--name",
            name,
            "--mean",
            "0ms",
            "--failure-rate",
            failure_rate,
            "--max-attempts",
            "1",
            "--seed",
            "5",
        ],
    );
    let store = Store::connect(&queue(url, prefix))
        .await
        .expect("the restricted user connects");
    wait_until("the sender settles every message", DEADLINE, || {
        all_settled(&store, total)
    })
    .await;
    terminate(&sender);
    let ran = finish(sender, prefix, name).await;
    assert!(
        ran.status.success(),
        "{name}: {}\n{}",
        ran.status,
        ran.stderr
    );
}

#[tokio::test]
async fn the_rule_is_enough_for_every_subcommand() {
    let redis = start_redis().await;
    let prefix = unique_prefix("acl");
    let url = create_user(&redis, "sms-app", &acl::rule("sms-app", &prefix)).await;
    let total = 400;

    run_ok(&url, &prefix, &["migrate"]).await;
    let count = total.to_string();
    run_ok(
        &url,
        &prefix,
        &["produce", "--count", &count, "--seed", "3", "--batch", "50"],
    )
    .await;
    send_all(&url, &prefix, "acl-a", "0.3", total).await;
    let listed = run_ok(&url, &prefix, &["dead", "list"]).await;
    assert!(!listed.stdout.trim().is_empty(), "some messages died");
    run_ok(
        &url,
        &prefix,
        &["dead", "requeue", "--reason", "max_attempts"],
    )
    .await;
    let store = Store::connect(&queue(&url, &prefix))
        .await
        .expect("connects");
    let requeued = Snapshot::read(&store).await.expect("snapshot").requeued;
    assert!(requeued > 0, "dead letters were requeued");
    send_all(&url, &prefix, "acl-b", "0", total + requeued).await;
    run_ok(&url, &prefix, &["dead", "purge", "--older-than", "0s"]).await;
    run_ok(&url, &prefix, &["trim"]).await;
    run_ok(&url, &prefix, &["trim", "--json"]).await;
    for args in [
        &["monitor", "--until-done", "--interval", "100ms"][..],
        &["monitor", "--until-done", "--json", "--interval", "100ms"],
        &["audit"],
        &["senders"],
        &["senders", "--json"],
        &["senders", "prune"],
        &["runs"],
        &["runs", "--json"],
        &["repair"],
        &["migrate"],
    ] {
        run_ok(&url, &prefix, args).await;
    }

    let snapshot = Snapshot::read(&store).await.expect("snapshot");
    assert_eq!(
        (snapshot.produced, snapshot.sent, snapshot.pending),
        (total + requeued, total, 0),
        "produced (requeued dead letters included), sent, pending"
    );
    let denied = acl_log(&redis).await;
    assert!(denied.is_empty(), "Redis denied:\n{}", denied.join("\n"));
}

/// Runs the binary with `args` to its end, which must be a failure with
/// exit code 1 (not 3: a denial is no damaged queue); its stderr.
async fn run_denied(url: &str, prefix: &str, name: &str, args: &[&str]) -> String {
    let ran = finish(start(url, prefix, name, args), prefix, name).await;
    assert_eq!(
        ran.status.code(),
        Some(1),
        "`{}` without a permission must fail with 1:\n{}",
        args.join(" "),
        ran.stderr
    );
    ran.stderr
}

#[tokio::test]
async fn a_command_missing_from_the_rule_is_named_in_the_error() {
    let redis = start_redis().await;

    // migrate without FUNCTION LOAD, first (the library is loaded once for
    // every prefix): it fails, and records no migration.
    let prefix = unique_prefix("acl-noload");
    let rule = format!("{} -function|load", acl::rule("sms-noload", &prefix));
    let url = create_user(&redis, "sms-noload", &rule).await;
    let stderr = run_denied(&url, &prefix, "migrate", &["migrate"]).await;
    assert!(stderr.contains("'function|load'"), "{stderr}");
    let recorded: Vec<String> = redis::cmd("HKEYS")
        .arg(Keys::new(&prefix).migrations())
        .query_async(&mut raw(&redis.url).await)
        .await
        .expect("HKEYS migrations");
    assert!(
        recorded.is_empty(),
        "recorded though not loaded: {recorded:?}"
    );

    // A command sms-alerts sends itself: Redis names it.
    let prefix = unique_prefix("acl-nofcall");
    let rule = format!("{} -fcall", acl::rule("sms-nofcall", &prefix));
    let url = create_user(&redis, "sms-nofcall", &rule).await;
    let stderr = run_denied(&url, &prefix, "migrate", &["migrate"]).await;
    assert!(
        stderr.contains("'fcall'") && stderr.contains("ACL"),
        "the error names the command: {stderr}"
    );

    // A command inside a Function: Redis 7.0 names the Function, and its
    // ACL LOG the command. The sender keeps its results and retries the
    // write (an operator can mend the rule meanwhile): read its log.
    let prefix = unique_prefix("acl-noxack");
    let rule = format!("{} -xack", acl::rule("sms-noxack", &prefix));
    let url = create_user(&redis, "sms-noxack", &rule).await;
    run_ok(&url, &prefix, &["migrate"]).await;
    run_ok(&url, &prefix, &["produce", "--count", "20", "--seed", "4"]).await;
    let args = ["send", "--name", "noxack", "--mean", "0ms"];
    let _sender = start(&url, &prefix, "noxack", &args);
    let (_, log) = outputs(&prefix, "noxack");
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("the sender logs the denial", DEADLINE, || async {
        logged().contains("Redis refused sms_settle to this user (ACL)")
    })
    .await;
    assert!(!logged().contains(PASSWORD), "{}", logged());
    let denied = acl_log(&redis).await;
    assert!(
        denied.iter().any(|entry| entry.contains("xack")),
        "Redis's ACL LOG names the command: {denied:?}"
    );
}
