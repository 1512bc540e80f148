//! `repair`: what an operator runs after a process stopped with exit code 3.
//!
//! Nothing here runs by itself: [`plan`] only reads and says what it found
//! and what it would do; [`apply`] does it, and only `repair --yes` calls it.
//! The repairs:
//! - a lost identity gets a new epoch (the data that is left stays; every
//!   process started before must be restarted, and stops by itself anyway);
//! - a key of the wrong type is renamed aside (`<key>:damaged:<ms>`), never
//!   deleted, so the operator can look at it;
//! - a counter that is not a number is set to what Redis's own figures give
//!   where that is exact (produced, sent, dead, trimmed), else to 0;
//! - a lost counters hash is created again from the same figures; the
//!   messages its group had settled, whose outcomes (sent, skipped, …) went
//!   with it, are counted as `uncounted`, so the books balance again;
//! - a lost consumer group is created again at `--group-start`: by default
//!   after the newest entry, so nothing is sent twice; the messages the lost
//!   group had not settled are counted as `abandoned`, so the books balance
//!   and the operator knows how many alerts may not have gone out.
//!
//! Each partition is diagnosed and repaired on its own, partition 0 first
//! (every partition Redis holds, as found: the count partition 0 records
//! may itself be what is damaged). Every partition must hold partition 0's
//! epoch: a partition whose identity is gone or another queue's gets
//! partition 0's, and when partition 0 gets a new one, every partition
//! gets it.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rand::RngExt;

use crate::keys::KeyRole;
use crate::store::{DEAD_REASONS, Retention, Store, StoreError, id_order, is_counter};

/// The fields of a sender's hash that hold text, not counts: its report
/// batches' token, its gateway and its breaker's state.
const SENDER_TEXT_FIELDS: &[&str] = &["batch_token", "gateway", "breaker"];

/// Totals counters and how each is set again when it is not a number.
const TOTALS: &[&str] = &[
    "produced",
    "sent",
    "dead",
    "trimmed",
    "duplicates",
    "failed",
    "attempts",
    "send_time_us",
    "dead_max_attempts",
    "dead_malformed",
    "dead_deleted",
    "dead_trimmed",
    "dead_purged",
    "requeued",
    "abandoned",
    "skipped",
    "deferred",
    "dead_expired",
    "dead_requeued",
    "uncounted",
    "base_added",
];

/// One repair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Give the queue a new identity.
    NewIdentity {
        /// Why.
        reason: String,
    },
    /// Rename a key of the wrong type aside.
    SetAside {
        /// The key.
        key: String,
        /// Its type.
        kind: String,
        /// Its new name.
        to: String,
    },
    /// Set a counter that is not a number.
    SetCounter {
        /// The hash.
        key: String,
        /// The field.
        field: String,
        /// What it held.
        found: String,
        /// The new value.
        to: i64,
        /// Where the value comes from.
        how: String,
    },
    /// Create a lost counters hash again, from what Redis still holds.
    RecreateCounters {
        /// The hash.
        key: String,
        /// Each counter that can be told, its value and where it comes from;
        /// every other counter starts at 0.
        counters: Vec<(String, i64, String)>,
    },
    /// Forget a sender's window of applied report batches (its fields are
    /// not numbers): safe while the sender is stopped, as a new process
    /// starts a window of its own.
    ResetWindow {
        /// The sender's counters hash.
        key: String,
    },
    /// Create the consumer group again.
    RecreateGroup {
        /// Where it starts: an entry id, or `$` for after the newest.
        start: String,
        /// Entries it will deliver (those after `start`).
        entries_read: u64,
        /// Messages the lost group had not settled, now counted as abandoned.
        abandoned: u64,
    },
}

