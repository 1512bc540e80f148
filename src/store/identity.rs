//! The queue's identity and lifetime settings.
//!
//! `migrate` creates a queue once ([`Store::create_queue`]): a random epoch in
//! the queue hash, the consumer group, the totals hash, and the retention.
//! Every other process opens the queue ([`Store::open`]): it reads the epoch
//! and passes it to every Function that writes, which refuses (`LOST`) when
//! the identity is gone or different. So a flushed Redis, one restarted
//! without its data, or another Redis behind the same address is noticed by
//! every running process, and nothing is ever re-created behind an
//! operator's back: a missing group is never created again from id 0, which
//! would send every message in the stream a second time.

use std::sync::Arc;
use std::time::Duration;

use rand::RngExt;
use redis::Value;

use super::channels::{self, ChannelStart};
use super::reply::{array, text};
use super::{Store, StoreError};
use crate::channel::Channel;

/// How long settled entries (or dead letters) are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Never removed.
    Forever,
    /// Removed once older than this (zero: as soon as it is safe).
    Keep(Duration),
}

impl Retention {
    /// Settled entries are kept an hour by default, so `audit` can still walk
    /// recent history.
    pub const DEFAULT: Self = Self::Keep(Duration::from_secs(3600));
    /// Dead letters are kept a week by default.
    pub const DEFAULT_DEAD: Self = Self::Keep(Duration::from_secs(7 * 24 * 3600));

    /// As stored in the queue hash: milliseconds, -1 for forever.
    pub fn to_millis(self) -> i64 {
        match self {
            Self::Forever => -1,
            Self::Keep(age) => i64::try_from(age.as_millis()).unwrap_or(i64::MAX),
        }
    }

    /// From the queue hash's milliseconds (negative: forever).
    pub fn from_millis(ms: i64) -> Self {
        u64::try_from(ms).map_or(Self::Forever, |ms| Self::Keep(Duration::from_millis(ms)))
    }
}

impl std::fmt::Display for Retention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Forever => f.write_str("forever"),
            Self::Keep(age) if age.is_zero() => f.write_str("0s"),
            // Whole days, hours or minutes as an operator writes them (`7d`).
            Self::Keep(age) if age.subsec_nanos() == 0 => {
                let secs = age.as_secs();
                match [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")]
                    .into_iter()
                    .find(|(unit, _)| secs % unit == 0)
                {
                    Some((unit, name)) => write!(f, "{}{name}", secs / unit),
                    None => write!(f, "{secs}s"),
                }
            }
            Self::Keep(age) => write!(f, "{}", humantime::format_duration(*age)),
        }
    }
}

/// What `migrate` asks of the queue; `None` keeps what the queue has (or the
/// default for a new queue).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueOptions {
    /// Retention of settled entries.
    pub retention: Option<Retention>,
    /// Retention of dead letters.
    pub dead_retention: Option<Retention>,
    /// How many partitions the queue has: it may grow, never shrink.
    pub partitions: Option<u32>,
    /// Channels the queue must have; those it lacks are added after the
    /// ones it has (a channel is never taken away).
    pub channels: Vec<Channel>,
    /// Where a channel added to a queue holding messages begins.
    pub channel_start: ChannelStart,
}

/// What [`Store::create_queue`] found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueStatus {
    /// A new queue was created.
    Created,
    /// A queue made before queues had an identity was given one.
    Adopted,
    /// The queue existed.
    Existing,
}

/// A partition whose epoch is not partition 0's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignPartition {
    /// The partition.
    pub partition: u32,
    /// The epoch it holds.
    pub epoch: String,
    /// Partition 0's.
    pub home_epoch: String,
}

impl std::fmt::Display for ForeignPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "partition {} holds epoch {}, partition 0 holds {}: it was created anew or \
             belongs to another queue; see `sms-alerts repair`",
            self.partition, self.epoch, self.home_epoch
        )
    }
}

/// A queue's identity and settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueIdentity {
    /// What `migrate` did.
    pub status: QueueStatus,
    /// The queue's epoch.
    pub epoch: String,
    /// Retention of settled entries.
    pub retention: Retention,
    /// Retention of dead letters.
    pub dead_retention: Retention,
    /// The partition count before `migrate`, and after.
    pub partitions: (u32, u32),
    /// The queue's channels after `migrate`, first one first.
    pub channels: Vec<Channel>,
    /// The channels `migrate` added.
    pub added_channels: Vec<String>,
}

