//! One report: the figures of a snapshot, rates over the last interval,
//! percentiles, per-sender rows and alerts, as a text line or a JSON object.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::Serialize;

use crate::latency::Histogram;
use crate::stats::{Memory, QueueState, SenderSnapshot, Snapshot};
use crate::store::{Retention, RunInfo};

/// Each sender's messages sent, by channel and name: what the next
/// report's rates are measured against.
pub type SentBySender = HashMap<(String, String), u64>;

/// The senders' sent counts now, for the next report's rates.
pub fn sent_by_sender(senders: &[SenderSnapshot]) -> SentBySender {
    senders
        .iter()
        .map(|s| ((s.channel.clone(), s.name.clone()), s.sent))
        .collect()
}

/// One sender's row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SenderRow {
    /// The sender name.
    pub name: String,
    /// Messages it sent.
    pub sent: u64,
    /// Its failed attempts.
    pub failed: u64,
    /// Messages it dead-lettered.
    pub dead: u64,
    /// Messages it holds now.
    pub pending: u64,
    /// Its mean send time per attempt, in milliseconds.
    pub avg_send_ms: Option<f64>,
    /// Its median send time, in milliseconds.
    pub p50_ms: Option<f64>,
    /// Its 95th percentile send time, in milliseconds.
    pub p95_ms: Option<f64>,
    /// Its 99th percentile send time, in milliseconds.
    pub p99_ms: Option<f64>,
    /// Messages it sent per second over the last interval.
    pub rate_per_s: f64,
    /// The gateway it sends through (empty when it published none).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub gateway: String,
    /// Its gateway's breaker: closed, open or half_open.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub breaker: String,
    /// Times its breaker opened.
    pub breaker_opened: u64,
    /// Its channel.
    pub channel: String,
}

/// One gateway's row: its senders' figures added up. Senders that named
/// no gateway send through `default`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GatewayRow {
    /// The gateway.
    pub name: String,
    /// The channels its senders serve.
    pub channels: Vec<String>,
    /// Its senders.
    pub senders: u64,
    /// Messages its senders sent.
    pub sent: u64,
    /// Its senders' failed attempts.
    pub failed: u64,
    /// Messages its senders dead-lettered.
    pub dead: u64,
    /// Messages its senders hold.
    pub pending: u64,
    /// Messages its senders sent per second over the last interval.
    pub rate_per_s: f64,
    /// Its senders' breakers, counted by state.
    pub breakers: BTreeMap<String, u64>,
    /// Median send time through it, in milliseconds.
    pub p50_ms: Option<f64>,
    /// 95th percentile send time through it, in milliseconds.
    pub p95_ms: Option<f64>,
    /// 99th percentile send time through it, in milliseconds.
    pub p99_ms: Option<f64>,
}

impl GatewayRow {
    /// The senders' rows summed by gateway, with the percentiles of their
    /// histograms merged; `rows` and `senders` are in the same order.
    fn sum(senders: &[SenderSnapshot], rows: &[SenderRow]) -> Vec<Self> {
        let mut by_name: BTreeMap<&str, (Self, Histogram)> = BTreeMap::new();
        for (sender, row) in senders.iter().zip(rows) {
            let name = if sender.gateway.is_empty() {
                "default"
            } else {
                sender.gateway.as_str()
            };
            let (gateway, latency) = by_name.entry(name).or_insert_with(|| {
                let row = Self {
                    name: name.to_owned(),
                    channels: Vec::new(),
                    senders: 0,
                    sent: 0,
                    failed: 0,
                    dead: 0,
                    pending: 0,
                    rate_per_s: 0.0,
                    breakers: BTreeMap::new(),
                    p50_ms: None,
                    p95_ms: None,
                    p99_ms: None,
                };
                (row, Histogram::default())
            });
            if !gateway.channels.contains(&sender.channel) {
                gateway.channels.push(sender.channel.clone());
            }
            gateway.senders += 1;
            gateway.sent += sender.sent;
            gateway.failed += sender.failed;
            gateway.dead += sender.dead;
            gateway.pending += sender.pending;
            gateway.rate_per_s = round(gateway.rate_per_s + row.rate_per_s, 1);
            if !sender.breaker.is_empty() {
                *gateway.breakers.entry(sender.breaker.clone()).or_default() += 1;
            }
            latency.merge(&sender.latency);
        }
        by_name
            .into_values()
            .map(|(mut gateway, latency)| {
                [gateway.p50_ms, gateway.p95_ms, gateway.p99_ms] = percentiles(&latency);
                gateway
            })
            .collect()
    }
}