impl Step {
    /// What it does, in a sentence.
    pub fn describe(&self) -> String {
        match self {
            Self::NewIdentity { reason } => {
                format!("give the queue a new identity ({reason}); restart every process")
            }
            Self::SetAside { key, kind, to } => {
                format!("rename {key} (a {kind}, of the wrong type) to {to}")
            }
            Self::SetCounter {
                key,
                field,
                found,
                to,
                how,
            } => format!("set counter {field} of {key} (it holds {found:?}) to {to}: {how}"),
            Self::ResetWindow { key } => {
                format!("forget the report batch window of {key} (it is not numbers)")
            }
            Self::RecreateCounters { key, counters } => {
                let set: Vec<String> = counters
                    .iter()
                    .map(|(field, to, how)| format!("{field} {to} ({how})"))
                    .collect();
                format!(
                    "create the lost counters hash {key} again: {}; the other counters start \
                     at 0 (their history is lost)",
                    set.join(", ")
                )
            }
            Self::RecreateGroup {
                start, abandoned, ..
            } => {
                let from = if start == "$" {
                    "after the newest entry: nothing is sent again".to_owned()
                } else {
                    format!(
                        "after entry {start}: the entries after it are delivered again, and \
                         those already sent are sent again"
                    )
                };
                format!(
                    "create the consumer group again, starting {from}; {abandoned} messages the \
                     lost group had not settled are counted as abandoned"
                )
            }
        }
    }
}

/// What `repair` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepairPlan {
    /// The repairs, in the order they are done.
    pub steps: Vec<Step>,
    /// The partition each step repairs, in the order of `steps`.
    pub partitions: Vec<u32>,
    /// The channel each step repairs, in the order of `steps`.
    pub channels: Vec<String>,
    /// How many partitions were diagnosed.
    pub partition_count: u32,
    /// How many channels were diagnosed.
    pub channel_count: usize,
}

impl RepairPlan {
    /// The plan as text; on a queue with several partitions, each step
    /// names its partition.
    pub fn to_text(&self) -> String {
        if self.steps.is_empty() {
            let all = match self.partition_count {
                0 | 1 => String::new(),
                count => format!(" in all {count} partitions"),
            };
            return format!(
                "nothing to repair: the queue's identity, keys, group and counters are sound{all}\n"
            );
        }
        self.steps
            .iter()
            .zip(self.partitions.iter().zip(&self.channels))
            .enumerate()
            .map(|(i, (step, (partition, channel)))| {
                let mut place = Vec::new();
                if self.partition_count > 1 {
                    place.push(format!("partition {partition}"));
                }
                if self.channel_count > 1 {
                    place.push(format!("channel {channel}"));
                }
                let place = if place.is_empty() {
                    String::new()
                } else {
                    format!("{}: ", place.join(", "))
                };
                format!("{}. {place}{}\n", i + 1, step.describe())
            })
            .collect()
    }

    fn push(&mut self, partition: u32, channel: &str, step: Step) {
        self.partitions.push(partition);
        self.channels.push(channel.to_owned());
        self.steps.push(step);
    }
}

/// Partition 0's identity, as the other partitions must hold it.
enum Home {
    /// This is partition 0.
    Itself,
    /// Partition 0 keeps this epoch.
    Keeps(String),
    /// Partition 0 gets a new identity.
    Renewed,
}

/// What Redis holds of one queue, read without writing.
struct Found {
    types: HashMap<String, String>,
    epoch: Option<String>,
    totals: HashMap<String, String>,
    entries_added: u64,
    /// The newest id the stream ever gave an entry.
    last_id: String,
    stream_length: u64,
    dead_length: u64,
    group: Option<(u64, Option<u64>)>,
    /// Entries the group has passed (read, whether settled or pending),
    /// when it exists.
    passed: Option<u64>,
}

impl Found {
    fn kind(&self, key: &str) -> &str {
        self.types.get(key).map_or("none", String::as_str)
    }

    fn total(&self, field: &str) -> Option<i64> {
        self.totals
            .get(field)
            .filter(|v| is_counter(v.as_bytes()))
            .and_then(|v| v.parse().ok())
    }
}

