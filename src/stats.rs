//! A point-in-time view of the queue, read in one round trip per partition
//! (all at once), with the figures derived from it. Averages come from sums
//! and counts; no float lives in Redis. How the partitions' figures make the
//! queue's is `stats/partitions.rs`.

mod partitions;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::latency::Histogram;
use crate::store::{Retention, RunInfo, RunState, SnapshotFields, Store, StoreError};

/// Whether the queue's state is sound, as the last snapshot found it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueState {
    /// Identity, keys and counters in place.
    #[default]
    Sound,
    /// The queue identity is gone (flushed, restarted empty, another Redis).
    Lost,
    /// The queue was created anew since this process started.
    Changed,
    /// The consumer group (or the stream) is gone.
    GroupGone,
    /// A key has the wrong type or a counter is not a number.
    Damaged,
}

impl QueueState {
    fn from_code(code: i64) -> Self {
        match code {
            0 => Self::Sound,
            1 => Self::Lost,
            2 => Self::Changed,
            3 => Self::GroupGone,
            _ => Self::Damaged,
        }
    }

    /// Whether the state was lost (rather than damaged).
    pub fn is_lost(self) -> bool {
        matches!(self, Self::Lost | Self::Changed)
    }
}

/// Redis's memory, from `INFO memory`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Memory {
    /// Bytes in use.
    pub used: u64,
    /// The limit (`maxmemory`); 0 for none.
    pub max: u64,
    /// What Redis does at the limit (`maxmemory-policy`).
    pub policy: String,
}

impl Memory {
    /// From the text of `INFO memory`.
    pub fn from_info(info: &str) -> Self {
        let field = |name: &str| {
            info.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        Self {
            used: field("used_memory")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            max: field("maxmemory").and_then(|v| v.parse().ok()).unwrap_or(0),
            policy: field("maxmemory_policy").unwrap_or_default().to_owned(),
        }
    }

    /// Whether writes may be refused: at least 95% of a set limit in use.
    pub fn is_full(&self) -> bool {
        self.max > 0 && self.used.saturating_mul(100) >= self.max.saturating_mul(95)
    }
}

/// Counters and queue figures at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    /// Entries ever added to the stream, by anyone (XINFO STREAM entries-added).
    pub produced: u64,
    /// Messages our producers recorded writing.
    pub produced_by_producers: u64,
    /// Entries in the stream now.
    pub stream_length: u64,
    /// Messages acknowledged as sent, each counted once.
    pub sent: u64,
    /// Failed send attempts.
    pub failed: u64,
    /// Messages moved to the dead stream.
    pub dead: u64,
    /// Messages dead-lettered because their attempts ran out.
    pub dead_max_attempts: u64,
    /// Messages dead-lettered because they could not be decoded.
    pub dead_malformed: u64,
    /// Messages dead-lettered because they were deleted while pending.
    pub dead_deleted: u64,
    /// Successful sends of messages already settled (redeliveries).
    pub duplicates: u64,
    /// Send attempts of any outcome.
    pub attempts: u64,
    /// Sum of all attempts' simulated send times, in microseconds.
    pub send_time_us: u64,
    /// Entries delivered to a sender and not yet settled.
    pub pending: u64,
    /// Entries never delivered yet; `None` when Redis cannot tell.
    pub lag: Option<u64>,
    /// Whether the consumer group exists.
    pub group_exists: bool,
    /// Length of the dead stream.
    pub dead_length: u64,
    /// Settled entries removed by retention.
    pub trimmed: u64,
    /// Dead letters removed by the dead stream's retention.
    pub dead_trimmed: u64,
    /// Dead letters removed by `dead purge`.
    pub dead_purged: u64,
    /// Dead letters moved back into the stream.
    pub requeued: u64,
    /// Messages `repair` gave up when it re-created a lost group.
    pub abandoned: u64,
    /// Messages settled before `repair` re-created lost counters: sent,
    /// skipped, abandoned or (on a channel) added before it began, which
    /// is no longer known.
    pub uncounted: u64,
    /// Messages the channel settled as nothing for it (no address of its
    /// kind, or requeued for another channel).
    pub skipped: u64,
    /// Times a message was set back to wait without spending an attempt
    /// (throttled, or its gateway's breaker open).
    pub deferred: u64,
    /// Messages dead-lettered because they were older than their age limit.
    pub dead_expired: u64,
    /// The channel's dead letters moved back into the stream.
    pub dead_requeued: u64,
    /// Entries added before the channel began, which it never sees.
    pub unseen: u64,
    /// Send times of all attempts, by bucket.
    pub latency: Histogram,
    /// How long settled entries are kept; `None` when the queue has no identity.
    #[serde(serialize_with = "serialize_retention")]
    pub retention: Option<Retention>,
    /// How long dead letters are kept.
    #[serde(serialize_with = "serialize_retention")]
    pub dead_retention: Option<Retention>,
    /// Age of the oldest message never delivered, in ms.
    pub oldest_queued_age_ms: Option<u64>,
    /// Age of the oldest pending message, in ms.
    pub oldest_pending_age_ms: Option<u64>,
    /// The group that holds trimming back the most, and the age of the
    /// oldest entry it still needs, in ms.
    pub floor: Option<(String, u64)>,
    /// Whether the queue's state is sound.
    pub state: QueueState,
    /// What is wrong when it is not.
    pub state_detail: String,
    /// The queue's epoch.
    pub epoch: String,
    /// Producer runs not finished (running, stopped or died).
    pub open_runs: Vec<RunInfo>,
    /// Whether any producer run is recorded at all.
    pub any_run: bool,
    /// Senders whose process is alive (it holds its name's lease).
    pub live_senders: u64,
    /// Redis's memory.
    pub memory: Memory,
    /// The channel these figures are of.
    pub channel: String,
    /// Every channel's figures, by name, when the queue has more than one
    /// (the fields above are the first channel's, or the one asked for).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub channels: BTreeMap<String, Snapshot>,
    /// Each partition's own figures, in partition order (the index is the
    /// partition); the queue-wide ones (runs, live senders, memory) are left
    /// empty there. The fields above are their totals. Empty in a
    /// partition's own snapshot.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<Snapshot>,
}

