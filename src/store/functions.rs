//! Typed wrappers of the Functions library in `migrations/`: each builds one
//! FCALL with every key it touches declared, and decodes the reply into a
//! struct. The Lua side documents KEYS, ARGV and the reply of each function.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::Value;

use crate::latency::Histogram;

use super::reply::{array, bad, bytes, field_pairs, int, text};
use super::streams::StreamEntry;
use super::{Inspector, Operator, Sender, Store, StoreError};

/// Why a message is dead, as its dead letter's `reason` says: its attempts
/// ran out, it held no valid message, its entry was deleted while pending,
/// or it outlived its age limit.
pub const DEAD_REASONS: [&str; 4] = ["max_attempts", "malformed", "deleted", "expired"];

/// How one send attempt ended. The order is that of the id groups of
/// `sms_settle`'s arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Sent: acknowledge and count it.
    Sent = 0,
    /// Failed: count the attempt, retry after the backoff or dead-letter it.
    Failed = 1,
    /// Not a valid message: dead-letter it with reason `malformed`.
    Malformed = 2,
    /// Nothing for this channel (no address for it, or requeued for
    /// another channel): acknowledge it and count it as skipped.
    Skipped = 3,
    /// Not attempted (the gateway throttled it, or its breaker is open):
    /// retry it after the backoff without spending an attempt.
    Deferred = 4,
    /// Older than the alert's age limit: dead-letter it as `expired`.
    Expired = 5,
    /// A probe of a half-open breaker failed: a failed attempt, except that
    /// it never uses up the message's last attempt (the gateway is down,
    /// not the message at fault).
    ProbeFailed = 6,
}

impl Outcome {
    /// Every outcome, in the order `sms_settle` takes their ids.
    const ALL: [Self; 7] = [
        Self::Sent,
        Self::Failed,
        Self::Malformed,
        Self::Skipped,
        Self::Deferred,
        Self::Expired,
        Self::ProbeFailed,
    ];

    /// Whether the result was an attempt to send, with a send time.
    fn attempted(self) -> bool {
        matches!(self, Self::Sent | Self::Failed | Self::ProbeFailed)
    }
}

/// One result to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportItem {
    /// The message id.
    pub id: String,
    /// How the attempt ended.
    pub outcome: Outcome,
    /// How long the simulated send took, in microseconds.
    pub send_time_us: u64,
}

/// What one report call counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReportReply {
    /// Messages acknowledged for the first time.
    pub sent: u64,
    /// Successful sends of messages already settled elsewhere.
    pub duplicates: u64,
    /// Failed attempts.
    pub failed: u64,
    /// Messages moved to the dead stream.
    pub dead: u64,
    /// Whether this batch had been applied already (a retry after a lost reply).
    pub replayed: bool,
    /// Messages settled as nothing for this channel.
    pub skipped: u64,
    /// Messages set back to wait without spending an attempt.
    pub deferred: u64,
}

/// An entry this sender now holds, and how many deliveries it has had,
/// counting this one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedEntry {
    /// The entry.
    pub entry: StreamEntry,
    /// Deliveries so far, this one included.
    pub deliveries: u64,
}

/// The result of one claim call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimReply {
    /// Where the next call continues, or `None` when the scan reached the end.
    pub cursor: Option<String>,
    /// Entries dead-lettered instead of claimed (attempts used up, or deleted).
    pub dead: u64,
    /// Entries now held by this sender.
    pub claimed: Vec<ClaimedEntry>,
}

/// Whether this process holds a liveness lease (a sender name, a run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameHold {
    /// This process holds it for the lease's length; `lapsed` when nobody
    /// held it just before (taken now, or taken again after it ran out).
    Held {
        /// Whether nobody held it just before.
        lapsed: bool,
    },
    /// Another process holds it; its lease runs out in this long unless renewed.
    HeldByOther(Duration),
}

/// What [`Operator::prune`] did with one consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PruneOutcome {
    /// Removed from the group.
    Pruned,
    /// Kept: a live process holds the name.
    Live,
    /// Kept: it still holds pending entries (they are reclaimed after the lease).
    Pending,
    /// Kept: active more recently than the idle threshold.
    Recent,
    /// No such consumer.
    Missing,
}