async fn read(store: &Store) -> Result<Found, StoreError> {
    let inspector = store.inspector();
    let operator = store.operator();
    let k = store.keys();
    let mut types = HashMap::new();
    for key in [k.queue(), k.messages(), k.dead(), k.stats()] {
        let kind = operator.key_type(&key).await?;
        types.insert(key, kind);
    }
    let is = |key: &str, kind: &str| types.get(key).is_some_and(|t| t == kind);
    let epoch = if is(&k.queue(), "hash") {
        operator.hash(&k.queue()).await?.remove("epoch")
    } else {
        None
    };
    let totals = if is(&k.stats(), "hash") {
        operator.hash(&k.stats()).await?
    } else {
        HashMap::new()
    };
    let (mut entries_added, mut stream_length, mut group, mut passed) = (0, 0, None, None);
    let mut last_id = "0-0".to_owned();
    if is(&k.messages(), "stream") {
        let info = inspector.stream_info(&k.messages()).await?;
        (entries_added, stream_length) = (info.entries_added, info.length);
        last_id = info.last_id;
        let g = inspector.group_info().await?;
        group = g.exists.then_some((g.pending, g.lag));
        if g.exists {
            // Without Redis's lag, the entries not yet delivered are counted.
            let queued = match g.lag {
                Some(lag) => lag,
                None => {
                    operator
                        .count_after(&k.messages(), &g.last_delivered_id)
                        .await?
                }
            };
            passed = Some(entries_added.saturating_sub(queued));
        }
    }
    let dead_length = if is(&k.dead(), "stream") {
        inspector.stream_info(&k.dead()).await?.length
    } else {
        0
    };
    Ok(Found {
        types,
        epoch,
        totals,
        entries_added,
        last_id,
        stream_length,
        dead_length,
        group,
        passed,
    })
}

/// Reads the queue, every partition and channel of it, and says what
/// `repair` would do; writes nothing. `group_start` is `end` or an entry
/// id (see [`Step::RecreateGroup`]).
pub async fn plan(store: &Store, group_start: &str) -> Result<RepairPlan, StoreError> {
    let store = store.found_partitions().await?.found_channels().await?;
    let channels = store.every_channel();
    let mut plan = RepairPlan {
        partition_count: store.partition_count(),
        channel_count: channels.len(),
        ..RepairPlan::default()
    };
    let first = channels.first().map_or(store.group(), |c| c.group());
    if let Some(step) = count_step(&store).await? {
        plan.push(0, first, step);
    }
    for (index, channel) in channels.iter().enumerate() {
        // The first channel's plan covers what the queue's channels share.
        let whole_queue = index == 0;
        let mut home = Home::Itself;
        for partition in channel.partitions() {
            let (steps, epoch) =
                plan_partition(&partition, group_start, &home, whole_queue).await?;
            if partition.partition_id() == 0 {
                home = epoch.map_or(Home::Renewed, Home::Keeps);
            }
            for step in steps {
                plan.push(partition.partition_id(), channel.group(), step);
            }
        }
    }
    Ok(plan)
}

/// Setting the partition count partition 0 records to the partitions Redis
/// holds, when it records fewer (lowered by hand, which leaves the rest
/// unread) or something that is no count; `None` when it is right, or when
/// partition 0's identity is gone (giving it a new one records the count).
async fn count_step(store: &Store) -> Result<Option<Step>, StoreError> {
    let home = store.partition(0);
    let queue = home.keys().queue();
    if home.operator().key_type(&queue).await? != "hash" {
        return Ok(None);
    }
    let fields = home.operator().hash(&queue).await?;
    let found = store.partition_count();
    let recorded = fields.get("partitions");
    let sound = match recorded {
        None => found == 1,
        Some(text) => text.parse::<u32>().is_ok_and(|n| n >= found.max(1)),
    };
    if sound {
        return Ok(None);
    }
    Ok(Some(Step::SetCounter {
        key: queue,
        field: "partitions".to_owned(),
        found: recorded.cloned().unwrap_or_default(),
        to: i64::from(found),
        how: format!("the partitions Redis holds, 0 to {}", found - 1),
    }))
}

