//! Stream operations: the sender's group reads and stream entries.

use super::{PendingReply, ReadConnection, Sender};
use crate::channel::Channel;
use crate::message::{Addressed, DecodeError, MessageRef, Oversized, RawFields};

/// One stream entry, its fields kept as raw bytes until decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    /// The entry id, which is also the message id.
    pub id: String,
    /// Field/value pairs as stored; none when a field was too long to read.
    pub fields: RawFields,
    /// The first field that was too long to read, if any: the entry is then
    /// not a message, and its fields were not kept.
    pub oversized: Option<Oversized>,
}

/// A stream id as a comparable pair (milliseconds, sequence): ids compare
/// as numbers, not as text. Ids Redis gives out always parse; anything else
/// sorts last.
pub fn id_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (
        ms.parse().unwrap_or(u64::MAX),
        seq.parse().unwrap_or(u64::MAX),
    )
}

impl StreamEntry {
    /// The message this entry holds, or why it holds none.
    pub fn message(&self) -> Result<MessageRef<'_>, DecodeError> {
        match &self.oversized {
            Some(oversized) => Err(oversized.clone().into()),
            None => MessageRef::from_fields(&self.fields),
        }
    }

    /// The entry decoded for `channel`: its address and text, or nothing
    /// for that channel; an error when it is not a valid message.
    pub fn addressed(&self, channel: &Channel) -> Result<Addressed<'_>, DecodeError> {
        match &self.oversized {
            Some(oversized) => Err(oversized.clone().into()),
            None => {
                Addressed::from_fields(&self.fields, &channel.name, channel.kind.address_field())
            }
        }
    }
}

impl Sender {
    /// Reads up to `count` never-delivered entries for `consumer`, waiting up to
    /// `block_ms` for the first one (0: answers at once, where Redis's own
    /// `BLOCK 0` would wait forever), on `conn` (the sender's read
    /// connection: the read may block). The request is on its way when this returns, so
    /// several reads can be in flight, reaching Redis in the order they were
    /// made and answered in it.
    pub fn read_new(
        &self,
        conn: &ReadConnection,
        consumer: &str,
        count: usize,
        block_ms: u64,
    ) -> PendingReply<Vec<StreamEntry>> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(self.store.group())
            .arg(consumer)
            .arg("COUNT")
            .arg(count);
        if block_ms > 0 {
            cmd.arg("BLOCK").arg(block_ms);
        }
        cmd.arg("STREAMS").arg(self.store.keys.messages()).arg(">");
        conn.read(&cmd)
    }
}