/// The 50th, 95th and 99th percentiles of `latency`, in milliseconds.
fn percentiles(latency: &Histogram) -> [Option<f64>; 3] {
    [0.50, 0.95, 0.99].map(|q| latency.quantile_ms(q).map(|ms| round(ms, 3)))
}

/// One partition's row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionRow {
    /// The partition.
    pub partition: u32,
    /// Entries ever added to its stream.
    pub produced: u64,
    /// Its messages sent, each counted once.
    pub sent: u64,
    /// Its failed send attempts.
    pub failed: u64,
    /// Its messages moved to its dead stream.
    pub dead: u64,
    /// Its messages delivered and not yet settled.
    pub pending: u64,
    /// Its entries not delivered yet (`null` when Redis cannot tell).
    pub lag: Option<u64>,
    /// Age of its oldest message never delivered, in ms.
    pub oldest_queued_age_ms: Option<u64>,
    /// Age of its oldest pending message, in ms.
    pub oldest_pending_age_ms: Option<u64>,
}

impl PartitionRow {
    fn new(partition: u32, s: &Snapshot) -> Self {
        Self {
            partition,
            produced: s.produced,
            sent: s.sent,
            failed: s.failed,
            dead: s.dead,
            pending: s.pending,
            lag: s.lag,
            oldest_queued_age_ms: s.oldest_queued_age_ms,
            oldest_pending_age_ms: s.oldest_pending_age_ms,
        }
    }

    /// One human-readable line, indented under the totals line.
    pub fn to_text(&self) -> String {
        format!(
            "  partition {}: produced {} | sent {} | failed {} | dead {} | pending {} | queued {} | {}",
            self.partition,
            self.produced,
            self.sent,
            self.failed,
            self.dead,
            self.pending,
            lag_text(self.lag),
            ages_text(self.oldest_queued_age_ms, self.oldest_pending_age_ms)
        )
    }
}

/// A lag as shown: the number, or `unknown`.
fn lag_text(lag: Option<u64>) -> String {
    lag.map_or_else(|| "unknown".to_owned(), |lag| lag.to_string())
}

/// Ages as `oldest queued 1.2s, pending 0.3s`.
fn ages_text(queued_ms: Option<u64>, pending_ms: Option<u64>) -> String {
    let age = |ms: Option<u64>| {
        ms.map_or_else(
            || "-".to_owned(),
            |ms| format!("{:.1}s", ms as f64 / 1000.0),
        )
    };
    format!(
        "oldest queued {}, pending {}",
        age(queued_ms),
        age(pending_ms)
    )
}