/// The repairs of the handle's partition, and the epoch it holds now: of
/// its channel's own keys and group, and with `whole_queue`, of what the
/// queue's channels share (identity, stream, sender and run keys).
async fn plan_partition(
    store: &Store,
    group_start: &str,
    home: &Home,
    whole_queue: bool,
) -> Result<(Vec<Step>, Option<String>), StoreError> {
    let mut found = read(store).await?;
    let k = store.keys();
    let mut steps = Vec::new();
    let stamp = store.inspector().server_time_ms().await?;
    let set_aside = |key: String, want: &str, steps: &mut Vec<Step>| {
        let kind = found.kind(&key).to_owned();
        if kind != "none" && kind != want {
            steps.push(Step::SetAside {
                to: format!("{key}:damaged:{stamp}"),
                key,
                kind,
            });
        }
    };
    // The latency histogram is set aside, if need be, with the other keys
    // below: listed here too, it would be renamed twice and the second
    // RENAME would fail on the key gone.
    let shared = [(k.queue(), "hash"), (k.messages(), "stream")];
    let own = [(k.dead(), "stream"), (k.stats(), "hash")];
    let checked = if whole_queue { &shared[..] } else { &[][..] };
    for (key, want) in checked.iter().chain(&own) {
        set_aside(key.clone(), want, &mut steps);
    }
    if found.kind(&k.stats()) != "hash" {
        let step = recreate_counters(store, &found).await?;
        // The steps below see the counters as they will be.
        if let Step::RecreateCounters { counters, .. } = &step {
            found.totals = counters
                .iter()
                .map(|(field, to, _)| (field.clone(), to.to_string()))
                .collect();
        }
        steps.push(step);
    }
    let reason = match (found.epoch.as_deref(), home) {
        _ if !whole_queue => None,
        (None, _) if found.kind(&k.queue()) == "none" => Some("its identity is gone".to_owned()),
        (None, _) => Some("its identity holds no epoch".to_owned()),
        (Some(_), Home::Renewed) => Some("partition 0 gets a new identity".to_owned()),
        (Some(epoch), Home::Keeps(queue)) if epoch != queue => Some(format!(
            "it holds epoch {epoch}, partition 0 holds {queue}: it belongs to another queue"
        )),
        _ => None,
    };
    if let Some(reason) = reason {
        steps.push(Step::NewIdentity { reason });
    }
    let others = requeued_by_others(store).await? as i64;
    let requeued = if k.stats() == k.totals() {
        found.total("requeued").unwrap_or(0) - others
    } else {
        found.total("dead_requeued").unwrap_or(0)
    };
    steps.extend(counter_steps(&found, &k.stats(), requeued));
    if whole_queue {
        steps.extend(other_key_steps(store, stamp).await?);
    }
    if found.kind(&k.messages()) == "stream" {
        if found.group.is_none() {
            steps.push(group_step(store, &found, group_start).await?);
        }
    } else if found.epoch.is_some() || !found.totals.is_empty() {
        // The stream is gone (or set aside) while the queue lives on: its
        // unsettled messages went with it.
        let value = |field: &str| found.total(field).unwrap_or(0);
        // Entries added since the channel began: the totals know them.
        let added = if k.stats() == k.totals() {
            value("produced") + value("requeued")
        } else {
            let totals = store.operator().hash(&k.totals()).await?;
            (counter(&totals, "produced") + counter(&totals, "requeued")) as i64
                - value("base_added")
        };
        let unsettled = added
            - value("sent")
            - value("dead")
            - value("abandoned")
            - value("skipped")
            - value("uncounted");
        steps.push(Step::RecreateGroup {
            start: "$".to_owned(),
            entries_read: 0,
            abandoned: unsettled.max(0) as u64,
        });
    } else {
        steps.push(Step::RecreateGroup {
            start: "$".to_owned(),
            entries_read: 0,
            abandoned: 0,
        });
    }
    Ok((steps, found.epoch.clone()))
}