fn serialize_retention<S: serde::Serializer>(
    value: &Option<Retention>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        None => serializer.serialize_none(),
        Some(Retention::Forever) => serializer.serialize_i64(-1),
        Some(Retention::Keep(age)) => serializer.serialize_u64(age.as_millis() as u64),
    }
}

impl Snapshot {
    /// Reads a snapshot of the whole queue: a few round trips whatever its
    /// size (the open producer runs, one Function call per partition for the
    /// counters and figures, every partition at once, then the live senders
    /// and Redis's memory). Nothing is written.
    ///
    /// The runs are read before the figures, so that every message of a run
    /// seen ended is counted in them: read after, a run that started and
    /// ended in between would look finished while its messages were not
    /// counted, and `--until-done` would end before they were sent.
    pub async fn read(store: &Store) -> Result<Self, StoreError> {
        let home = store.partition(0).inspector();
        let (open_runs, any_run) = home.open_runs().await?;
        let mut channels = BTreeMap::new();
        let mut own = None;
        let many = store.channels().len() > 1;
        let every = if many {
            store.every_channel()
        } else {
            vec![store.clone()]
        };
        for channel in every {
            let parts = channel
                .each_partition(|partition| async move { Self::read_partition(&partition).await })
                .await?;
            let mut snapshot = Self::total(parts);
            snapshot.channel = channel.group().to_owned();
            snapshot.live_senders = partitions::live_sender_count(&channel).await?;
            if channel.group() == store.group() {
                own = Some(snapshot.clone());
            }
            if many {
                channels.insert(snapshot.channel.clone(), snapshot);
            }
        }
        let mut snapshot = own.unwrap_or_default();
        for (name, channel) in &channels {
            if snapshot.state == QueueState::Sound && channel.state != QueueState::Sound {
                snapshot.state = channel.state;
                snapshot.state_detail = format!("channel {name}: {}", channel.state_detail);
            }
        }
        snapshot.channels = channels;
        (snapshot.open_runs, snapshot.any_run) = (open_runs, any_run);
        snapshot.memory = Memory::from_info(&home.info("memory").await?);
        Ok(snapshot)
    }

    /// The snapshot and every channel's senders of the queue as it is now,
    /// with the partitions and channels added since `store` was made (see
    /// [`Store::watched`]), for the reports of long-running processes.
    pub async fn read_watched(store: &Store) -> Result<(Self, Vec<SenderSnapshot>), StoreError> {
        let store = store.watched().await?;
        let snapshot = Self::read(&store).await?;
        let senders = SenderSnapshot::read_every_channel(&store).await?;
        Ok((snapshot, senders))
    }

