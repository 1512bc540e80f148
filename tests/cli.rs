//! Bad input exits 2 with one line naming the option and the value; an
//! unreachable Redis exits 1 naming the URL without its password. None of these
//! need Redis.

mod common;

use common::bin;

fn run(args: &[&str]) -> (Option<i32>, String) {
    let output = bin().args(args).output().expect("the binary runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn assert_usage_error(args: &[&str], must_name: &[&str]) {
    let (code, stderr) = run(args);
    assert_eq!(code, Some(2), "{args:?} should exit 2; stderr: {stderr}");
    for needle in must_name {
        assert!(
            stderr.contains(needle),
            "{args:?}: stderr should name {needle:?}: {stderr}"
        );
    }
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{args:?}: {stderr}"
    );
}

#[test]
fn every_bad_flag_exits_2_naming_option_and_value() {
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["send", "--failure-rate", "1.5"],
            &["--failure-rate", "1.5"],
        ),
        (
            &["send", "--failure-rate", "-0.1"],
            &["--failure-rate", "-0.1"],
        ),
        (&["send", "--mean", "-5ms"], &["--mean", "-5ms"]),
        (&["send", "--stddev", "-1ms"], &["--stddev", "-1ms"]),
        (&["send", "--mean", "5 parsecs"], &["--mean", "5 parsecs"]),
        (&["send", "--concurrency", "0"], &["--concurrency", "0"]),
        (&["send", "--max-attempts", "0"], &["--max-attempts", "0"]),
        (
            &["send", "--distribution", "pareto"],
            &["--distribution", "pareto"],
        ),
        (
            &["send", "--lease", "1s", "--retry-backoff", "5s"],
            &["--retry-backoff", "5s"],
        ),
        (&["produce", "--count", "0"], &["--count", "0"]),
        (&["produce", "--count", "many"], &["--count", "many"]),
        (&["monitor", "--interval", "soon"], &["--interval", "soon"]),
        (&["--prefix", "a b", "migrate"], &["--prefix", "a b"]),
        (
            &["send", "--outage-every", "5s", "--outage-for", "10s"],
            &["--outage-for", "10s"],
        ),
        (&["serve", "--max-body", "12"], &["--max-body", "12"]),
        (
            &["serve", "--idempotency-ttl", "90d"],
            &["--idempotency-ttl", "90d"],
        ),
        (
            &["dead", "requeue", "--reason", "nope"],
            &["--reason", "nope", "expired"],
        ),
        (
            &["dead", "list", "--reason", "max-attempts"],
            &["--reason", "max-attempts", "max_attempts"],
        ),
        (&["produce", "--key", ""], &["--key", "1 to 255 bytes"]),
        (
            &["--log-keep", "0", "migrate"],
            &["--log-keep", "log files to keep"],
        ),
        (
            &["migrate", "--channels", "sms,email,sms"],
            &["--channels", "'sms' is listed twice"],
        ),
        (
            &["serve", "--channels", "email,email:email"],
            &["--channels", "'email' is listed twice"],
        ),
    ];
    for (args, names) in cases {
        assert_usage_error(args, names);
    }
}

#[test]
fn bad_environment_values_are_usage_errors_too() {
    let output = bin()
        .args(["send"])
        .env("SMS_FAILURE_RATE", "2")
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--failure-rate") && stderr.contains('2'),
        "{stderr}"
    );
}

#[test]
fn config_file_problems_exit_2_naming_the_file_and_key() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let unknown = dir.join("cli-unknown-key.toml");
    std::fs::write(&unknown, "[send]\nfailure_rat = 0.2\n").expect("write");
    let bad_value = dir.join("cli-bad-value.toml");
    std::fs::write(&bad_value, "[send]\nconcurrency = 0\n").expect("write");
    let broken = dir.join("cli-broken.toml");
    std::fs::write(&broken, "[send\nmean = ").expect("write");

    let path = |p: &std::path::Path| p.to_str().expect("utf-8").to_owned();
    assert_usage_error(
        &["--config", "/nonexistent/sms.toml", "send"],
        &["/nonexistent/sms.toml"],
    );
    assert_usage_error(
        &["--config", &path(&unknown), "send"],
        &["failure_rat", "cli-unknown-key.toml"],
    );
    assert_usage_error(
        &["--config", &path(&bad_value), "send"],
        &["send.concurrency", "'0'"],
    );
    assert_usage_error(&["--config", &path(&broken), "send"], &["cli-broken.toml"]);
}

