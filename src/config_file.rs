//! The TOML config file: the layer between the environment and the defaults.
//!
//! Unknown keys are errors, so a typo does not silently fall back to a default.

use std::path::Path;

use serde::Deserialize;

use crate::cli::{Distribution, LogFormat, LogRotation};
use crate::settings::SettingsError;

/// The whole file. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Redis URL.
    pub redis_url: Option<String>,
    /// Key prefix.
    pub prefix: Option<String>,
    /// Consumer group.
    pub group: Option<String>,
    /// Log format.
    pub log_format: Option<LogFormat>,
    /// Log file.
    pub log_file: Option<std::path::PathBuf>,
    /// Log rotation.
    pub log_rotation: Option<LogRotation>,
    /// Rotated log files to keep.
    pub log_keep: Option<i64>,
    /// `[produce]` table.
    #[serde(default)]
    pub produce: ProduceFile,
    /// `[send]` table.
    #[serde(default)]
    pub send: SendFile,
    /// `[monitor]` table.
    #[serde(default)]
    pub monitor: MonitorFile,
}

/// The `[produce]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProduceFile {
    /// Messages to generate.
    pub count: Option<i64>,
    /// Generator seed.
    pub seed: Option<u64>,
    /// Messages per pipelined write.
    pub batch: Option<i64>,
    /// The run's liveness lease.
    pub lease: Option<String>,
}

/// The `[send]` table. Durations are strings such as `"200ms"`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendFile {
    /// Sender name.
    pub name: Option<String>,
    /// Mean send time.
    pub mean: Option<String>,
    /// Standard deviation of the send time.
    pub stddev: Option<String>,
    /// Send-time distribution.
    pub distribution: Option<Distribution>,
    /// Failure probability.
    pub failure_rate: Option<f64>,
    /// Sends in progress at once.
    pub concurrency: Option<i64>,
    /// Deliveries before dead-lettering.
    pub max_attempts: Option<i64>,
    /// Lease.
    pub lease: Option<String>,
    /// Retry backoff.
    pub retry_backoff: Option<String>,
    /// Shutdown deadline.
    pub shutdown_timeout: Option<String>,
    /// Seed.
    pub seed: Option<u64>,
}

/// The `[monitor]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorFile {
    /// Report interval.
    pub interval: Option<String>,
    /// Exit once done.
    pub until_done: Option<bool>,
    /// JSON lines.
    pub json: Option<bool>,
    /// Failure-rate alert threshold.
    pub alert_failure_rate: Option<f64>,
    /// Stalled-progress alert delay.
    pub alert_stalled: Option<String>,
    /// Slack beyond the retention before a group holding trimming back alerts.
    pub alert_held_back: Option<String>,
    /// Address to serve Prometheus metrics on.
    pub metrics_addr: Option<String>,
}

impl ConfigFile {
    /// Reads and parses `path`; any problem is a [`SettingsError`] naming the file.
    pub fn load(path: &Path) -> Result<Self, SettingsError> {
        let text =
            std::fs::read_to_string(path).map_err(|err| SettingsError::ConfigUnreadable {
                path: path.display().to_string(),
                reason: err.to_string(),
            })?;
        Self::parse(&text).map_err(|reason| SettingsError::ConfigUnreadable {
            path: path.display().to_string(),
            reason,
        })
    }

    /// Parses the text of a config file; the error is one line: `line N: what`.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|err| one_line(text, &err))
    }
}

/// A demo scenario: what to produce, the senders to run, how to report.
/// Every key is optional; each sender table takes the keys of `[send]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    /// One line saying what the scenario shows.
    pub description: Option<String>,
    /// `[produce]` table.
    #[serde(default)]
    pub produce: ProduceFile,
    /// `[[senders]]` tables.
    #[serde(default)]
    pub senders: Vec<SendFile>,
    /// `[monitor]` table (`until_done` is always on in a demo).
    #[serde(default)]
    pub monitor: MonitorFile,
}

impl ScenarioFile {
    /// Parses the text of a scenario; the error is one line: `line N: what`.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|err| one_line(text, &err))
    }
}

/// A TOML error as one line naming the line it is on.
fn one_line(text: &str, err: &toml::de::Error) -> String {
    let message = err.message().replace('\n', " ");
    match err.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {}", message.trim())
        }
        None => message.trim().to_owned(),
    }
}