    /// The figures of the handle's own partition alone (one Function call):
    /// no runs, live senders or memory, no `partitions`.
    pub async fn read_partition(store: &Store) -> Result<Self, StoreError> {
        Ok(Self::from_fields(
            &store.inspector().snapshot_fields().await?,
        ))
    }

    /// Builds a snapshot from the named figures `sms_snapshot` returns.
    pub fn from_fields(fields: &SnapshotFields) -> Self {
        let numbers = &fields.numbers;
        let get = |name: &str| numbers.get(name).copied().unwrap_or(0).max(0) as u64;
        let known = |name: &str| numbers.get(name).and_then(|n| u64::try_from(*n).ok());
        let now_ms = get("now_ms");
        let age = |name: &str| known(name).map(|at| now_ms.saturating_sub(at));
        let retention = |name: &str| {
            numbers
                .get(name)
                .filter(|ms| **ms != -2)
                .map(|ms| Retention::from_millis(*ms))
        };
        let text = |name: &str| fields.texts.get(name).cloned().unwrap_or_default();
        let floor_group = text("floor_group");
        Self {
            produced: get("entries_added"),
            produced_by_producers: get("produced"),
            stream_length: get("length"),
            sent: get("sent"),
            failed: get("failed"),
            dead: get("dead"),
            dead_max_attempts: get("dead_max_attempts"),
            dead_malformed: get("dead_malformed"),
            dead_deleted: get("dead_deleted"),
            duplicates: get("duplicates"),
            attempts: get("attempts"),
            send_time_us: get("send_time_us"),
            pending: get("pending"),
            lag: known("lag"),
            group_exists: get("group_exists") == 1,
            dead_length: get("dead_length"),
            trimmed: get("trimmed"),
            dead_trimmed: get("dead_trimmed"),
            dead_purged: get("dead_purged"),
            requeued: get("requeued"),
            abandoned: get("abandoned"),
            uncounted: get("uncounted"),
            skipped: get("skipped"),
            deferred: get("deferred"),
            dead_expired: get("dead_expired"),
            dead_requeued: get("dead_requeued"),
            unseen: get("base_added"),
            latency: Histogram::from_fields(numbers),
            retention: retention("retention_ms"),
            dead_retention: retention("dead_retention_ms"),
            oldest_queued_age_ms: age("oldest_queued_ms"),
            oldest_pending_age_ms: age("oldest_pending_ms"),
            floor: age("floor_ms")
                .filter(|_| !floor_group.is_empty())
                .map(|age| (floor_group, age)),
            state: QueueState::from_code(get("state") as i64),
            state_detail: text("state_detail"),
            epoch: text("epoch"),
            open_runs: Vec::new(),
            any_run: false,
            live_senders: 0,
            memory: Memory::default(),
            channel: String::new(),
            channels: BTreeMap::new(),
            partitions: Vec::new(),
        }
    }

    /// Mean simulated send time over all attempts, in milliseconds.
    pub fn avg_send_ms(&self) -> Option<f64> {
        (self.attempts > 0).then(|| self.send_time_us as f64 / self.attempts as f64 / 1000.0)
    }

    /// Messages settled for good: sent, dead, skipped, given up by
    /// `repair`, or settled before it re-created lost counters.
    pub fn settled(&self) -> u64 {
        self.sent + self.dead + self.abandoned + self.skipped + self.uncounted
    }

    /// Entries this channel has to settle: those added since it began.
    pub fn to_settle(&self) -> u64 {
        self.produced.saturating_sub(self.unseen)
    }

    /// Whether something was produced (by a recorded producer run, or
    /// written otherwise: requeued dead letters, a queue `migrate` gave an
    /// identity to) and no producer is still running (those that stopped or
    /// died add nothing more).
    pub fn producers_finished(&self) -> bool {
        (self.any_run || self.produced > 0)
            && self
                .open_runs
                .iter()
                .all(|run| run.state != RunState::Running)
    }

    /// The runs that ended without finishing: stopped by a signal, or whose
    /// producer died.
    pub fn unfinished_runs(&self) -> impl Iterator<Item = &RunInfo> {
        self.open_runs
            .iter()
            .filter(|run| matches!(run.state, RunState::Died | RunState::Stopped))
    }

