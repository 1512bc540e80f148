//! Stream operations: the sender's group reads and stream entries.

use std::future::Future;

use redis::Value;

use super::reply::{array, field_pairs, text};
use super::{ReadConnection, Store, StoreError};
use crate::message::RawFields;

/// One stream entry, its fields kept as raw bytes until decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    /// The entry id, which is also the message id.
    pub id: String,
    /// Field/value pairs as stored.
    pub fields: RawFields,
}

impl Store {
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

/// Decodes `[id, [field, value, ...]]`; an entry deleted from the stream has
/// a nil field list and decodes with no fields (it then fails message decoding
/// and is dead-lettered rather than lost).
pub(super) fn entry(command: &'static str, value: Value) -> Result<StreamEntry, StoreError> {
    let mut parts = array(command, value)?.into_iter();
    let id = text(command, parts.next().unwrap_or(Value::Nil))?;
    let fields = match parts.next() {
        None | Some(Value::Nil) => Vec::new(),
        Some(fields) => field_pairs(command, fields)?,
    };
    Ok(StreamEntry { id, fields })
}
