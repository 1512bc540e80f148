//! Value types of the settings: what an option's value means to the program.
//! The command line and the files parse into these; the layers that use them
//! (the sender's simulation, the monitor's alerts, the bench, logging) import
//! them from here.

use std::time::Duration;

use clap::ValueEnum;

/// Shape of the simulated send-time distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Distribution {
    /// Normal around the mean with the given standard deviation, truncated at 0.
    Normal,
    /// Exponential with the given mean (memoryless, long tail).
    Exponential,
    /// Uniform over mean ± stddev·√3 (so its standard deviation is stddev), truncated at 0.
    Uniform,
    /// Always exactly the mean.
    Constant,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// When a log file is rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogRotation {
    /// A new file every minute (for testing rotation).
    Minutely,
    /// A new file every hour.
    Hourly,
    /// A new file every day.
    Daily,
    /// One file, never rotated.
    Never,
}

/// What the monitor alerts on; `None` turns a rule off.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AlertRules {
    /// Alert when failed / attempts over the last interval exceeds this.
    pub failure_rate: Option<f64>,
    /// Alert when nothing was settled for this long while messages wait.
    pub stalled_after: Option<Duration>,
    /// Alert when a group keeps entries this long beyond the retention.
    pub held_back: Duration,
}

/// A dead letter as an operator names it: `ID`, an id of a dead stream, or
/// `P/ID`, the id in partition P's dead stream (ids of two partitions may
/// be equal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterId {
    /// The partition named, if any.
    pub partition: Option<u32>,
    /// The dead stream's entry id.
    pub id: String,
}

impl std::str::FromStr for DeadLetterId {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        let (partition, id) = match value.split_once('/') {
            Some((partition, id)) => (Some(partition.parse::<u32>().ok()), id),
            None => (None, value),
        };
        let is_id = super::check::stream_id(id).is_ok();
        match partition {
            Some(Some(partition)) if is_id => Ok(Self {
                partition: Some(partition),
                id: id.to_owned(),
            }),
            None if is_id => Ok(Self {
                partition: None,
                id: id.to_owned(),
            }),
            _ => Err(
                "expected a dead letter id such as 1700000000000-0, or 2/1700000000000-0 for \
                 partition 2's"
                    .to_owned(),
            ),
        }
    }
}

impl std::fmt::Display for DeadLetterId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.partition {
            Some(partition) => write!(f, "{partition}/{}", self.id),
            None => f.write_str(&self.id),
        }
    }
}

/// How much work each part of the bench does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BenchSizes {
    /// Messages of the produce and drain runs (and XADDs of the ceiling).
    pub messages: u64,
    /// Messages of the simulation-efficiency run.
    pub simulation: u64,
    /// Entries pending when the cost of a claim call is measured.
    pub reclaim_pending: u64,
    /// Messages of the continuous runs with retention 0s and forever.
    pub retention: u64,
    /// With a partition count, the bench compares partitions instead:
    /// one partition and this many on one Redis, and this many on a cluster.
    pub partitions: Option<u32>,
    /// The primaries of that cluster.
    pub cluster: u32,
}

/// Default messages of the bench's produce and drain runs.
pub const DEFAULT_BENCH_MESSAGES: u64 = 1_000_000;
/// Default messages of the bench's simulation-efficiency run.
pub const DEFAULT_BENCH_SIMULATION: u64 = 200_000;
/// Default entries pending while the bench measures a claim call.
pub const DEFAULT_BENCH_RECLAIM_PENDING: u64 = 2_000_000;
/// Default messages of the bench's continuous retention runs.
pub const DEFAULT_BENCH_RETENTION: u64 = 5_000_000;

impl Default for BenchSizes {
    fn default() -> Self {
        Self {
            messages: DEFAULT_BENCH_MESSAGES,
            simulation: DEFAULT_BENCH_SIMULATION,
            reclaim_pending: DEFAULT_BENCH_RECLAIM_PENDING,
            retention: DEFAULT_BENCH_RETENTION,
            partitions: None,
            cluster: 3,
        }
    }
}