    /// Whether all the work is done: producers finished, every entry delivered,
    /// nothing pending, and every produced message settled.
    pub fn is_done(&self) -> bool {
        self.producers_finished()
            && self.channel_done()
            && self.channels.values().all(Self::channel_done)
    }

    /// Whether this channel has settled everything it has seen so far.
    fn channel_done(&self) -> bool {
        self.group_exists
            && self.pending == 0
            && self.lag.is_none_or(|lag| lag == 0)
            && self.settled() >= self.to_settle()
    }

    /// The group holding trimming back beyond the retention by more than
    /// `grace`, with the age of the oldest entry it keeps.
    pub fn held_back(&self, grace: Duration) -> Option<(&str, u64)> {
        let Some(Retention::Keep(keep)) = self.retention else {
            return None;
        };
        let (group, age) = self.floor.as_ref()?;
        let limit = (keep + grace).as_millis() as u64;
        (*age > limit && self.stream_length > 0).then_some((group.as_str(), *age))
    }
}

/// One sender's figures over every partition: its counters and what it
/// holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SenderSnapshot {
    /// The sender name.
    pub name: String,
    /// Messages it sent (first acknowledgements).
    pub sent: u64,
    /// Its failed attempts.
    pub failed: u64,
    /// Messages it dead-lettered.
    pub dead: u64,
    /// Its attempts of any outcome.
    pub attempts: u64,
    /// Sum of its send times, in microseconds.
    pub send_time_us: u64,
    /// Messages it holds now.
    pub pending: u64,
    /// Messages it holds in each partition, in partition order (0 where it
    /// is no consumer).
    pub pending_by_partition: Vec<u64>,
    /// Milliseconds since it last read or claimed, in any partition.
    pub idle_ms: u64,
    /// Whether a live process holds its name.
    pub live: bool,
    /// The gateway it sends through, as it published it (empty before).
    pub gateway: String,
    /// Its gateway's breaker: closed, open or half_open (empty when it
    /// published none).
    pub breaker: String,
    /// Times its breaker opened.
    pub breaker_opened: u64,
    /// Its channel.
    pub channel: String,
    /// Its send times per attempt, bucketed.
    pub latency: Histogram,
}

impl SenderSnapshot {
    /// Its mean send time per attempt, in milliseconds.
    pub fn avg_send_ms(&self) -> Option<f64> {
        (self.attempts > 0).then(|| self.send_time_us as f64 / self.attempts as f64 / 1000.0)
    }

    /// Every sender of the group, once, with its counters summed over the
    /// partitions it is a consumer of: three round trips per partition,
    /// every partition at once, whatever the number of messages.
    pub async fn read_all(store: &Store) -> Result<Vec<Self>, StoreError> {
        let count = store.partition_count() as usize;
        let parts = store
            .each_partition(|partition| async move { Self::read_partition(&partition).await })
            .await?;
        let mut senders = partitions::merge_senders(parts, count);
        for sender in &mut senders {
            sender.channel = store.group().to_owned();
        }
        Ok(senders)
    }

    /// The senders of every channel of the queue, channel by channel.
    pub async fn read_every_channel(store: &Store) -> Result<Vec<Self>, StoreError> {
        let mut all = Vec::new();
        for channel in store.every_channel() {
            all.extend(Self::read_all(&channel).await?);
        }
        Ok(all)
    }

