//! The only place Redis key names are built.
//!
//! Every key that one Function call touches carries the same hash tag,
//! `{<prefix>:<partition>}`, so that all of them hash to one Redis Cluster slot
//! and the same code runs unchanged on a cluster.

/// What a key of a queue is for, read back from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRole {
    /// The queue's identity hash.
    Queue,
    /// The stream of messages.
    Messages,
    /// The dead-letter stream.
    Dead,
    /// The totals hash.
    Stats,
    /// One sender's counters.
    SenderStats,
    /// The send-time histogram.
    Latency,
    /// A sender name's lease.
    SenderLease,
    /// The producer runs by start time.
    Runs,
    /// The producer runs not finished.
    OpenRuns,
    /// One run's record.
    Run,
    /// One run's lease.
    RunLease,
    /// One run's written batches.
    RunBatches,
    /// The migrations applied.
    Migrations,
    /// The answer to one HTTP request with an idempotency key.
    Idempotency,
    /// A gateway's token bucket.
    GatewayBucket,
}

impl KeyRole {
    /// The Redis type a key of this role holds (as `TYPE` names it).
    pub fn redis_type(self) -> &'static str {
        match self {
            Self::Messages | Self::Dead => "stream",
            Self::SenderLease | Self::RunLease | Self::Idempotency => "string",
            Self::Runs => "zset",
            Self::OpenRuns => "set",
            Self::Queue
            | Self::Stats
            | Self::SenderStats
            | Self::Latency
            | Self::Run
            | Self::RunBatches
            | Self::Migrations
            | Self::GatewayBucket => "hash",
        }
    }
}

/// Redis Cluster's slot count: a key's slot is CRC16 of its hash tag modulo this.
pub const CLUSTER_SLOTS: u16 = 16384;

/// CRC16/XMODEM, the checksum Redis Cluster maps keys to slots with.
const SLOT_CRC: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_XMODEM);

/// The Redis Cluster slot of `key`: that of its hash tag (the text between
/// the first `{` and the next `}`, when not empty), else of the whole key.
pub fn cluster_slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    SLOT_CRC.checksum(hashed) % CLUSTER_SLOTS
}

/// The key names of one partition of a queue, as one channel sees them: a
/// prefix, a partition and a channel.
///
/// A channel's own keys (its counters, dead letters, histogram and sender
/// names) carry `ch:<channel>:` after the hash tag, except the queue's first
/// channel's, which keep the names they had before queues had channels; the
/// first channel's counters share the totals hash with `produced`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    tag: String,
    partition: u32,
    /// `ch:<channel>` for a channel other than the queue's first, else empty.
    channel: String,
}

impl Keys {
    /// The keys of partition 0 under `prefix`: the partition that also holds
    /// what belongs to the whole queue (its partition count, producer runs).
    pub fn new(prefix: &str) -> Self {
        Self::for_partition(prefix, 0)
    }

    /// The keys of one partition under `prefix`.
    pub fn for_partition(prefix: &str, partition: u32) -> Self {
        Self {
            tag: format!("{{{prefix}:{partition}}}"),
            partition,
            channel: String::new(),
        }
    }

    /// Partition `partition` of the same queue, as the same channel sees it.
    pub fn on_partition(&self, partition: u32) -> Self {
        Self {
            tag: match self.tag.rsplit_once(':') {
                Some((prefix, _)) => format!("{prefix}:{partition}}}"),
                None => self.tag.clone(),
            },
            partition,
            channel: self.channel.clone(),
        }
    }

    /// The same partition as channel `channel` sees it: `None` for the
    /// queue's first channel.
    pub fn with_channel(&self, channel: Option<&str>) -> Self {
        Self {
            channel: channel.map_or_else(String::new, |name| format!(":ch:{name}")),
            ..self.clone()
        }
    }

    /// The start of this channel's own key names.
    fn channel_tag(&self) -> String {
        format!("{}{}", self.tag, self.channel)
    }

    /// The partition these keys belong to.
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// The Redis Cluster slot every key of this partition hashes to.
    pub fn slot(&self) -> u16 {
        cluster_slot(self.tag.as_bytes())
    }

    /// The stream of messages waiting to be sent.
    pub fn messages(&self) -> String {
        format!("{}:messages", self.tag)
    }

    /// The channel's dead-letter stream: messages that used up their
    /// attempts, expired or could not be decoded.
    pub fn dead(&self) -> String {
        format!("{}:dead", self.channel_tag())
    }

    /// The hash of the channel's counters (sent, failed, dead, …); for the
    /// first channel, the totals hash.
    pub fn stats(&self) -> String {
        format!("{}:stats", self.channel_tag())
    }

    /// The hash of the queue's totals: what producers and retention count
    /// (produced, requeued, trimmed), whichever channel this is.
    pub fn totals(&self) -> String {
        format!("{}:stats", self.tag)
    }