/// The counters of a lost hash, from what Redis still holds: the dead
/// letters in the dead stream, by reason; on the totals hash, the entries
/// added and trimmed; and, as `uncounted`, the messages the group passed
/// and settled otherwise, whose outcome (sent, skipped, abandoned, or
/// added before the channel began) is lost with the hash.
async fn recreate_counters(store: &Store, found: &Found) -> Result<Step, StoreError> {
    const PAGE: usize = 1_000;
    let k = store.keys();
    let inspector = store.inspector();
    let (dead_length, by_reason) = if found.kind(&k.dead()) == "stream" {
        let ids = inspector.read_connection(Duration::ZERO).await?;
        inspector.dead_reasons(&ids, PAGE).await?
    } else {
        (0, BTreeMap::new())
    };
    let reason = |name: &str| by_reason.get(name).copied().unwrap_or(0);
    let mut counters: Vec<(String, u64, &str)> = Vec::new();
    let others = requeued_by_others(store).await?;
    // Requeued dead letters are counted in the totals (`requeued`, every
    // channel's) and by each channel but the first (`dead_requeued`); the
    // first channel's are the difference. A lost hash keeps the others'.
    let dead = if k.stats() == k.totals() {
        counters.push((
            "produced".to_owned(),
            found.entries_added.saturating_sub(others),
            "entries added to the stream, less the other channels' requeued dead letters",
        ));
        if others > 0 {
            counters.push((
                "requeued".to_owned(),
                others,
                "the other channels' requeued dead letters; this channel's own are lost",
            ));
        }
        dead_length
    } else {
        let mine = requeued_by_this_channel(store, others).await?;
        if mine > 0 {
            counters.push((
                "dead_requeued".to_owned(),
                mine,
                "dead letters requeued, less the other channels' and the first channel's",
            ));
        }
        dead_length + mine
    };
    if k.stats() == k.totals() {
        counters.push((
            "trimmed".to_owned(),
            found
                .entries_added
                .saturating_sub(found.stream_length + reason("deleted")),
            "entries added, less those in the stream and those deleted while pending",
        ));
    }
    counters.push((
        "dead".to_owned(),
        dead,
        "dead letters in the dead stream, plus those requeued",
    ));
    for name in DEAD_REASONS {
        if reason(name) > 0 {
            counters.push((
                format!("dead_{name}"),
                reason(name),
                "dead letters with that reason",
            ));
        }
    }
    if let Some(passed) = found.passed {
        let pending = found.group.map_or(0, |(pending, _)| pending);
        counters.push((
            "uncounted".to_owned(),
            passed.saturating_sub(pending + dead),
            "entries the group passed, less those pending and dead: sent, skipped, abandoned \
             or added before the channel began, which is not known",
        ));
    }
    Ok(Step::RecreateCounters {
        key: k.stats(),
        counters: counters
            .into_iter()
            .map(|(field, to, how)| (field, to as i64, how.to_owned()))
            .collect(),
    })
}