/// One report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Entries ever added to the stream.
    pub produced: u64,
    /// Messages sent, each counted once.
    pub sent: u64,
    /// Failed send attempts.
    pub failed: u64,
    /// Messages in the dead stream.
    pub dead: u64,
    /// Messages delivered and not yet settled.
    pub pending: u64,
    /// Entries not delivered yet (`null` when Redis cannot tell).
    pub lag: Option<u64>,
    /// Redeliveries of already settled messages.
    pub duplicates: u64,
    /// Send attempts of any outcome.
    pub attempts: u64,
    /// Mean simulated send time per attempt, in milliseconds.
    pub avg_send_ms: Option<f64>,
    /// Median send time, in milliseconds, from the histogram.
    pub p50_ms: Option<f64>,
    /// 95th percentile send time, in milliseconds.
    pub p95_ms: Option<f64>,
    /// 99th percentile send time, in milliseconds.
    pub p99_ms: Option<f64>,
    /// Messages settled (sent or dead) per second over the last interval.
    pub rate_per_s: f64,
    /// Seconds since the monitor started.
    pub elapsed_s: f64,
    /// Whether all the work is done.
    pub done: bool,
    /// Dead letters by reason (max_attempts, malformed, deleted).
    pub dead_by_reason: BTreeMap<&'static str, u64>,
    /// Settled entries removed by retention.
    pub trimmed: u64,
    /// Dead letters removed by their retention.
    pub dead_trimmed: u64,
    /// Dead letters moved back into the stream.
    pub requeued: u64,
    /// How long settled entries are kept, in ms (-1: forever).
    pub retention_ms: Option<i64>,
    /// How long dead letters are kept, in ms (-1: forever).
    pub dead_retention_ms: Option<i64>,
    /// Age of the oldest message never delivered, in ms.
    pub oldest_queued_age_ms: Option<u64>,
    /// Age of the oldest pending message, in ms.
    pub oldest_pending_age_ms: Option<u64>,
    /// Senders whose process is alive.
    pub live_senders: u64,
    /// Whether the queue's state is sound.
    pub state: QueueState,
    /// What is wrong when it is not.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub state_detail: String,
    /// Producer runs not finished: running, stopped or died.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<RunInfo>,
    /// Redis's memory.
    pub memory: Memory,
    /// Per-sender rows (JSON and the live display; empty in plain lines).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub senders: Vec<SenderRow>,
    /// Per-gateway rows, the senders' summed by gateway.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<GatewayRow>,
    /// Alert and resolution lines raised by this report.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<String>,
    /// Each partition's figures, in partition order (the totals above are
    /// their sums; the oldest ages, their largest).
    pub partitions: Vec<PartitionRow>,
    /// The channel the figures above are of.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub channel: String,
    /// Messages the channel settled as nothing for it (no address).
    pub skipped: u64,
    /// Messages `repair` gave up when it re-created a lost group.
    #[serde(skip_serializing_if = "is_zero")]
    pub abandoned: u64,
    /// Messages settled before `repair` re-created lost counters.
    #[serde(skip_serializing_if = "is_zero")]
    pub uncounted: u64,
    /// Messages the channel has to settle: those added since it began.
    pub to_settle: u64,
    /// Times a message waited without spending an attempt (throttled,
    /// breaker open).
    pub deferred: u64,
    /// Every channel's report, by name, when the queue has more than one.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub channels: BTreeMap<String, Report>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn round(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}

impl Report {
    /// The report for `now`, with rates measured against `previous`.
    pub fn new(now: &Snapshot, previous: Option<(&Snapshot, Duration)>, elapsed: Duration) -> Self {
        let rate_per_s = match previous {
            Some((before, dt)) if !dt.is_zero() => {
                now.settled().saturating_sub(before.settled()) as f64 / dt.as_secs_f64()
            }
            _ => 0.0,
        };
        let ms = |value: Option<f64>| value.map(|ms| round(ms, 3));
        let [p50_ms, p95_ms, p99_ms] = percentiles(&now.latency);
        Self {
            produced: now.produced,
            sent: now.sent,
            failed: now.failed,
            dead: now.dead,
            pending: now.pending,
            lag: now.lag,
            duplicates: now.duplicates,
            attempts: now.attempts,
            avg_send_ms: ms(now.avg_send_ms()),
            p50_ms,
            p95_ms,
            p99_ms,
            rate_per_s: round(rate_per_s, 1),
            elapsed_s: round(elapsed.as_secs_f64(), 1),
            done: now.is_done(),
            dead_by_reason: BTreeMap::from([
                ("max_attempts", now.dead_max_attempts),
                ("malformed", now.dead_malformed),
                ("deleted", now.dead_deleted),
                ("expired", now.dead_expired),
            ]),
            trimmed: now.trimmed,
            dead_trimmed: now.dead_trimmed,
            requeued: now.requeued,
            retention_ms: now.retention.map(Retention::to_millis),
            dead_retention_ms: now.dead_retention.map(Retention::to_millis),
            oldest_queued_age_ms: now.oldest_queued_age_ms,
            oldest_pending_age_ms: now.oldest_pending_age_ms,
            live_senders: now.live_senders,
            state: now.state,
            state_detail: now.state_detail.clone(),
            runs: now.open_runs.clone(),
            memory: now.memory.clone(),
            senders: Vec::new(),
            gateways: Vec::new(),
            alerts: Vec::new(),
            partitions: (0..)
                .zip(&now.partitions)
                .map(|(partition, s)| PartitionRow::new(partition, s))
                .collect(),
            channel: now.channel.clone(),
            skipped: now.skipped,
            abandoned: now.abandoned,
            uncounted: now.uncounted,
            to_settle: now.to_settle(),
            deferred: now.deferred,
            channels: now
                .channels
                .iter()
                .map(|(name, channel)| {
                    let before =
                        previous.and_then(|(before, dt)| Some((before.channels.get(name)?, dt)));
                    let mut report = Self::new(channel, before, elapsed);
                    report.done = report.done && now.producers_finished();
                    report.runs.clear();
                    (name.clone(), report)
                })
                .collect(),
        }
    }

