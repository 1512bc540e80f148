//! The queue's channels: which ones it has (recorded in partition 0's queue
//! hash, `sms_channels`), giving a partition a channel (`sms_channel`), and
//! the handle of one channel.
//!
//! A queue from before channels records none: its channels are the
//! consumer groups its partition 0 has, each of the SMS kind, until
//! `migrate` records them.

use super::reply::text;
use super::{Store, StoreError};
use crate::channel::{self, Channel, DEFAULT_CHANNEL};

/// Where a channel added to a queue that already holds messages begins.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ChannelStart {
    /// After the newest message: the messages already in the queue are not
    /// the new channel's.
    #[default]
    End,
    /// With the oldest message the streams still hold.
    Beginning,
}

impl ChannelStart {
    fn id(self) -> &'static str {
        match self {
            Self::End => "$",
            Self::Beginning => "0",
        }
    }
}

impl Store {
    /// The queue's channels, first one first, as this handle read them when
    /// it opened the queue (one, the asked-for group, before that).
    pub fn channels(&self) -> &[Channel] {
        &self.channels
    }

    /// The channel this handle works on.
    pub fn channel(&self) -> &Channel {
        self.channels
            .iter()
            .find(|c| c.name == self.group)
            .unwrap_or(&self.channels[0])
    }

    /// The handle of channel `name` of the same queue and partition.
    /// [`StoreError::Refused`] when the queue has no such channel.
    pub fn for_channel(&self, name: &str) -> Result<Store, StoreError> {
        let position = self
            .channels
            .iter()
            .position(|c| c.name == name)
            .ok_or_else(|| self.unknown_channel(name))?;
        let own = (position > 0).then_some(name);
        Ok(Store {
            group: name.to_owned(),
            keys: self.keys.with_channel(own),
            ..self.clone()
        })
    }

    /// The handles of every channel of this partition, first one first.
    pub fn every_channel(&self) -> Vec<Store> {
        self.channels
            .iter()
            .filter_map(|c| self.for_channel(&c.name).ok())
            .collect()
    }

    /// Channels the queue's list does not name whose consumer group and
    /// counters partition 0 still holds: the list was edited or lost, and
    /// they would go unsent and unaudited. A group without our counters is
    /// not listed: it may be someone's own reader of the stream.
    pub async fn unlisted_channels(&self) -> Result<Vec<String>, StoreError> {
        let home = self.partition(0);
        let mut unlisted = Vec::new();
        for group in home.inspector().group_names().await? {
            if self.channels.iter().any(|c| c.name == group) {
                continue;
            }
            let stats = home.keys.with_channel(Some(&group)).stats();
            if home.operator().key_type(&stats).await? != "none" {
                unlisted.push(group);
            }
        }
        Ok(unlisted)
    }

    fn unknown_channel(&self, name: &str) -> StoreError {
        let names: Vec<&str> = self.channels.iter().map(|c| c.name.as_str()).collect();
        StoreError::Refused(format!(
            "queue '{}' has no channel '{name}'; its channels: {}",
            self.prefix,
            names.join(", ")
        ))
    }

    /// The channels partition 0 records, or, for a queue from before
    /// channels, its groups as SMS channels; `None` when there is no queue
    /// stream to ask.
    pub(super) async fn read_channels(&self) -> Result<Option<Vec<Channel>>, StoreError> {
        Ok(self.read_channel_list().await?.0)
    }

    /// [`Store::read_channels`], and whether partition 0 records the list
    /// (else it is inferred from the groups).
    pub(super) async fn read_channel_list(
        &self,
    ) -> Result<(Option<Vec<Channel>>, bool), StoreError> {
        let home = self.partition(0);
        let queue = home.keys.queue();
        let mut conn = home.conn().await?;
        let recorded: Option<String> = redis::cmd("HGET")
            .arg(&queue)
            .arg("channels")
            .query_async(&mut conn)
            .await
            .or_else(|err| match err.code() {
                Some("WRONGTYPE") => Ok(None),
                _ => Err(err),
            })
            .map_err(StoreError::redis("HGET (channels)"))?;
        if let Some(text) = recorded {
            return match channel::decode(&text) {
                Ok(channels) => Ok((Some(channels), true)),
                Err(reason) => Err(StoreError::Damaged(format!(
                    "{queue} field channels is {text:?}: {reason}"
                ))),
            };
        }
        let groups = home.inspector().group_names().await?;
        if groups.is_empty() {
            return Ok((None, false));
        }
        // The first channel is the one whose keys have no channel part: the
        // group asked for, else the one a queue from before channels had
        // by default, else the default now (a `migrate --channels` that
        // stopped before recording its list); XINFO lists groups by name.
        let mut channels: Vec<Channel> = groups.iter().map(|g| Channel::sms(g)).collect();
        let first = [self.group.as_str(), "senders", DEFAULT_CHANNEL]
            .into_iter()
            .find_map(|name| {
                channels
                    .iter()
                    .position(|c| !name.is_empty() && c.name == name)
            });
        if let Some(at) = first {
            let channel = channels.remove(at);
            channels.insert(0, channel);
        }
        Ok((Some(channels), false))
    }