/// A counter of a hash as read, 0 when absent or not a number.
fn counter(hash: &HashMap<String, String>, field: &str) -> u64 {
    hash.get(field)
        .filter(|v| is_counter(v.as_bytes()))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The dead letters that the partition's channels other than the first
/// and the handle's own counted as requeued (`dead_requeued`). A channel
/// whose counters are not a hash counts none: its own plan sets the key
/// aside and re-creates its counters.
async fn requeued_by_others(store: &Store) -> Result<u64, StoreError> {
    let operator = store.operator();
    let mut sum = 0;
    for channel in store.every_channel().iter().skip(1) {
        let key = channel.keys().stats();
        if channel.group() != store.group() && operator.key_type(&key).await? == "hash" {
            sum += counter(&operator.hash(&key).await?, "dead_requeued");
        }
    }
    Ok(sum)
}

/// The dead letters of the handle's channel (not the first) that were
/// requeued, as the rest of the partition's counters tell: the totals'
/// `requeued`, less `others` and the first channel's own (its dead less
/// those in its dead stream, trimmed and purged).
async fn requeued_by_this_channel(store: &Store, others: u64) -> Result<u64, StoreError> {
    let operator = store.operator();
    let totals = operator.hash(&store.keys().totals()).await?;
    let Some(first) = store.every_channel().into_iter().next() else {
        return Ok(0);
    };
    let dead = first.keys().dead();
    let first_in_dead_stream = if operator.key_type(&dead).await? == "stream" {
        first.inspector().stream_info(&dead).await?.length
    } else {
        0
    };
    let books = operator.hash(&first.keys().stats()).await?;
    let first_own = counter(&books, "dead").saturating_sub(
        first_in_dead_stream + counter(&books, "dead_trimmed") + counter(&books, "dead_purged"),
    );
    Ok(counter(&totals, "requeued").saturating_sub(others + first_own))
}

/// The other keys of the queue (per sender, per run, the histogram, the
/// runs lists): one of the wrong type is set aside; a counter that is not a
/// number is set to 0 (its history is lost); a sender's report window that
/// is not numbers is forgotten.
async fn other_key_steps(store: &Store, stamp: u64) -> Result<Vec<Step>, StoreError> {
    let operator = store.operator();
    let k = store.keys();
    let mut steps = Vec::new();
    for key in operator.all_keys().await? {
        let Some(role) = k.role(&key) else { continue };
        let handled = matches!(
            role,
            KeyRole::Queue | KeyRole::Messages | KeyRole::Dead | KeyRole::Stats
        );
        if handled || key.contains(":damaged:") {
            continue;
        }
        let kind = operator.key_type(&key).await?;
        if kind != role.redis_type() {
            steps.push(Step::SetAside {
                to: format!("{key}:damaged:{stamp}"),
                key,
                kind,
            });
            continue;
        }
        if !matches!(role, KeyRole::SenderStats | KeyRole::Latency) {
            continue;
        }
        let mut window_broken = false;
        for (field, value) in operator.hash(&key).await? {
            if is_counter(value.as_bytes()) || SENDER_TEXT_FIELDS.contains(&field.as_str()) {
                continue;
            }
            if field == "batch_seq" || field == "batch_window" {
                window_broken = true;
            } else {
                steps.push(Step::SetCounter {
                    key: key.clone(),
                    field,
                    found: value,
                    to: 0,
                    how: "not derivable from what Redis holds: the history is lost".to_owned(),
                });
            }
        }
        if window_broken {
            steps.push(Step::ResetWindow { key });
        }
    }
    Ok(steps)
}

/// The counters of the channel's hash that are not numbers, and what each
/// is set to; `requeued` is the channel's own requeued dead letters as the
/// other counters tell.
fn counter_steps(found: &Found, stats: &str, requeued: i64) -> Vec<Step> {
    let bad: Vec<&str> = TOTALS
        .iter()
        .copied()
        .filter(|field| {
            found
                .totals
                .get(*field)
                .is_some_and(|v| !is_counter(v.as_bytes()))
        })
        .collect();
    let value = |field: &str| found.total(field).unwrap_or(0);
    let added = found.entries_added as i64;
    let dead = found.dead_length as i64 + value("dead_trimmed") + value("dead_purged") + requeued;
    let (pending, lag) = found
        .group
        .map_or((0, 0), |(p, l)| (p as i64, l.unwrap_or(0) as i64));
    bad.into_iter()
        .map(|field| {
            let (to, how) = match field {
                "produced" => (
                    added - value("requeued"),
                    "entries added to the stream, less those requeued",
                ),
                "dead" => (
                    dead,
                    "dead letters in the dead stream, plus those trimmed, purged and requeued",
                ),
                "sent" => (
                    added
                        - value("base_added")
                        - found.total("dead").unwrap_or(dead)
                        - value("abandoned")
                        - value("skipped")
                        - value("uncounted")
                        - pending
                        - lag,
                    "entries added since the channel began, less dead, abandoned, skipped, \
                     uncounted, pending and never delivered",
                ),
                "trimmed" => (
                    added - found.stream_length as i64 - value("dead_deleted"),
                    "entries added, less those in the stream and those deleted while pending",
                ),
                "base_added" => (
                    found.passed.map_or(0, |passed| passed as i64)
                        - pending
                        - found.total("dead").unwrap_or(dead)
                        - value("sent")
                        - value("abandoned")
                        - value("skipped")
                        - value("uncounted"),
                    "entries the group passed, less those pending and settled",
                ),
                _ => (
                    0,
                    "not derivable from what Redis holds: the history is lost",
                ),
            };
            Step::SetCounter {
                key: stats.to_owned(),
                field: field.to_owned(),
                found: found.totals.get(field).cloned().unwrap_or_default(),
                to: to.max(0),
                how: how.to_owned(),
            }
        })
        .collect()
}

async fn group_step(store: &Store, found: &Found, group_start: &str) -> Result<Step, StoreError> {
    // A channel's books: what it settled, skipped included, of the entries
    // added since it began.
    let settled = found.total("sent").unwrap_or(0)
        + found.total("dead").unwrap_or(0)
        + found.total("abandoned").unwrap_or(0)
        + found.total("skipped").unwrap_or(0)
        + found.total("uncounted").unwrap_or(0)
        + found.total("base_added").unwrap_or(0);
    let (start, after) = if group_start == "end" {
        ("$".to_owned(), 0)
    } else {
        refuse_past_end(store, group_start, &found.last_id)?;
        let after = store
            .operator()
            .count_after(&store.keys().messages(), group_start)
            .await?;
        (group_start.to_owned(), after)
    };
    let entries_read = found.entries_added.saturating_sub(after);
    Ok(Step::RecreateGroup {
        start,
        entries_read,
        abandoned: (entries_read as i64 - settled).max(0) as u64,
    })
}

/// Refuses a group start past the newest id the stream ever gave: the
/// group would deliver nothing until new ids passed it, possibly for
/// years, while every message added meanwhile went unsent.
fn refuse_past_end(store: &Store, group_start: &str, last_id: &str) -> Result<(), StoreError> {
    if id_order(group_start) > id_order(last_id) {
        return Err(StoreError::Refused(format!(
            "--group-start {group_start} is past the end of {}, whose newest entry id is \
             {last_id}: the group would skip every message added until ids pass it; give an \
             id at or before {last_id}, or `end`",
            store.keys().messages()
        )));
    }
    Ok(())
}

/// Does the repairs of `plan`, in order, each in one transaction.
pub async fn apply(store: &Store, plan: &RepairPlan) -> Result<(), StoreError> {
    let store = store.found_channels().await?;
    let places = plan.partitions.iter().zip(&plan.channels);
    for (step, (partition, channel)) in plan.steps.iter().zip(places) {
        let channel = store.for_channel(channel)?;
        apply_step(&channel.partition(*partition), step, plan.partition_count).await?;
    }
    Ok(())
}

/// The epoch a partition given a new identity gets: partition 0's, which
/// its own steps, done first, have set; a new one for partition 0.
async fn epoch_for(store: &Store) -> Result<String, StoreError> {
    if store.partition_id() == 0 {
        return Ok(format!("{:016x}", rand::rng().random::<u64>()));
    }
    let home = store.partition(0);
    let epoch = home
        .operator()
        .hash(&home.keys().queue())
        .await?
        .remove("epoch");
    epoch.ok_or_else(|| {
        StoreError::Lost(format!(
            "{} holds no epoch to give partition {}",
            home.keys().queue(),
            store.partition_id()
        ))
    })
}

/// Does one repair of the handle's partition in one transaction.
async fn apply_step(store: &Store, step: &Step, partitions: u32) -> Result<(), StoreError> {
    let inspector = store.inspector();
    let k = store.keys();
    let mut cmds: Vec<redis::Cmd> = Vec::new();
    match step {
        Step::SetAside { key, to, .. } => {
            cmds.push(redis::cmd("RENAME").arg(key).arg(to).clone());
        }
        Step::NewIdentity { .. } => {
            let epoch = epoch_for(store).await?;
            let now = inspector.server_time_ms().await?;
            cmds.push(
                redis::cmd("HSET")
                    .arg(k.queue())
                    .arg("epoch")
                    .arg(epoch)
                    .arg("created_ms")
                    .arg(now)
                    .clone(),
            );
            // Partition 0's identity records the partition count: gone
            // with it, it is the count found.
            if store.partition_id() == 0 && partitions > 1 {
                cmds.push(
                    redis::cmd("HSETNX")
                        .arg(k.queue())
                        .arg("partitions")
                        .arg(partitions)
                        .clone(),
                );
            }
            for (field, retention) in [
                ("retention_ms", Retention::DEFAULT),
                ("dead_retention_ms", Retention::DEFAULT_DEAD),
            ] {
                cmds.push(
                    redis::cmd("HSETNX")
                        .arg(k.queue())
                        .arg(field)
                        .arg(retention.to_millis())
                        .clone(),
                );
            }
            cmds.push(
                redis::cmd("HSETNX")
                    .arg(k.migrations())
                    .arg("identity")
                    .arg(now)
                    .clone(),
            );
            cmds.push(
                redis::cmd("HSETNX")
                    .arg(k.stats())
                    .arg("produced")
                    .arg(0)
                    .clone(),
            );
        }
        Step::SetCounter { key, field, to, .. } => {
            cmds.push(redis::cmd("HSET").arg(key).arg(field).arg(*to).clone());
        }
        Step::RecreateCounters { key, counters } => {
            // Written meanwhile (another repair, a process that writes it):
            // what the plan derived may no longer hold.
            if store.operator().key_type(key).await? != "none" {
                return Err(StoreError::Refused(format!(
                    "{key} was created again since the plan was made: run `sms-alerts repair` \
                     again to see what is left to do"
                )));
            }
            let mut hset = redis::cmd("HSET");
            hset.arg(key).arg("sent").arg(0);
            for (field, to, _) in counters {
                hset.arg(field).arg(*to);
            }
            cmds.push(hset);
        }
        Step::ResetWindow { key } => {
            cmds.push(
                redis::cmd("HDEL")
                    .arg(key)
                    .arg("batch_token")
                    .arg("batch_seq")
                    .arg("batch_window")
                    .clone(),
            );
        }
        Step::RecreateGroup {
            start,
            entries_read,
            abandoned,
        } => {
            // Created meanwhile (say, by another repair): its
            // abandoned messages are counted already.
            if inspector.group_info().await?.exists {
                return Ok(());
            }
            cmds.push(
                redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(k.messages())
                    .arg(store.group())
                    .arg(start)
                    .arg("MKSTREAM")
                    .arg("ENTRIESREAD")
                    .arg(*entries_read)
                    .clone(),
            );
            cmds.push(
                redis::cmd("HINCRBY")
                    .arg(k.stats())
                    .arg("abandoned")
                    .arg(*abandoned)
                    .clone(),
            );
        }
    }
    // Each repair is one transaction: a failure leaves it undone, and a
    // second `repair` finds it still to do.
    store.operator().run_atomically(&cmds).await
}
