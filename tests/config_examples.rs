//! Every example settings file in config/ parses, uses only known keys and
//! passes validation. (Demo scenarios in config/scenarios/ are another format,
//! checked in tests/demo.rs.)

use sms_alerts::cli::{Env, parse_from};
use sms_alerts::settings::Task;

fn config_files(dir: &std::path::Path, found: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("config/ is readable") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "scenarios") {
                config_files(&path, found);
            }
        } else if path.extension().is_some_and(|e| e == "toml") {
            found.push(path);
        }
    }
}

#[test]
fn every_example_config_is_valid_for_every_subcommand() {
    let mut files = Vec::new();
    config_files(
        &std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config"),
        &mut files,
    );
    assert!(files.len() >= 4, "examples found: {files:?}");
    for file in files {
        let path = file.to_str().expect("utf-8 path");
        for subcommand in ["migrate", "produce", "send", "monitor"] {
            let resolved = parse_from(
                ["sms-alerts", "--config", path, subcommand],
                &Env::default(),
            )
            .unwrap_or_else(|err| panic!("{path} is not valid for {subcommand}: {err}"));
            if let Task::Send(send) = resolved.task {
                assert!(send.concurrency >= 1 && send.max_attempts >= 1);
            }
        }
    }
}