    /// The handle of the channel asked for, with the channels Redis holds
    /// of the queue, for the tools that look at a queue without opening it
    /// (audit, repair): a channel list that cannot be read leaves the one
    /// channel this handle knows, for them to report.
    pub async fn found_channels(&self) -> Result<Store, StoreError> {
        match self.read_channels().await {
            Ok(Some(channels)) => self.on_channel(channels),
            Ok(None) => Ok(self.clone()),
            Err(err) if err.is_transient() => Err(err),
            Err(_) => Ok(self.clone()),
        }
    }

    /// The handle with the partitions and channels `migrate` added since
    /// this one was made, for a process that watches the queue while it
    /// grows (the monitor, `serve`'s reports). Nothing is checked here:
    /// the snapshot checks every partition's identity, keys and counters
    /// and says what is wrong. Records that cannot be read leave the handle
    /// as it was, for the snapshot to report them too.
    pub async fn watched(&self) -> Result<Store, StoreError> {
        let count = match self.read_partition_count().await {
            Ok(count) => count.max(self.partitions),
            Err(err) if err.is_transient() => return Err(err),
            Err(_) => self.partitions,
        };
        let grown = Store {
            partitions: count,
            ..self.clone()
        };
        match grown.read_channels().await {
            Ok(Some(channels)) if channels.len() != grown.channels.len() => {
                Ok(grown.on_channel(channels).unwrap_or(grown))
            }
            Err(err) if err.is_transient() => Err(err),
            _ => Ok(grown),
        }
    }

    /// This handle made the handle of the channel it was asked for (its
    /// group; the queue's first channel when none was asked for), among
    /// `channels`. [`StoreError::Refused`] when there is no such channel.
    pub(super) fn on_channel(&self, channels: Vec<Channel>) -> Result<Store, StoreError> {
        let asked = if self.group.is_empty() {
            channels[0].name.clone()
        } else {
            self.group.clone()
        };
        Store {
            channels: channels.into(),
            ..self.clone()
        }
        .for_channel(&asked)
    }

    /// The first channel of a queue being created: the first of `wanted`,
    /// else the one asked for (of the kind its name says), else the default.
    pub(super) fn first_channel(&self, wanted: &[Channel]) -> Channel {
        wanted.first().cloned().unwrap_or_else(|| {
            if self.group.is_empty() {
                Channel::sms(DEFAULT_CHANNEL)
            } else {
                Channel::parse(&self.group).unwrap_or_else(|_| Channel::sms(&self.group))
            }
        })
    }

    /// Gives this handle's partition channel `channel` (`sms_channel`):
    /// its group, starting at `start` when created now, and its counters.
    /// With `adopt` (the queue records no channels yet), a group from
    /// before channels without counters of its own gets empty ones;
    /// otherwise a group whose counters are gone is refused as damaged.
    /// Returns whether it was created.
    pub(super) async fn add_channel(
        &self,
        channel: &Channel,
        is_first: bool,
        start: ChannelStart,
        adopt: bool,
    ) -> Result<bool, StoreError> {
        const NAME: &str = "sms_channel";
        let keys = [
            self.keys.queue(),
            self.keys.messages(),
            self.keys
                .with_channel((!is_first).then_some(channel.name.as_str()))
                .stats(),
        ];
        let args = vec![
            self.epoch.as_bytes().to_vec(),
            channel.name.as_bytes().to_vec(),
            start.id().as_bytes().to_vec(),
            if adopt { b"1".to_vec() } else { b"0".to_vec() },
        ];
        let reply = self.fcall(NAME, &keys, args).await?;
        Ok(text(NAME, reply)? == "created")
    }

    /// Gives partitions `0..count` every channel of `channels` (the first
    /// `had` of which the queue had): partitions below `before` existed,
    /// so a channel new to them begins at `start`; the others are new and
    /// empty, and every channel begins with them. `recorded`: whether the
    /// queue records its channels (see [`Store::add_channel`]). Returns the
    /// names of the channels created now.
    pub(super) async fn give_channels(
        &self,
        channels: &[Channel],
        had: usize,
        (before, count): (u32, u32),
        start: ChannelStart,
        recorded: bool,
    ) -> Result<Vec<String>, StoreError> {
        let mut added = Vec::new();
        for partition in 0..count {
            let start = if partition < before {
                start
            } else {
                ChannelStart::Beginning
            };
            for (i, channel) in channels.iter().enumerate() {
                let created = self
                    .partition(partition)
                    .add_channel(channel, i == 0, start, !recorded)
                    .await?;
                if created && i >= had && !added.contains(&channel.name) {
                    added.push(channel.name.clone());
                }
            }
        }
        Ok(added)
    }