/// The figures `sms_snapshot` returns, by name: numbers, and the few texts
/// (epoch, state detail, the group holding trimming back).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotFields {
    /// Counters and figures.
    pub numbers: HashMap<String, i64>,
    /// Texts.
    pub texts: HashMap<String, String>,
}

/// What one trim removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Trimmed {
    /// Settled entries removed from the stream.
    pub entries: u64,
    /// Dead letters removed from the dead stream.
    pub dead_letters: u64,
}

impl ReportReply {
    /// The reply of `sms_settle`, whichever decoder reads it, from `counts`:
    /// its integers in order (negative ones as 0), `None` past the end.
    pub(super) fn from_counts(
        mut counts: impl FnMut() -> Option<Result<i64, StoreError>>,
    ) -> Result<Self, StoreError> {
        let mut next = || {
            counts()
                .unwrap_or_else(|| Err(bad(REPORT, "reply too short")))
                .map(|n| n.max(0) as u64)
        };
        Ok(Self {
            sent: next()?,
            duplicates: next()?,
            failed: next()?,
            dead: next()?,
            replayed: next()? == 1,
            skipped: next()?,
            deferred: next()?,
        })
    }
}

/// An `sms_settle` call encoded for sending: cheap to send again.
#[derive(Debug, Clone)]
pub struct PreparedReport(Arc<redis::Cmd>);

impl PreparedReport {
    /// The FCALL, for a connection to send.
    pub(super) fn cmd(&self) -> &redis::Cmd {
        &self.0
    }
}

/// The name of the report function, named in errors.
pub(super) const REPORT: &str = "sms_settle";

/// Decodes `sms_settle`'s reply as redis-rs gives it (on a pooled connection).
fn report_reply(reply: redis::RedisResult<Value>) -> Result<ReportReply, StoreError> {
    let mut counts = array(REPORT, reply.map_err(StoreError::redis(REPORT))?)?.into_iter();
    ReportReply::from_counts(|| counts.next().map(|value| int(REPORT, value)))
}

impl Store {
    pub(super) async fn fcall(
        &self,
        name: &'static str,
        keys: &[String],
        args: Vec<Vec<u8>>,
    ) -> Result<Value, StoreError> {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(name).arg(keys.len()).arg(keys).arg(args);
        let mut conn = self.conn().await?;
        cmd.query_async(&mut conn)
            .await
            .map_err(StoreError::redis(name))
    }

    /// Takes or renews a liveness lease held in `key` (`sms_hold_name`).
    pub(super) async fn hold_lease(
        &self,
        key: String,
        token: &str,
        ttl: Duration,
    ) -> Result<NameHold, StoreError> {
        const NAME: &str = "sms_hold_name";
        let args = vec![
            self.epoch.as_bytes().to_vec(),
            token.as_bytes().to_vec(),
            ttl.as_millis().to_string().into_bytes(),
        ];
        let keys = [self.keys.queue(), key];
        let mut reply = array(NAME, self.fcall(NAME, &keys, args).await?)?.into_iter();
        let held = int(NAME, reply.next().unwrap_or(Value::Nil))?;
        let remaining = int(NAME, reply.next().unwrap_or(Value::Nil))?;
        let lapsed = reply.next().map(|v| int(NAME, v)).transpose()? == Some(1);
        Ok(if held == 1 {
            NameHold::Held { lapsed }
        } else {
            NameHold::HeldByOther(Duration::from_millis(remaining.max(0) as u64))
        })
    }

    /// Gives the lease in `key` back (`sms_release_name`), if `token` holds it.
    pub(super) async fn release_lease(&self, key: String, token: &str) -> Result<(), StoreError> {
        const NAME: &str = "sms_release_name";
        let args = vec![token.as_bytes().to_vec()];
        self.fcall(NAME, &[key], args).await?;
        Ok(())
    }
}

