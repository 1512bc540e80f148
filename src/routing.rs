//! Which partition a message goes to. A pure function of the message's key
//! and the partition count, so any producer, in any language, routes a key
//! to the same partition: `CRC-32/ISO-HDLC(key) mod partitions` (the CRC of
//! zlib, Ethernet and PNG). Messages without a key go round robin.
//!
//! Messages with one key stay in one partition, in the order they were
//! written, as long as the partition count does not change; growing it moves
//! most keys, as in Kafka.

/// CRC-32/ISO-HDLC: the same checksum as `zlib.crc32` or `crc32fast`.
const KEY_CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// The partition of a message with routing key `key`, out of `partitions`
/// (at least 1).
pub fn partition_of_key(key: &[u8], partitions: u32) -> u32 {
    KEY_CRC.checksum(key) % partitions.max(1)
}

/// How a producer picks each message's partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Routing {
    /// By the recipient's number: one phone's alerts stay in order.
    #[default]
    Recipient,
    /// By one fixed key for every message of the run.
    Key(String),
    /// Round robin over the partitions.
    RoundRobin,
    /// Every message to this one partition.
    Partition(u32),
}

impl Routing {
    /// How the routing is written in a producer run's record, so that a
    /// resumed run routes as its first producer did: `recipient`,
    /// `key:<key>`, `round_robin` or `partition:<p>`.
    pub fn to_record(&self) -> String {
        match self {
            Self::Recipient => "recipient".to_owned(),
            Self::Key(key) => format!("key:{key}"),
            Self::RoundRobin => "round_robin".to_owned(),
            Self::Partition(partition) => format!("partition:{partition}"),
        }
    }

    /// Reads a routing written by [`Routing::to_record`]; `None` when the
    /// text is none of its forms.
    pub fn from_record(text: &str) -> Option<Self> {
        match text {
            "recipient" => Some(Self::Recipient),
            "round_robin" => Some(Self::RoundRobin),
            _ => {
                if let Some(key) = text.strip_prefix("key:") {
                    Some(Self::Key(key.to_owned()))
                } else {
                    text.strip_prefix("partition:")?
                        .parse()
                        .ok()
                        .map(Self::Partition)
                }
            }
        }
    }
}

/// Routes one producer's messages: keeps the round-robin position between
/// calls.
#[derive(Debug, Clone)]
pub struct Router {
    routing: Routing,
    next: u32,
}

impl Router {
    /// A router by `routing`; round robin starts at `start` (a producer
    /// passes something of its own, so producers do not all start at 0).
    pub fn new(routing: Routing, start: u32) -> Self {
        Self {
            routing,
            next: start,
        }
    }

    /// The partition of a message to `recipient`, out of `partitions`.
    /// An explicit partition beyond the count is the caller's to refuse
    /// ([`Routing::Partition`] is checked against the count at start).
    pub fn route(&mut self, recipient: &str, partitions: u32) -> u32 {
        let partitions = partitions.max(1);
        match &self.routing {
            Routing::Recipient => partition_of_key(recipient.as_bytes(), partitions),
            Routing::Key(key) => partition_of_key(key.as_bytes(), partitions),
            Routing::Partition(partition) => *partition,
            Routing::RoundRobin => {
                let partition = self.next % partitions;
                self.next = self.next.wrapping_add(1);
                partition
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_route_by_crc32_modulo_the_count() {
        // CRC-32 check value: crc32(b"123456789") = 0xCBF43926.
        assert_eq!(partition_of_key(b"123456789", u32::MAX), 0xCBF4_3926);
        assert_eq!(partition_of_key(b"123456789", 6), 0xCBF4_3926 % 6);
        // Pinned (also Python's zlib.crc32(key) % 6): a change here moves
        // every key of every queue.
        let routed: Vec<u32> = ["+4915112345678", "+12025550123", "+447700900123", ""]
            .iter()
            .map(|key| partition_of_key(key.as_bytes(), 6))
            .collect();
        assert_eq!(routed, [3, 4, 4, 0]);
        assert_eq!(partition_of_key(b"anything", 1), 0);
        assert_eq!(partition_of_key(b"anything", 0), 0);
    }

    #[test]
    fn routers_route_as_asked() {
        let mut by_recipient = Router::new(Routing::Recipient, 0);
        assert_eq!(
            by_recipient.route("+4915112345678", 6),
            partition_of_key(b"+4915112345678", 6)
        );
        let mut by_key = Router::new(Routing::Key("region-7".into()), 0);
        let first = by_key.route("+1", 6);
        assert!((0..100).all(|i| by_key.route(&format!("+{i}"), 6) == first));
        let mut round = Router::new(Routing::RoundRobin, 4);
        let seen: Vec<u32> = (0..7).map(|_| round.route("+1", 6)).collect();
        assert_eq!(seen, [4, 5, 0, 1, 2, 3, 4]);
        let mut fixed = Router::new(Routing::Partition(2), 0);
        assert_eq!(fixed.route("+1", 6), 2);
    }

    #[test]
    fn a_routing_reads_back_from_its_record() {
        for routing in [
            Routing::Recipient,
            Routing::Key("region:7".into()),
            Routing::Key(String::new()),
            Routing::RoundRobin,
            Routing::Partition(5),
        ] {
            assert_eq!(
                Routing::from_record(&routing.to_record()),
                Some(routing.clone()),
                "{routing:?}"
            );
        }
        assert_eq!(Routing::from_record("partition:x"), None);
        assert_eq!(Routing::from_record("sideways"), None);
    }
}