    /// The senders of the handle's own partition, by name, with what they
    /// did and hold there (`pending_by_partition` empty).
    async fn read_partition(store: &Store) -> Result<Vec<Self>, StoreError> {
        let inspector = store.inspector();
        let consumers = inspector.consumers().await?;
        let names: Vec<String> = consumers.iter().map(|c| c.name.clone()).collect();
        let stats = inspector.sender_stats(&names).await?;
        let live = inspector.live_names(&names).await?;
        Ok(consumers
            .into_iter()
            .zip(stats)
            .zip(live)
            .map(|((consumer, fields), live)| {
                let get = |name: &str| {
                    fields
                        .get(name)
                        .and_then(|v| v.parse::<i64>().ok())
                        .unwrap_or(0)
                        .max(0) as u64
                };
                let text = |name: &str| fields.get(name).cloned().unwrap_or_default();
                Self {
                    channel: String::new(),
                    gateway: text("gateway"),
                    breaker: text("breaker"),
                    breaker_opened: get("breaker_opened"),
                    sent: get("sent"),
                    failed: get("failed"),
                    dead: get("dead"),
                    attempts: get("attempts"),
                    send_time_us: get("send_time_us"),
                    latency: Histogram::from_sender_hash(&fields),
                    pending: consumer.pending,
                    pending_by_partition: Vec::new(),
                    idle_ms: consumer.idle_ms,
                    live,
                    name: consumer.name,
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::store::RunPlan;

    fn fields(pairs: &[(&str, i64)]) -> SnapshotFields {
        SnapshotFields {
            numbers: pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            texts: HashMap::new(),
        }
    }

    fn run(state: RunState) -> RunInfo {
        let plan = RunPlan {
            count: 10,
            seed: 1,
            batch: 10,
        };
        RunInfo {
            id: "r".to_owned(),
            state,
            plan,
            count: 10,
            batches_written: 1,
            batches: 1,
            started_ms: 0,
        }
    }

    fn done_base() -> Snapshot {
        let mut snap = Snapshot::from_fields(&fields(&[
            ("entries_added", 10),
            ("sent", 7),
            ("dead", 3),
            ("attempts", 12),
            ("send_time_us", 2_400_000),
            ("group_exists", 1),
            ("lag", 0),
        ]));
        snap.any_run = true;
        snap
    }

    #[test]
    fn derived_figures() {
        let snap = done_base();
        assert_eq!(snap.avg_send_ms(), Some(200.0));
        assert!(snap.is_done());
        let unknown_lag = Snapshot::from_fields(&fields(&[("lag", -1)]));
        assert_eq!(unknown_lag.lag, None);
        assert_eq!(unknown_lag.avg_send_ms(), None);
        assert_eq!(unknown_lag.retention, None);
    }

    #[test]
    fn not_done_while_work_remains() {
        assert!(done_base().is_done());
        for (field, value) in [("pending", 1), ("lag", 2), ("sent", 6)] {
            let mut changed = fields(&[
                ("entries_added", 10),
                ("sent", 7),
                ("dead", 3),
                ("group_exists", 1),
                ("lag", 0),
            ]);
            changed.numbers.insert(field.to_string(), value);
            let mut snap = Snapshot::from_fields(&changed);
            snap.any_run = true;
            assert!(!snap.is_done(), "{field}={value} should not be done");
        }
        let mut running = done_base();
        running.open_runs.push(run(RunState::Running));
        assert!(!running.is_done(), "a live producer may add more");
        let mut died = done_base();
        died.open_runs.push(run(RunState::Died));
        assert!(died.is_done(), "a dead producer adds nothing more");
        assert_eq!(died.unfinished_runs().count(), 1);
        let mut no_run = done_base();
        no_run.any_run = false;
        assert!(no_run.is_done(), "written without a run, and all settled");
        let mut nothing = Snapshot::from_fields(&fields(&[("group_exists", 1), ("lag", 0)]));
        nothing.any_run = false;
        assert!(!nothing.is_done(), "nothing was produced yet");
    }

    #[test]
    fn ages_and_retention_come_from_the_server_clock() {
        let mut with_floor = fields(&[
            ("now_ms", 10_000),
            ("oldest_pending_ms", 4_000),
            ("oldest_queued_ms", -1),
            ("floor_ms", 1_000),
            ("retention_ms", 2_000),
            ("length", 5),
        ]);
        with_floor
            .texts
            .insert("floor_group".to_owned(), "analytics".to_owned());
        let snap = Snapshot::from_fields(&with_floor);
        assert_eq!(snap.oldest_pending_age_ms, Some(6_000));
        assert_eq!(snap.oldest_queued_age_ms, None);
        assert_eq!(
            snap.retention,
            Some(Retention::Keep(Duration::from_secs(2)))
        );
        assert_eq!(
            snap.held_back(Duration::from_secs(1)),
            Some(("analytics", 9_000))
        );
        assert_eq!(snap.held_back(Duration::from_secs(8)), None);
    }

    #[test]
    fn memory_is_full_near_its_limit() {
        let info = "# Memory\r\nused_memory:96\r\nmaxmemory:100\r\nmaxmemory_policy:noeviction\r\n";
        let memory = Memory::from_info(info);
        assert_eq!(memory.policy, "noeviction");
        assert!(memory.is_full());
        assert!(!Memory::from_info("used_memory:96\r\nmaxmemory:0\r\n").is_full());
    }
}