    /// Each channel's progress, as ` | sms 900/1000, email 850/1000 (skipped
    /// 100)`; empty for a queue of one channel.
    pub fn channels_text(&self) -> String {
        let parts: Vec<String> = self
            .channels
            .iter()
            .map(|(name, c)| {
                let skipped = if c.skipped > 0 {
                    format!(" (skipped {})", c.skipped)
                } else {
                    String::new()
                };
                format!(
                    "{name} {}/{}{skipped}{}",
                    c.sent + c.dead + c.skipped,
                    c.to_settle,
                    if c.done { " done" } else { "" }
                )
            })
            .collect();
        if parts.is_empty() {
            String::new()
        } else {
            format!(" | channels {}", parts.join(", "))
        }
    }

    /// Adds per-sender rows, with rates against the senders' `previous`
    /// sent counts, and the gateway rows they add up to.
    pub fn with_senders(
        mut self,
        senders: &[SenderSnapshot],
        previous: &SentBySender,
        dt: Option<Duration>,
    ) -> Self {
        self.senders = senders
            .iter()
            .map(|s| {
                let [p50_ms, p95_ms, p99_ms] = percentiles(&s.latency);
                SenderRow {
                    name: s.name.clone(),
                    sent: s.sent,
                    failed: s.failed,
                    dead: s.dead,
                    pending: s.pending,
                    avg_send_ms: s.avg_send_ms().map(|ms| round(ms, 3)),
                    p50_ms,
                    p95_ms,
                    p99_ms,
                    gateway: s.gateway.clone(),
                    breaker: s.breaker.clone(),
                    breaker_opened: s.breaker_opened,
                    channel: s.channel.clone(),
                    rate_per_s: match (dt, previous.get(&(s.channel.clone(), s.name.clone()))) {
                        (Some(dt), Some(before)) if !dt.is_zero() => {
                            round(s.sent.saturating_sub(*before) as f64 / dt.as_secs_f64(), 1)
                        }
                        _ => 0.0,
                    },
                }
            })
            .collect();
        self.gateways = GatewayRow::sum(senders, &self.senders);
        self
    }

    /// The percentiles as `p50/p95/p99 a/b/c ms`, or `-`.
    pub fn percentiles_text(&self) -> String {
        match (self.p50_ms, self.p95_ms, self.p99_ms) {
            (Some(a), Some(b), Some(c)) => format!("p50/p95/p99 {a:.1}/{b:.1}/{c:.1} ms"),
            _ => "p50/p95/p99 -".to_owned(),
        }
    }

    /// The ages of the oldest queued and oldest pending messages, as
    /// `oldest queued 1.2s, pending 0.3s`.
    pub fn ages_text(&self) -> String {
        ages_text(self.oldest_queued_age_ms, self.oldest_pending_age_ms)
    }

    /// The senders whose breaker is not closed, as ` | breaker open: a
    /// (gw-1), half_open: b (gw-2)`; empty when none.
    pub fn breakers_text(&self) -> String {
        let tripped: Vec<String> = self
            .senders
            .iter()
            .filter(|s| !s.breaker.is_empty() && s.breaker != "closed")
            .map(|s| format!("{} {} ({})", s.breaker, s.name, s.gateway))
            .collect();
        if tripped.is_empty() {
            String::new()
        } else {
            format!(" | breaker {}", tripped.join(", "))
        }
    }