/// The field of the migrations hash that records that the queue was given
/// an identity, so that an identity missing later is known to be lost.
const IDENTITY_MARK: &str = "identity";

impl Store {
    /// This handle's epoch: the identity it checks every write against.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Creates the queue if Redis holds none under this prefix, gives an
    /// identity to a queue from before identities, or checks an existing
    /// one; sets the retention asked for (`sms_create`, one atomic call).
    /// Refuses with [`StoreError::Lost`] when an identity was recorded but is
    /// gone while data remains, and [`StoreError::Damaged`] when the group is
    /// gone while the stream has history.
    pub async fn create_queue(&self, options: &QueueOptions) -> Result<QueueIdentity, StoreError> {
        let home = self.partition(0);
        // Check, then write: a partition the queue had that is gone now is
        // lost state, never created again here.
        home.check_partitions_present().await?;
        let (had, recorded) = home.read_channel_list().await?;
        let had = had.unwrap_or_else(|| vec![home.first_channel(&options.channels)]);
        let channels = channels::merged(&had, recorded, &options.channels)?;
        let home = Store {
            group: had[0].name.clone(),
            channels: Arc::from(had.clone()),
            keys: home.keys.with_channel(None),
            ..home
        };
        let first = home.create_partition(options, None).await?;
        let opened = home.with_epoch(first.epoch.clone());
        let before = opened.read_partition_count().await?;
        let wanted = options.partitions.unwrap_or(before);
        if wanted < before {
            return Err(shrink(&self.prefix, before, wanted));
        }
        for partition in 1..wanted {
            let created = opened
                .partition(partition)
                .create_partition(options, Some(&first.epoch))
                .await?;
            if created.epoch != first.epoch {
                return Err(StoreError::Damaged(format!(
                    "partition {partition} of queue '{}' belongs to another queue (epoch {}, \
                     partition 0 has {}): see `sms-alerts repair`",
                    self.prefix, created.epoch, first.epoch
                )));
            }
        }
        // Every partition gets every channel before the count or the list
        // names it, so no producer writes where a channel has no group yet.
        let added = opened
            .give_channels(
                &channels,
                had.len(),
                (before, wanted),
                options.channel_start,
                recorded,
            )
            .await?;
        opened.grow_partitions(wanted).await?;
        let channels = opened.record_channels(&channels).await?;
        Ok(QueueIdentity {
            partitions: (before, wanted),
            channels,
            added_channels: added,
            ..first
        })
    }