    /// Adds to an opened queue the channels of `wanted` it lacks, after
    /// the newest message, on every partition, then records them; the
    /// queue is never created here. Returns the names added; reopen the
    /// queue to work on them.
    pub async fn ensure_channels(&self, wanted: &[Channel]) -> Result<Vec<String>, StoreError> {
        let had = self.channels.to_vec();
        let channels = merged(&had, true, wanted)?;
        if channels.len() == had.len() {
            return Ok(Vec::new());
        }
        let count = self.partitions;
        let (_, recorded) = self.read_channel_list().await?;
        let added = self
            .give_channels(
                &channels,
                had.len(),
                (count, count),
                ChannelStart::End,
                recorded,
            )
            .await?;
        self.record_channels(&channels).await?;
        Ok(added)
    }

    /// Records the queue's channels on partition 0 (`sms_channels`), after
    /// every partition has them; returns the list recorded. When another
    /// process recorded channels since this one read the list, theirs are
    /// kept, in their order, and these added after them.
    pub(super) async fn record_channels(
        &self,
        channels: &[Channel],
    ) -> Result<Vec<Channel>, StoreError> {
        const NAME: &str = "sms_channels";
        /// Times the list is merged with one recorded meanwhile.
        const ATTEMPTS: usize = 5;
        let home = self.partition(0);
        let keys = [home.keys.queue()];
        let mut list = channels.to_vec();
        let mut refusal = String::new();
        for _ in 0..ATTEMPTS {
            let args = vec![
                self.epoch.as_bytes().to_vec(),
                channel::encode(&list).into_bytes(),
            ];
            match home.fcall(NAME, &keys, args).await {
                Err(StoreError::Redis { source, .. }) if source.code() == Some("SHRINK") => {
                    refusal = source.detail().unwrap_or("").trim().to_owned();
                    let (Some(theirs), true) = self.read_channel_list().await? else {
                        break;
                    };
                    list = merged(&theirs, true, &list)?;
                    // Theirs are on the partitions they knew; partitions
                    // added since (by this process) get them too, from
                    // their first message.
                    let count = self.read_partition_count().await?;
                    let all = (list.len(), (0, count));
                    self.give_channels(&list, all.0, all.1, ChannelStart::Beginning, true)
                        .await?;
                }
                other => return other.map(|_| list),
            }
        }
        Err(StoreError::Refused(format!(
            "queue '{}' records channels {refusal}; a channel is never taken away or \
             reordered (its group holds what it has not settled)",
            self.prefix,
        )))
    }
}

/// The channels a queue has after `migrate`: those it had, then those asked
/// for that it lacks. [`StoreError::Refused`] when one asked for has a name
/// the queue already records for another kind; a kind only inferred (no
/// list recorded yet) takes the one asked for.
pub(super) fn merged(
    had: &[Channel],
    recorded: bool,
    wanted: &[Channel],
) -> Result<Vec<Channel>, StoreError> {
    let mut all = had.to_vec();
    for channel in wanted {
        match all.iter_mut().find(|c| c.name == channel.name) {
            Some(existing) if !recorded => existing.kind = channel.kind,
            Some(existing) if existing.kind != channel.kind => {
                return Err(StoreError::Refused(format!(
                    "channel '{}' is of kind {} already, not {}",
                    channel.name,
                    existing.kind.name(),
                    channel.kind.name()
                )));
            }
            Some(_) => {}
            None => {
                // `sms` (or `email`) added where a channel of that kind
                // exists under another name is most likely a queue from
                // before channels, whose `senders` group sends SMS already:
                // a second SMS channel would send every message again.
                if let Some(same) = all
                    .iter()
                    .find(|c| c.kind == channel.kind && channel.name == channel.kind.name())
                {
                    return Err(StoreError::Refused(format!(
                        "channel '{}' sends {} already; channel '{}' would send every message \
                         again: list '{}' instead, or name a second channel of that kind \
                         yourself (e.g. backup:{})",
                        same.name,
                        channel.kind.name(),
                        channel.name,
                        same.name,
                        channel.kind.name()
                    )));
                }
                all.push(channel.clone());
            }
        }
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(specs: &[&str]) -> Vec<Channel> {
        specs.iter().map(|s| Channel::parse(s).unwrap()).collect()
    }

    #[test]
    fn a_second_channel_named_after_a_kind_the_queue_sends_is_refused() {
        let legacy = parsed(&["senders"]);
        let refused = merged(&legacy, true, &parsed(&["sms", "email"])).unwrap_err();
        assert!(
            refused.to_string().contains("'senders' sends sms already"),
            "{refused}"
        );
        let kept = merged(&legacy, true, &parsed(&["senders", "email", "backup:sms"])).unwrap();
        assert_eq!(kept, parsed(&["senders", "email", "backup:sms"]));
        let fresh = merged(&parsed(&["sms"]), false, &parsed(&["sms", "email"])).unwrap();
        assert_eq!(fresh, parsed(&["sms", "email"]));
    }
}