#[test]
fn an_unreachable_redis_exits_1_naming_the_url_without_its_password() {
    let port = common::free_port();
    let url = format!("redis://:hunter2@127.0.0.1:{port}");
    let (code, stderr) = run(&["--redis-url", &url, "migrate"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("redis://:***@127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "the password leaked: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}

#[test]
fn every_option_is_explained_in_help() {
    let output = bin().args(["send", "--help"]).output().expect("runs");
    let help = String::from_utf8_lossy(&output.stdout);
    for option in [
        "--name",
        "--mean",
        "--stddev",
        "--distribution",
        "--failure-rate",
        "--concurrency",
        "--max-attempts",
        "--lease",
        "--retry-backoff",
        "--shutdown-timeout",
        "--seed",
        "--redis-url",
        "--prefix",
        "--channel",
        "--config",
        "--log-format",
        "SMS_MEAN",
    ] {
        assert!(help.contains(option), "send --help lacks {option}:\n{help}");
    }
}

#[test]
fn shell_completions_are_generated() {
    for shell in ["bash", "zsh", "fish"] {
        let output = bin().args(["completions", shell]).output().expect("runs");
        let script = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{shell}: {:?}", output.status);
        assert!(
            script.contains("sms-alerts") && script.contains("failure-rate"),
            "{shell}: {script}"
        );
    }
    assert_usage_error(&["completions", "powershell7"], &["powershell7"]);
}

#[test]
fn logs_go_to_a_rotated_file_when_asked() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("logs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let log = dir.join("sms.log");
    let output = bin()
        .args([
            "--log-file",
            log.to_str().expect("utf-8"),
            "--log-format",
            "json",
            "demo",
        ])
        .env("RUST_LOG", "info")
        .output()
        .expect("runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.stderr.is_empty(),
        "logs went to the file, not stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let files: Vec<_> = std::fs::read_dir(&dir)
        .expect("log dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0]
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(
        name.starts_with("sms.log."),
        "rotated files carry the date: {name}"
    );
    let text = std::fs::read_to_string(&files[0]).expect("log text");
    let first: serde_json::Value =
        serde_json::from_str(text.lines().next().expect("a line")).expect("json lines");
    assert!(first.get("level").is_some(), "{first}");
    assert!(text.contains("sender started"), "{text}");
}

#[test]
fn the_environment_beats_the_config_file() {
    let file = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-env-vs-file.toml");
    std::fs::write(&file, "[send]\nretry_backoff = \"500ms\"\n").expect("write");
    // Only the environment's 2s backoff conflicts with the 1s lease: the exit 2
    // naming it shows the environment won over the file's 500ms.
    let output = bin()
        .args([
            "--config",
            file.to_str().expect("utf-8"),
            "send",
            "--lease",
            "1s",
        ])
        .env("SMS_RETRY_BACKOFF", "2s")
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--retry-backoff") && stderr.contains("'2s'"),
        "{stderr}"
    );
}

/// Runs bash's completion function of the generated script on `words` (the
/// last one being completed) and returns the candidates.
fn complete(words: &[&str]) -> Vec<String> {
    let script = bin()
        .args(["completions", "bash"])
        .output()
        .expect("the binary runs");
    assert!(script.status.success());
    let path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("sms-alerts.bash");
    std::fs::write(&path, &script.stdout).expect("write the script");
    let line = format!(
        "source {path}; COMP_WORDS=({words}); COMP_CWORD={cword}; \
         _sms__alerts sms-alerts {cur} {prev}; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        path = path.display(),
        words = words.join(" "),
        cword = words.len() - 1,
        cur = words[words.len() - 1],
        prev = words[words.len() - 2],
    );
    let output = std::process::Command::new("bash")
        .args(["-c", &line])
        .output()
        .expect("bash runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn bash_completes_options_after_a_subcommand() {
    let send = complete(&["sms-alerts", "send", "--fail"]);
    assert_eq!(send, ["--failure-rate"], "after `send`");
    let list = complete(&["sms-alerts", "dead", "list", "--li"]);
    assert_eq!(list, ["--limit"], "after `dead list`");
    let top = complete(&["sms-alerts", "mon"]);
    assert_eq!(top, ["monitor"], "subcommand names");
}