impl Sender {
    /// Acknowledges and counts a batch of results in one atomic call
    /// (`sms_settle`) on a pooled connection. `(token, seq)` identify the
    /// batch, so that a retry after a lost reply is not applied twice: `token`
    /// is unique per process and `seq` grows with every batch; batches may
    /// land in any order.
    #[allow(clippy::too_many_arguments)]
    pub async fn report(
        &self,
        consumer: &str,
        max_attempts: u32,
        retry_idle: Duration,
        token: &str,
        seq: u64,
        items: &[ReportItem],
    ) -> Result<ReportReply, StoreError> {
        let report = self.prepare_report(consumer, max_attempts, retry_idle, token, seq, items);
        self.rewrite_report(&report).await
    }

    /// Encodes the call of [`Sender::report`] once, to send it on a connection
    /// of the caller's and, after a failure, send it again.
    #[allow(clippy::too_many_arguments)]
    pub fn prepare_report(
        &self,
        consumer: &str,
        max_attempts: u32,
        retry_idle: Duration,
        token: &str,
        seq: u64,
        items: &[ReportItem],
    ) -> PreparedReport {
        let keys = [
            self.store.keys.queue(),
            self.store.keys.messages(),
            self.store.keys.dead(),
            self.store.keys.stats(),
            self.store.keys.sender_stats(consumer),
            self.store.keys.latency(),
        ];
        // The ids go grouped by outcome and the send times already bucketed,
        // so Redis does no per-result work beyond the commands each needs.
        let mut histogram = Histogram::default();
        let mut send_time_us: u64 = 0;
        let mut by_outcome = [0usize; Outcome::ALL.len()];
        for item in items {
            by_outcome[item.outcome as usize] += 1;
            if item.outcome.attempted() {
                histogram.record_us(item.send_time_us);
                send_time_us += item.send_time_us;
            }
        }
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(REPORT)
            .arg(keys.len())
            .arg(&keys)
            .arg(&*self.store.epoch)
            .arg(self.store.group())
            .arg(consumer)
            .arg(max_attempts)
            .arg(retry_idle.as_millis() as u64)
            .arg(token)
            .arg(seq)
            .arg(&by_outcome[..])
            // A deferred message waits the retry backoff, as a failed one.
            .arg(retry_idle.as_millis() as u64)
            .arg(send_time_us)
            .arg(&histogram.counts[..]);
        for outcome in Outcome::ALL {
            for item in items.iter().filter(|item| item.outcome == outcome) {
                cmd.arg(&item.id);
            }
        }
        PreparedReport(Arc::new(cmd))
    }

    /// Sends `report` on a pooled connection: the first time, or again after
    /// a failure (the batch applies at most once).
    pub async fn rewrite_report(&self, report: &PreparedReport) -> Result<ReportReply, StoreError> {
        let mut conn = self.store.conn().await?;
        report_reply(report.0.query_async(&mut conn).await)
    }

    /// Claims pending entries idle for at least `min_idle`, starting at
    /// `cursor` (`None` for the start), or dead-letters those whose attempts are
    /// used up (`sms_claim`). With `owner`, only that consumer's entries are
    /// scanned: a restarted sender recovering its own work passes its own name
    /// and a zero `min_idle`.
    pub async fn claim(
        &self,
        consumer: &str,
        min_idle: Duration,
        cursor: Option<&str>,
        count: usize,
        max_attempts: u32,
        owner: Option<&str>,
    ) -> Result<ClaimReply, StoreError> {
        const NAME: &str = "sms_claim";
        let keys = [
            self.store.keys.queue(),
            self.store.keys.messages(),
            self.store.keys.dead(),
            self.store.keys.stats(),
            self.store.keys.sender_stats(consumer),
        ];
        let args = vec![
            self.store.epoch.as_bytes().to_vec(),
            self.store.group().as_bytes().to_vec(),
            consumer.as_bytes().to_vec(),
            min_idle.as_millis().to_string().into_bytes(),
            cursor.unwrap_or("-").as_bytes().to_vec(),
            count.max(1).to_string().into_bytes(),
            max_attempts.to_string().into_bytes(),
            owner.unwrap_or("").as_bytes().to_vec(),
        ];
        let mut reply = array(NAME, self.store.fcall(NAME, &keys, args).await?)?.into_iter();
        let cursor = text(NAME, reply.next().unwrap_or(Value::Nil))?;
        let dead = int(NAME, reply.next().unwrap_or(Value::Nil))?.max(0) as u64;
        let mut claimed = Vec::new();
        for item in reply {
            let mut parts = array(NAME, item)?.into_iter();
            let id = text(NAME, parts.next().unwrap_or(Value::Nil))?;
            let deliveries = int(NAME, parts.next().unwrap_or(Value::Nil))?.max(0) as u64;
            let fields = field_pairs(NAME, parts.next().unwrap_or(Value::Array(Vec::new())))?;
            claimed.push(ClaimedEntry {
                // Read by redis-rs, which holds every value whole.
                entry: StreamEntry {
                    id,
                    fields,
                    oversized: None,
                },
                deliveries,
            });
        }
        Ok(ClaimReply {
            cursor: (cursor != "0").then_some(cursor),
            dead,
            claimed,
        })
    }