    /// The hash of one sender's counters.
    pub fn sender_stats(&self, consumer: &str) -> String {
        format!("{}:stats:{consumer}", self.channel_tag())
    }

    /// The hash of send-time histogram buckets (`le_<µs>` fields), for percentiles.
    pub fn latency(&self) -> String {
        format!("{}:latency", self.channel_tag())
    }

    /// The liveness lease that keeps two live processes from sharing a sender name.
    pub fn sender_lease(&self, consumer: &str) -> String {
        format!("{}:lease:{consumer}", self.channel_tag())
    }

    /// The queue's identity and settings: its epoch, creation time and
    /// retention. Written once by `migrate`; every writing Function checks it.
    pub fn queue(&self) -> String {
        format!("{}:queue", self.tag)
    }

    /// Producer run ids by start time (a sorted set), for `runs`.
    pub fn runs(&self) -> String {
        format!("{}:runs", self.tag)
    }

    /// The producer runs not finished yet (a set): running, stopped or died.
    pub fn open_runs(&self) -> String {
        format!("{}:runs:open", self.tag)
    }

    /// One producer run's record: count, seed, batch size, state.
    pub fn run(&self, run_id: &str) -> String {
        format!("{}:run:{run_id}", self.tag)
    }

    /// The liveness lease of the producer writing one run.
    pub fn run_lease(&self, run_id: &str) -> String {
        format!("{}:run:{run_id}:lease", self.tag)
    }

    /// The hash in which one producer run records the batches it has written
    /// on this partition (seq -> messages: a batch's part here), so that a
    /// part retried after a lost reply, or by `produce --resume`, is not
    /// written twice. Partition 0's marks each batch once it is whole.
    pub fn run_batches(&self, run_id: &str) -> String {
        format!("{}:run:{run_id}:batches", self.tag)
    }

    /// The token bucket of gateway `name`: the throughput cap every sender
    /// of that gateway shares (kept with partition 0's keys).
    pub fn gateway_bucket(&self, name: &str) -> String {
        format!("{}:gateway:{name}", self.tag)
    }

    /// The record of the HTTP request with `Idempotency-Key` `key` on this
    /// partition: the request's fingerprint and the ids its messages got
    /// here, kept for the key's lifetime so that a repeat lands nothing.
    pub fn request_idempotency(&self, key: &str) -> String {
        format!("{}:idem:req:{key}", self.tag)
    }

    /// The record of the messages with `request_id` `key` on this
    /// partition, as [`Keys::request_idempotency`] for a request.
    pub fn message_idempotency(&self, key: &str) -> String {
        format!("{}:idem:msg:{key}", self.tag)
    }

    /// A SCAN pattern matching the queue hash of every partition of the
    /// queue under `prefix` (prefixes are validated key parts: no glob
    /// characters to escape).
    pub fn queue_pattern(prefix: &str) -> String {
        format!("{{{prefix}:*}}:queue")
    }

    /// The partition whose queue hash `key` is, if it is one under `prefix`.
    pub fn queue_partition(prefix: &str, key: &str) -> Option<u32> {
        let tag = key.strip_prefix('{')?.strip_suffix("}:queue")?;
        let (found, partition) = tag.rsplit_once(':')?;
        (found == prefix).then(|| partition.parse().ok())?
    }

    /// A SCAN pattern matching every key of this partition. Prefixes are
    /// validated key parts, so there are no glob characters to escape.
    pub fn all_pattern(&self) -> String {
        format!("{}:*", self.tag)
    }

    /// The hash of migration versions applied to this Redis.
    pub fn migrations(&self) -> String {
        format!("{}:migrations", self.tag)
    }