    /// One human-readable line.
    pub fn to_text(&self) -> String {
        let avg = self
            .avg_send_ms
            .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1} ms"));
        let lag = lag_text(self.lag);
        format!(
            "[{:>7.1}s] produced {} | sent {} | failed {} | dead {} | pending {} | queued {} | duplicates {} | \
             avg {}/msg | {} | {:.1} msg/s | {} | senders {}{}{}{}",
            self.elapsed_s,
            self.produced,
            self.sent,
            self.failed,
            self.dead,
            self.pending,
            lag,
            self.duplicates,
            avg,
            self.percentiles_text(),
            self.rate_per_s,
            self.ages_text(),
            self.live_senders,
            self.breakers_text(),
            self.channels_text(),
            if self.done { " | done" } else { "" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rate_and_text() {
        let before = Snapshot {
            sent: 100,
            ..Snapshot::default()
        };
        let now = Snapshot {
            produced: 1000,
            sent: 300,
            dead: 10,
            attempts: 400,
            send_time_us: 80_000_000,
            ..Snapshot::default()
        };
        let report = Report::new(
            &now,
            Some((&before, Duration::from_secs(2))),
            Duration::from_secs(4),
        );
        assert_eq!(report.rate_per_s, 105.0);
        assert_eq!(report.avg_send_ms, Some(200.0));
        let text = report.to_text();
        assert!(
            text.contains("sent 300") && text.contains("avg 200.0 ms/msg"),
            "{text}"
        );
        let json = serde_json::to_value(&report).expect("serializes");
        assert_eq!(json["avg_send_ms"], 200.0);
    }

    fn sender(name: &str, gateway: &str, breaker: &str, bucket: usize) -> SenderSnapshot {
        let mut latency = Histogram::default();
        latency.counts[bucket] = 10;
        SenderSnapshot {
            name: name.to_owned(),
            sent: 10,
            failed: 1,
            dead: 0,
            attempts: 11,
            send_time_us: 0,
            pending: 2,
            pending_by_partition: vec![2],
            idle_ms: 0,
            live: true,
            gateway: gateway.to_owned(),
            breaker: breaker.to_owned(),
            breaker_opened: 0,
            channel: "sms".to_owned(),
            latency,
        }
    }

    #[test]
    fn gateways_add_up_their_senders_and_merge_their_histograms() {
        let senders = [
            sender("a", "gw", "closed", 0),
            sender("b", "gw", "open", 4),
            sender("c", "", "", 2),
        ];
        let previous = SentBySender::from([
            (("sms".to_owned(), "a".to_owned()), 0),
            (("sms".to_owned(), "b".to_owned()), 5),
        ]);
        let report = Report::new(&Snapshot::default(), None, Duration::ZERO).with_senders(
            &senders,
            &previous,
            Some(Duration::from_secs(1)),
        );
        let [default, gw] = &report.gateways[..] else {
            panic!("two gateways: {:?}", report.gateways)
        };
        assert_eq!(default.name, "default");
        assert_eq!((default.senders, default.sent), (1, 10));
        assert_eq!(default.p50_ms, report.senders[2].p50_ms);
        assert_eq!((gw.senders, gw.sent, gw.failed, gw.pending), (2, 20, 2, 4));
        assert_eq!(gw.rate_per_s, 15.0, "10/s and 5/s");
        assert_eq!(gw.channels, ["sms"]);
        assert_eq!(
            gw.breakers,
            BTreeMap::from([("closed".to_owned(), 1), ("open".to_owned(), 1)])
        );
        // Half the attempts took at most 1 ms, half 10-20 ms: the median is
        // at the top of the first bucket, the p99 in the fifth.
        assert_eq!(report.senders[0].p99_ms, Some(0.99));
        assert_eq!(gw.p50_ms, Some(1.0));
        assert_eq!(gw.p99_ms, Some(19.8));
    }
}