    /// Renews the lease of entries this sender is working on (`sms_renew`).
    /// Returns the ids that are no longer this sender's.
    pub async fn renew(&self, consumer: &str, ids: &[String]) -> Result<Vec<String>, StoreError> {
        const NAME: &str = "sms_renew";
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut args = Vec::with_capacity(3 + ids.len());
        args.push(self.store.epoch.as_bytes().to_vec());
        args.push(self.store.group().as_bytes().to_vec());
        args.push(consumer.as_bytes().to_vec());
        args.extend(ids.iter().map(|id| id.as_bytes().to_vec()));
        let keys = [self.store.keys.queue(), self.store.keys.messages()];
        let reply = self.store.fcall(NAME, &keys, args).await?;
        array(NAME, reply)?
            .into_iter()
            .map(|v| text(NAME, v))
            .collect()
    }

    /// Takes or renews this process's liveness lease on a sender name
    /// (`sms_hold_name`).
    pub async fn hold_name(
        &self,
        consumer: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<NameHold, StoreError> {
        self.store
            .hold_lease(self.store.keys.sender_lease(consumer), token, ttl)
            .await
    }

    /// Gives a sender name back (`sms_release_name`), if this process holds it.
    pub async fn release_name(&self, consumer: &str, token: &str) -> Result<(), StoreError> {
        self.store
            .release_lease(self.store.keys.sender_lease(consumer), token)
            .await
    }

    /// Applies the queue's retention once (`sms_trim`): removes settled
    /// entries and dead letters older than it, safely for every group.
    pub async fn trim(&self) -> Result<Trimmed, StoreError> {
        const NAME: &str = "sms_trim";
        let keys = [
            self.store.keys.queue(),
            self.store.keys.messages(),
            self.store.keys.dead(),
            self.store.keys.totals(),
            self.store.keys.stats(),
        ];
        let args = vec![
            self.store.epoch.as_bytes().to_vec(),
            self.store.group().as_bytes().to_vec(),
        ];
        let mut reply = array(NAME, self.store.fcall(NAME, &keys, args).await?)?.into_iter();
        let mut next = || int(NAME, reply.next().unwrap_or(Value::Nil)).map(|n| n.max(0) as u64);
        Ok(Trimmed {
            entries: next()?,
            dead_letters: next()?,
        })
    }
}

impl Operator {
    /// Removes `consumer` from the group if no live process holds its name, it
    /// has no pending entries and it was idle for at least `min_idle`
    /// (`sms_prune`, atomic).
    pub async fn prune(
        &self,
        consumer: &str,
        min_idle: Duration,
    ) -> Result<PruneOutcome, StoreError> {
        const NAME: &str = "sms_prune";
        let keys = [
            self.store.keys.queue(),
            self.store.keys.messages(),
            self.store.keys.sender_lease(consumer),
        ];
        let args = vec![
            self.store.epoch.as_bytes().to_vec(),
            self.store.group().as_bytes().to_vec(),
            consumer.as_bytes().to_vec(),
            min_idle.as_millis().to_string().into_bytes(),
        ];
        let outcome = text(NAME, self.store.fcall(NAME, &keys, args).await?)?;
        Ok(match outcome.as_str() {
            "pruned" => PruneOutcome::Pruned,
            "live" => PruneOutcome::Live,
            "pending" => PruneOutcome::Pending,
            "recent" => PruneOutcome::Recent,
            "missing" => PruneOutcome::Missing,
            other => return Err(bad(NAME, format!("unknown outcome '{other}'"))),
        })
    }