    /// What `key` is for, if it is one of this queue's keys (of any channel).
    pub fn role(&self, key: &str) -> Option<KeyRole> {
        let rest = key.strip_prefix(&self.tag)?.strip_prefix(':')?;
        if let Some(channel_key) = rest.strip_prefix("ch:") {
            let (_, own) = channel_key.split_once(':')?;
            return Some(match own {
                "dead" => KeyRole::Dead,
                "stats" => KeyRole::Stats,
                "latency" => KeyRole::Latency,
                _ if own.starts_with("stats:") => KeyRole::SenderStats,
                _ if own.starts_with("lease:") => KeyRole::SenderLease,
                _ => return None,
            });
        }
        Some(match rest {
            "queue" => KeyRole::Queue,
            "messages" => KeyRole::Messages,
            "dead" => KeyRole::Dead,
            "stats" => KeyRole::Stats,
            "latency" => KeyRole::Latency,
            "runs" => KeyRole::Runs,
            "runs:open" => KeyRole::OpenRuns,
            "migrations" => KeyRole::Migrations,
            _ => {
                if let Some(run) = rest.strip_prefix("run:") {
                    if run.ends_with(":lease") {
                        KeyRole::RunLease
                    } else if run.ends_with(":batches") {
                        KeyRole::RunBatches
                    } else {
                        KeyRole::Run
                    }
                } else if rest.starts_with("stats:") {
                    KeyRole::SenderStats
                } else if rest.starts_with("lease:") {
                    KeyRole::SenderLease
                } else if rest.starts_with("idem:") {
                    KeyRole::Idempotency
                } else if rest.starts_with("gateway:") {
                    KeyRole::GatewayBucket
                } else {
                    return None;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_shares_one_hash_tag() {
        let keys = Keys::new("sms");
        for key in [
            keys.messages(),
            keys.dead(),
            keys.stats(),
            keys.latency(),
            keys.sender_stats("a"),
            keys.sender_lease("a"),
            keys.queue(),
            keys.runs(),
            keys.open_runs(),
            keys.run("r"),
            keys.run_lease("r"),
            keys.run_batches("r"),
            keys.migrations(),
            keys.request_idempotency("k"),
            keys.message_idempotency("k"),
        ] {
            assert!(key.starts_with("{sms:0}:"), "{key} lacks the hash tag");
        }
        assert_eq!(keys.messages(), "{sms:0}:messages");
    }

    #[test]
    fn every_key_reads_back_as_its_role() {
        let keys = Keys::new("sms");
        for (key, role) in [
            (keys.queue(), KeyRole::Queue),
            (keys.messages(), KeyRole::Messages),
            (keys.dead(), KeyRole::Dead),
            (keys.stats(), KeyRole::Stats),
            (keys.sender_stats("a"), KeyRole::SenderStats),
            (keys.latency(), KeyRole::Latency),
            (keys.sender_lease("a"), KeyRole::SenderLease),
            (keys.runs(), KeyRole::Runs),
            (keys.open_runs(), KeyRole::OpenRuns),
            (keys.run("r"), KeyRole::Run),
            (keys.run_lease("r"), KeyRole::RunLease),
            (keys.run_batches("r"), KeyRole::RunBatches),
            (keys.migrations(), KeyRole::Migrations),
            (keys.request_idempotency("k"), KeyRole::Idempotency),
            (keys.message_idempotency("k"), KeyRole::Idempotency),
            (keys.gateway_bucket("g"), KeyRole::GatewayBucket),
        ] {
            assert_eq!(keys.role(&key), Some(role), "{key}");
        }
        let email = keys.with_channel(Some("email"));
        for (key, role) in [
            (email.dead(), KeyRole::Dead),
            (email.stats(), KeyRole::Stats),
            (email.sender_stats("a"), KeyRole::SenderStats),
            (email.latency(), KeyRole::Latency),
            (email.sender_lease("a"), KeyRole::SenderLease),
        ] {
            assert!(key.starts_with("{sms:0}:ch:email:"), "{key}");
            assert_eq!(keys.role(&key), Some(role), "{key}");
        }
        assert_eq!(email.totals(), keys.stats());
        let third = email.on_partition(3);
        assert_eq!(third.dead(), "{sms:3}:ch:email:dead");
        assert_eq!(
            third,
            Keys::for_partition("sms", 3).with_channel(Some("email"))
        );
        assert_eq!(email.messages(), keys.messages());
        assert_eq!(keys.role("{other:0}:stats"), None);
        assert_eq!(keys.role("{sms:0}:whatever"), None);
    }

    #[test]
    fn queue_hashes_name_their_partition() {
        assert_eq!(Keys::queue_pattern("sms"), "{sms:*}:queue");
        let seventh = Keys::for_partition("sms", 7).queue();
        assert_eq!(Keys::queue_partition("sms", &seventh), Some(7));
        assert_eq!(Keys::queue_partition("sms", "{sms:x}:queue"), None);
        assert_eq!(Keys::queue_partition("sms", "{other:1}:queue"), None);
        assert_eq!(Keys::queue_partition("sms", "{sms:1}:stats"), None);
    }

    #[test]
    fn slots_are_redis_clusters() {
        // Values from Redis's documentation of CLUSTER KEYSLOT.
        assert_eq!(cluster_slot(b"somekey"), 11058);
        assert_eq!(cluster_slot(b"foo{hash_tag}"), 2515);
        assert_eq!(
            cluster_slot(b"{user1000}.following"),
            cluster_slot(b"user1000")
        );
        assert_eq!(cluster_slot(b"foo{}{bar}"), cluster_slot(b"foo{}{bar}"));
        assert_ne!(cluster_slot(b"foo{}{bar}"), cluster_slot(b"bar"));
        // CLUSTER KEYSLOT sms:0 … sms:5 on Redis 7.0.15.
        let slots: Vec<u16> = (0..6)
            .map(|p| Keys::for_partition("sms", p).slot())
            .collect();
        assert_eq!(slots, [3669, 7796, 11799, 15926, 3793, 7920]);
        assert_eq!(
            Keys::for_partition("sms", 0).slot(),
            cluster_slot(b"{sms:0}:messages")
        );
    }
}
