//! Stream operations: the sender's group reads, stream entries, counters,
//! and creating the consumer group.

use std::future::Future;

use super::{ReadConnection, Store, StoreError};
use crate::message::{DecodeError, MessageRef, Oversized, RawFields};

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

impl StreamEntry {
    /// The message this entry holds, or why it holds none.
    pub fn message(&self) -> Result<MessageRef<'_>, DecodeError> {
        match &self.oversized {
            Some(oversized) => Err(oversized.clone().into()),
            None => MessageRef::from_fields(&self.fields),
        }
    }
}

impl Store {
    /// Creates the stream and the consumer group if missing. The group starts at
    /// id 0, so messages produced before the first sender are not skipped.
    pub async fn ensure_group(&self) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let created: Result<(), _> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.keys.messages())
            .arg(&self.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Err(err) if err.code() == Some("BUSYGROUP") => Ok(()),
            other => other.map_err(StoreError::redis("XGROUP CREATE")),
        }
    }

    /// Adds `delta` to one field of the totals hash.
    pub async fn add_to_stat(&self, field: &str, delta: i64) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        redis::cmd("HINCRBY")
            .arg(self.keys.stats())
            .arg(field)
            .arg(delta)
            .query_async::<()>(&mut conn)
            .await
            .map_err(StoreError::redis("HINCRBY"))
    }

    /// Reads up to `count` never-delivered entries for `consumer`, waiting up to
    /// `block_ms` for the first one, on `conn` (the sender's read connection:
    /// the read may block). The request is on its way when this returns, so
    /// several reads can be in flight, answered in order.
    pub fn read_new(
        &self,
        conn: &ReadConnection,
        consumer: &str,
        count: usize,
        block_ms: u64,
    ) -> impl Future<Output = Result<Vec<StreamEntry>, StoreError>> + Send + 'static {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.group)
            .arg(consumer)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(self.keys.messages())
            .arg(">");
        conn.read(&cmd)
    }
}
