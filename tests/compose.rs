//! docker-compose.yml: validated by the compose CLI, and run end to end with
//! images built offline (the app from the binary under test, Redis from
//! SMS_TEST_REDIS_IMAGE), since no registry may be reachable for the
//! Dockerfile's base images.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::*;

/// `docker compose` (v2) or `docker-compose` (v1), whichever answers.
fn compose_cli() -> Option<Vec<&'static str>> {
    for cli in [vec!["docker", "compose"], vec!["docker-compose"]] {
        let works = Command::new(cli[0])
            .args(&cli[1..])
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success());
        if works {
            return Some(cli);
        }
    }
    assert!(
        std::env::var("SMS_REQUIRE_COMPOSE").is_err(),
        "no compose CLI, but .ci/test installs docker-compose"
    );
    eprintln!("skipped: neither `docker compose` nor `docker-compose` is installed");
    None
}

fn compose(cli: &[&str], project: &str, env: &[(&str, String)], args: &[&str]) -> Output {
    Command::new(cli[0])
        .args(&cli[1..])
        .args([
            "-f",
            concat!(env!("CARGO_MANIFEST_DIR"), "/docker-compose.yml"),
            "-p",
            project,
        ])
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("compose runs")
}

#[test]
fn the_compose_file_validates_and_its_images_are_configurable() {
    let Some(cli) = compose_cli() else { return };
    let env = [
        ("SMS_REDIS_IMAGE", "mirror.example/redis:7".to_owned()),
        ("SMS_APP_IMAGE", "mirror.example/sms-alerts:1".to_owned()),
    ];
    let output = compose(&cli, "smsvalidate", &env, &["config"]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        text.contains("mirror.example/redis:7") && text.contains("mirror.example/sms-alerts:1"),
        "{text}"
    );
    for service in [
        "redis:",
        "migrate:",
        "produce:",
        "sender-fast:",
        "sender-slow:",
        "sender-flaky:",
        "monitor:",
    ] {
        assert!(text.contains(service), "service {service} missing:\n{text}");
    }
    assert!(text.contains("appendonly"), "Redis runs with AOF:\n{text}");
}

#[test]
fn the_cluster_profile_validates() {
    let Some(cli) = compose_cli() else { return };
    let output = compose(
        &cli,
        "smsvalidate",
        &[],
        &["--profile", "cluster", "config"],
    );
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for n in 1..=6 {
        let node = format!("redis-node-{n}:");
        assert!(text.contains(&node), "cluster node {node} missing:\n{text}");
    }
    for service in [
        "cluster-create:",
        "cluster-migrate:",
        "cluster-produce:",
        "cluster-sender-fast:",
        "cluster-sender-slow:",
        "cluster-monitor:",
    ] {
        assert!(text.contains(service), "service {service} missing:\n{text}");
    }
    for needle in [
        "--cluster-replicas 1",
        "cluster-enabled",
        "--partitions",
        "redis://redis-node-1:6379",
    ] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }
}

/// Takes the stack down (and its volume) however the test ends.
struct Stack {
    cli: Vec<&'static str>,
    project: String,
    image: String,
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = compose(
            &self.cli,
            &self.project,
            &[],
            &["down", "-v", "--remove-orphans"],
        );
        let _ = Command::new("docker")
            .args(["rmi", "-f", &self.image])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_stack_runs_to_the_end() {
    let Some(cli) = compose_cli() else { return };
    let project = format!("smstest{}", std::process::id());
    let image = format!("sms-alerts-test/app:{project}");
    let build = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {dir}/.ci/lib.sh && import_image {image} /usr/local/bin/sms-alerts \
             {bin}:/usr/local/bin/sms-alerts {dir}/config:/etc/sms-alerts",
            dir = env!("CARGO_MANIFEST_DIR"),
            bin = env!("CARGO_BIN_EXE_sms-alerts"),
        ))
        .output()
        .expect("bash runs");
    assert!(
        build.status.success(),
        "{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let stack = Stack {
        cli: cli.clone(),
        project: project.clone(),
        image: image.clone(),
    };
    let port = free_port();
    let (redis_name, redis_tag) = redis_image();
    let env = [
        ("SMS_REDIS_IMAGE", format!("{redis_name}:{redis_tag}")),
        ("SMS_APP_IMAGE", image),
        ("SMS_COUNT", "500".to_owned()),
        ("SMS_METRICS_PORT", port.to_string()),
    ];
    let up = compose(&cli, &project, &env, &["up", "--no-build", "-d"]);
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );

    let url = format!("http://127.0.0.1:{port}/metrics");
    let mut last = String::new();
    wait_until(
        "the stack settles all 500 messages",
        Duration::from_secs(120),
        || {
            let url = url.clone();
            last = std::thread::spawn(move || {
                ureq::get(&url)
                    .call()
                    .ok()
                    .and_then(|mut r| r.body_mut().read_to_string().ok())
            })
            .join()
            .ok()
            .flatten()
            .unwrap_or_default();
            let value = |name: &str| {
                last.lines()
                    .find_map(|l| {
                        l.strip_prefix(name)
                            .and_then(|v| v.trim().parse::<u64>().ok())
                    })
                    .unwrap_or(0)
            };
            let dead: u64 = last
                .lines()
                .filter(|l| l.starts_with("sms_dead_total{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum();
            let done = value("sms_sent_total ") + dead == 500 && value("sms_pending ") == 0;
            async move { done }
        },
    )
    .await;
    for sender in ["fast", "flaky"] {
        assert!(
            last.lines().any(|l| l.starts_with("sms_sender_sent_total{")
                && l.contains(&format!("sender=\"{sender}\""))),
            "{last}"
        );
    }
    let ps = compose(&cli, &project, &env, &["ps"]);
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(
        ps.lines()
            .any(|l| l.contains("migrate") && l.contains("Exit 0"))
            || ps.contains("exited (0)"),
        "{ps}"
    );
    drop(stack);
}