    /// Moves this channel's dead letters back into the stream, to be sent
    /// again by this channel only (`sms_requeue_to`, one atomic call).
    /// Returns how many were requeued and the ids that were not in the dead
    /// stream (or held no message).
    pub async fn requeue(&self, ids: &[String]) -> Result<(u64, Vec<String>), StoreError> {
        const NAME: &str = "sms_requeue_to";
        let keys = [
            self.store.keys.queue(),
            self.store.keys.messages(),
            self.store.keys.dead(),
            self.store.keys.totals(),
            self.store.keys.stats(),
        ];
        // Tagged even on a queue of one channel: a channel added later
        // from the beginning sends the original entry, and must skip this
        // copy.
        let mut args = Vec::with_capacity(2 + ids.len());
        args.push(self.store.epoch.as_bytes().to_vec());
        args.push(self.store.group().as_bytes().to_vec());
        args.extend(ids.iter().map(|id| id.as_bytes().to_vec()));
        let mut reply = array(NAME, self.store.fcall(NAME, &keys, args).await?)?.into_iter();
        let requeued = int(NAME, reply.next().unwrap_or(Value::Nil))?.max(0) as u64;
        let mut missing = Vec::new();
        let mut past_marker = false;
        for item in reply {
            let item = text(NAME, item)?;
            if past_marker {
                missing.push(item);
            } else if item == "missing" {
                past_marker = true;
            }
        }
        Ok((requeued, missing))
    }

    /// Deletes a bounded slice of the dead letters below `min_id`
    /// (`sms_dead_purge`); 0 once none is left.
    pub async fn purge_dead(&self, min_id: &str) -> Result<u64, StoreError> {
        const NAME: &str = "sms_dead_purge";
        let keys = [
            self.store.keys.queue(),
            self.store.keys.dead(),
            self.store.keys.stats(),
        ];
        let args = vec![
            self.store.epoch.as_bytes().to_vec(),
            min_id.as_bytes().to_vec(),
        ];
        Ok(int(NAME, self.store.fcall(NAME, &keys, args).await?)?.max(0) as u64)
    }
}

impl Inspector {
    /// Everything the monitor shows, read in one call (`sms_snapshot`): the
    /// totals hash plus stream, group, retention and identity figures, by
    /// name. Never fails on a damaged queue: it reports the damage.
    pub async fn snapshot_fields(&self) -> Result<SnapshotFields, StoreError> {
        const NAME: &str = "sms_snapshot";
        let keys = [
            self.store.keys.queue(),
            self.store.keys.messages(),
            self.store.keys.dead(),
            self.store.keys.stats(),
            self.store.keys.latency(),
            self.store.keys.totals(),
        ];
        let mut cmd = redis::cmd("FCALL_RO");
        cmd.arg(NAME)
            .arg(keys.len())
            .arg(&keys)
            .arg(self.store.group())
            .arg(&*self.store.epoch);
        let mut conn = self.store.conn().await?;
        let reply: Value = cmd
            .query_async(&mut conn)
            .await
            .map_err(StoreError::redis(NAME))?;
        let items = array(NAME, reply)?;
        let mut fields = SnapshotFields::default();
        let mut items = items.into_iter();
        while let (Some(name), Some(value)) = (items.next(), items.next()) {
            let name = String::from_utf8_lossy(&bytes(NAME, name)?).into_owned();
            match value {
                Value::Int(n) => {
                    fields.numbers.insert(name, n);
                }
                other => {
                    let text = String::from_utf8_lossy(&bytes(NAME, other)?).into_owned();
                    fields.texts.insert(name, text);
                }
            }
        }
        Ok(fields)
    }
}