    /// [`StoreError::Lost`] when a partition the queue has is gone from
    /// Redis (its queue hash is missing: a flushed node, one restarted
    /// without its data), [`StoreError::Damaged`] when partitions exist
    /// beyond the count partition 0 records. Reads only; on a handle of
    /// partition 0.
    async fn check_partitions_present(&self) -> Result<(), StoreError> {
        let present = self.partitions_present().await?;
        let listed = |list: &[u32]| {
            list.iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        if present.first() != Some(&0) {
            if present.is_empty() {
                return Ok(());
            }
            return Err(StoreError::Lost(format!(
                "partition 0 of queue '{}' is gone from Redis at {} while partitions {} \
                 remain: a node was flushed or restarted without its data; see \
                 `sms-alerts repair`",
                self.prefix,
                self.url,
                listed(&present)
            )));
        }
        let recorded = self.read_partition_count().await?;
        let missing: Vec<u32> = (1..recorded).filter(|p| !present.contains(p)).collect();
        if !missing.is_empty() {
            return Err(StoreError::Lost(format!(
                "partition(s) {} of queue '{}' are gone from Redis at {} (their queue hash is \
                 missing) though {} records {recorded} partitions: a node was flushed or \
                 restarted without its data, or the count was raised by hand; see \
                 `sms-alerts repair`",
                listed(&missing),
                self.prefix,
                self.url,
                self.keys.queue()
            )));
        }
        let mut beyond = Vec::new();
        for partition in present.into_iter().filter(|&p| p >= recorded) {
            if self.partition(partition).was_written().await? {
                beyond.push(partition);
            }
        }
        if !beyond.is_empty() {
            return Err(beyond_count(&self.keys.queue(), recorded, &listed(&beyond)));
        }
        Ok(())
    }

    /// Whether anything was ever written to this partition's stream. A
    /// partition past the count that never was is a grow that did not end
    /// (a `migrate` stopped between creating partitions and recording the
    /// count, or one still under way): harmless, and the next `migrate
    /// --partitions` takes it in.
    async fn was_written(&self) -> Result<bool, StoreError> {
        let info = self.inspector().stream_info(&self.keys.messages()).await?;
        Ok(info.entries_added > 0)
    }

    /// Sets the partition count (`sms_partitions`), after every partition
    /// up to it was created.
    async fn grow_partitions(&self, count: u32) -> Result<(), StoreError> {
        const NAME: &str = "sms_partitions";
        let keys = [self.partition(0).keys.queue()];
        let args = vec![
            self.epoch.as_bytes().to_vec(),
            count.to_string().into_bytes(),
        ];
        match self.fcall(NAME, &keys, args).await {
            Err(StoreError::Redis { source, .. }) if source.code() == Some("SHRINK") => {
                let now = source
                    .detail()
                    .and_then(|d| d.trim().parse().ok())
                    .unwrap_or(0);
                Err(shrink(&self.prefix, now, count))
            }
            other => other.map(drop),
        }
    }

    /// The queue's partition count now (partition 0's queue hash; absent: 1).
    pub async fn read_partition_count(&self) -> Result<u32, StoreError> {
        let queue = self.partition(0).keys.queue();
        let mut conn = self.partition(0).conn().await?;
        let count: Option<String> = redis::cmd("HGET")
            .arg(&queue)
            .arg("partitions")
            .query_async(&mut conn)
            .await
            .map_err(StoreError::redis("HGET (partition count)"))?;
        parse_count(&queue, count)
    }

    /// Creates, adopts or checks this handle's partition (`sms_create`):
    /// with a new random epoch, or with `epoch`, the queue's, for a
    /// partition beyond the first.
    async fn create_partition(
        &self,
        options: &QueueOptions,
        epoch: Option<&str>,
    ) -> Result<QueueIdentity, StoreError> {
        const NAME: &str = "sms_create";
        let keys = [
            self.keys.queue(),
            self.keys.messages(),
            self.keys.totals(),
            self.keys.dead(),
            self.keys.migrations(),
        ];
        let setting = |value: Option<Retention>| {
            value.map_or_else(String::new, |r| r.to_millis().to_string())
        };
        let new_epoch = epoch.map_or_else(
            || format!("{:016x}", rand::rng().random::<u64>()),
            str::to_owned,
        );
        let args = vec![
            self.group().as_bytes().to_vec(),
            new_epoch.into_bytes(),
            setting(options.retention).into_bytes(),
            setting(options.dead_retention).into_bytes(),
            Retention::DEFAULT.to_millis().to_string().into_bytes(),
            Retention::DEFAULT_DEAD.to_millis().to_string().into_bytes(),
            IDENTITY_MARK.as_bytes().to_vec(),
        ];
        let mut reply = array(NAME, self.fcall(NAME, &keys, args).await?)?.into_iter();
        let mut next = || text(NAME, reply.next().unwrap_or(Value::Nil));
        let status = match next()?.as_str() {
            "created" => QueueStatus::Created,
            "adopted" => QueueStatus::Adopted,
            _ => QueueStatus::Existing,
        };
        let epoch = next()?;
        let millis = |value: String| Retention::from_millis(value.parse().unwrap_or(-1));
        Ok(QueueIdentity {
            status,
            epoch,
            retention: millis(next()?),
            dead_retention: millis(next()?),
            partitions: (1, 1),
            channels: self.channels.to_vec(),
            added_channels: Vec::new(),
        })
    }

    /// Opens the queue for a process that works on it: loads the Functions
    /// library if Redis lacks it (code, not state), reads the queue's epoch
    /// and checks the group; returns a handle that passes that epoch to every
    /// write. [`StoreError::Lost`] when Redis holds no queue under this prefix
    /// (never created, or its state is gone), [`StoreError::Damaged`] when
    /// its group is gone.
    pub async fn open(&self) -> Result<Store, StoreError> {
        let opened = self.open_read_only().await?;
        for partition in opened.partitions() {
            partition.diagnose().await?;
            if partition.library_version().await? < i64::from(super::migrate::LIBRARY_VERSION) {
                partition.ensure_library().await?;
            }
        }
        Ok(opened)
    }

    /// Opens the queue without writing anything (the inspection tools, which
    /// must work on a Redis at `maxmemory`): the library must be loaded.
    /// Every partition must hold the epoch of partition 0.
    pub async fn open_read_only(&self) -> Result<Store, StoreError> {
        let home = self.partition(0);
        let (epoch, count) = home.read_identity().await?;
        let channels = home
            .read_channels()
            .await?
            .unwrap_or_else(|| self.channels.to_vec());
        let opened = Store {
            partitions: count,
            ..home.with_epoch(epoch).on_channel(channels)?
        };
        for partition in opened.partitions().iter().skip(1) {
            partition.check_epoch().await?;
        }
        // A partition just past the count that holds messages means the
        // count was lowered; one that never held any is a grow under way.
        if opened.partition(count).was_written().await? {
            return Err(beyond_count(
                &opened.keys.queue(),
                count,
                &count.to_string(),
            ));
        }
        Ok(opened)
    }

    /// Reads the partition count again, for a long-running process that
    /// follows a queue as `migrate --partitions` grows it; the partitions
    /// added are checked like those [`Store::open`] found.
    pub async fn reopen_grown(&self) -> Result<Store, StoreError> {
        let count = self.read_partition_count().await?;
        if count < self.partitions {
            return Err(beyond_count(
                &self.partition(0).keys.queue(),
                count,
                &format!("{} to {}", count, self.partitions - 1),
            ));
        }
        if count == self.partitions {
            return Ok(self.clone());
        }
        let grown = Store {
            partitions: count,
            ..self.clone()
        };
        for partition in grown.partitions().iter().skip(self.partitions as usize) {
            partition.check_epoch().await?;
            partition.diagnose().await?;
        }
        Ok(grown)
    }

    /// [`StoreError::Lost`] unless this partition holds the handle's epoch.
    async fn check_epoch(&self) -> Result<(), StoreError> {
        let (epoch, _) = self.read_identity().await?;
        match self.foreign(epoch, &self.epoch) {
            None => Ok(()),
            Some(foreign) => Err(StoreError::Lost(format!(
                "queue '{}': {foreign}",
                self.prefix
            ))),
        }
    }

    /// This partition, holding `epoch`, as a foreign one unless that is
    /// `home`, partition 0's.
    fn foreign(&self, epoch: String, home: &str) -> Option<ForeignPartition> {
        (epoch != home).then(|| ForeignPartition {
            partition: self.keys.partition(),
            epoch,
            home_epoch: home.to_owned(),
        })
    }

    /// The partitions that hold an epoch other than partition 0's: each
    /// was created anew, or belongs to another queue. A partition whose
    /// identity is gone or unreadable is not listed (the calls that meet it
    /// tell of it), nor is any when partition 0's is.
    pub async fn foreign_partitions(&self) -> Result<Vec<ForeignPartition>, StoreError> {
        let home = match self.partition(0).read_identity().await {
            Ok((epoch, _)) => epoch,
            Err(err) if err.is_queue_state() => return Ok(Vec::new()),
            Err(err) => return Err(err),
        };
        let mut foreign = Vec::new();
        for partition in self.partitions().iter().skip(1) {
            match partition.read_identity().await {
                Ok((epoch, _)) => foreign.extend(partition.foreign(epoch, &home)),
                Err(err) if err.is_queue_state() => {}
                Err(err) => return Err(err),
            }
        }
        Ok(foreign)
    }

    /// A handle that checks its writes against `epoch`.
    pub fn with_epoch(&self, epoch: String) -> Store {
        Store {
            epoch: Arc::from(epoch),
            ..self.clone()
        }
    }

    /// Tells what is wrong with the queue after a call found its stream or
    /// group missing, or the library gone: [`StoreError::Lost`] when its
    /// identity is gone or another queue's, [`StoreError::Damaged`] when the
    /// stream or group is gone; `Ok` when all is in place again.
    pub async fn diagnose(&self) -> Result<(), StoreError> {
        let (epoch, _) = self.read_identity().await?;
        if !self.epoch.is_empty() && *self.epoch != epoch {
            return Err(StoreError::Lost(format!(
                "the queue was created anew (epoch {epoch}, this process started with {}): its \
                 earlier state is gone",
                self.epoch
            )));
        }
        if !self.inspector().group_info().await?.exists {
            return Err(StoreError::Damaged(format!(
                "consumer group {} of {} is gone; it is not re-created by itself, which would \
                 send every message in the stream again: see `sms-alerts repair`",
                self.group(),
                self.keys.messages()
            )));
        }
        Ok(())
    }

    /// This partition's epoch and the partition count its queue hash holds
    /// (1 when it holds none), or [`StoreError::Lost`].
    async fn read_identity(&self) -> Result<(String, u32), StoreError> {
        let queue = self.keys.queue();
        let mut conn = self.conn().await?;
        let (kind, (epoch, count)): (String, (Option<String>, Option<String>)) = redis::pipe()
            .cmd("TYPE")
            .arg(&queue)
            .cmd("HMGET")
            .arg(&queue)
            .arg("epoch")
            .arg("partitions")
            .query_async(&mut conn)
            .await
            .or_else(|err| match err.code() {
                // HMGET on a key of another type.
                Some("WRONGTYPE") => Ok(("other".to_owned(), (None, None))),
                _ => Err(err),
            })
            .map_err(StoreError::redis("HMGET (queue identity)"))?;
        match (kind.as_str(), epoch) {
            ("hash", Some(epoch)) => Ok((epoch, parse_count(&queue, count)?)),
            ("none", _) if self.keys.partition() > 0 => Err(StoreError::Lost(format!(
                "partition {} of queue '{}' is gone from Redis at {} ({queue} is missing)",
                self.keys.partition(),
                self.prefix,
                self.url
            ))),
            ("none", _) => Err(StoreError::Lost(format!(
                "no queue '{}' in Redis at {}: Redis was flushed, restarted without its data, \
                 or is another Redis (or the queue was never created: `sms-alerts migrate` \
                 creates it)",
                self.prefix, self.url
            ))),
            ("hash", None) => Err(StoreError::Lost(format!(
                "{queue} holds no epoch: the queue identity was removed"
            ))),
            _ => Err(StoreError::Damaged(format!(
                "{queue} is not a hash: the queue identity was overwritten"
            ))),
        }
    }
}

/// A partition count as the queue hash holds it: absent means 1.
fn parse_count(queue: &str, count: Option<String>) -> Result<u32, StoreError> {
    match count {
        None => Ok(1),
        Some(text) => match text.parse::<u32>() {
            Ok(count) if count > 0 => Ok(count),
            _ => Err(StoreError::Damaged(format!(
                "{queue} field partitions is {text:?}, not a partition count"
            ))),
        },
    }
}

/// Partitions found beyond the count partition 0 records.
fn beyond_count(queue: &str, recorded: u32, partitions: &str) -> StoreError {
    StoreError::Damaged(format!(
        "partition(s) {partitions} exist beyond the {recorded} partitions {queue} records: the \
         count was lowered by hand, which would leave their messages unread; see \
         `sms-alerts repair`"
    ))
}

/// The refusal to take partitions away.
fn shrink(prefix: &str, have: u32, asked: u32) -> StoreError {
    StoreError::Refused(format!(
        "queue '{prefix}' has {have} partitions; --partitions {asked} would remove some, with \
         their messages: a partition count only grows"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_round_trips_through_millis() {
        for retention in [
            Retention::Forever,
            Retention::Keep(Duration::ZERO),
            Retention::DEFAULT,
            Retention::DEFAULT_DEAD,
        ] {
            assert_eq!(Retention::from_millis(retention.to_millis()), retention);
        }
        assert_eq!(Retention::DEFAULT.to_string(), "1h");
        assert_eq!(Retention::DEFAULT_DEAD.to_string(), "7d");
        assert_eq!(Retention::Keep(Duration::from_secs(90)).to_string(), "90s");
        assert_eq!(
            Retention::Keep(Duration::from_millis(1500)).to_string(),
            "1s 500ms"
        );
        assert_eq!(Retention::Keep(Duration::ZERO).to_string(), "0s");
        assert_eq!(Retention::Forever.to_string(), "forever");
    }
}
