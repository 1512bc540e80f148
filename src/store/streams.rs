//! Stream operations: the producer's pipelined writes, the sender's group reads,
//! and creating the consumer group.

use std::future::Future;
use std::sync::Arc;

use redis::Value;
use redis::aio::MultiplexedConnection;

use super::reply::{array, field_pairs, text};
use super::{ReadConnection, Store, StoreError};
use crate::message::{Message, RawFields, field};

/// How long a producer run's record of written batches is kept, in seconds.
const PRODUCER_RUN_TTL_S: i64 = 24 * 3600;

/// A producer batch encoded for sending: cheap to send again after a failure.
#[derive(Debug, Clone)]
pub struct PreparedBatch {
    cmd: Arc<redis::Cmd>,
    seq: u64,
    len: usize,
}

impl PreparedBatch {
    /// Its number within the run.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// How many messages it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no message.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// What sending a producer batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchWrite {
    /// The batch was added now.
    Added,
    /// An earlier try of the same batch had already added it; nothing changed.
    AlreadyWritten,
}

impl BatchWrite {
    /// Reads `sms_produce`'s reply: the messages added, or -1.
    fn from_reply(reply: redis::RedisResult<i64>) -> Result<Self, StoreError> {
        let added = reply.map_err(StoreError::redis("FCALL sms_produce"))?;
        Ok(if added < 0 {
            Self::AlreadyWritten
        } else {
            Self::Added
        })
    }
}

/// One stream entry, its fields kept as raw bytes until decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    /// The entry id, which is also the message id.
    pub id: String,
    /// Field/value pairs as stored.
    pub fields: RawFields,
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

    /// Adds `messages` to the stream and the produced counter in one atomic
    /// call (`sms_produce`) that first marks batch `seq` of producer run
    /// `run_id` as written, and does nothing if it already was: so a batch can
    /// be sent again after any failure, however late the first try lands.
    /// Runs on a pooled connection.
    pub async fn write_batch(
        &self,
        run_id: &str,
        seq: u64,
        messages: &[Message],
    ) -> Result<BatchWrite, StoreError> {
        self.rewrite_batch(&self.prepare_batch(run_id, seq, messages))
            .await
    }

    /// Encodes the write of [`Store::write_batch`] once, so it can be sent on
    /// an ordered connection and, after a failure, sent again.
    pub fn prepare_batch(&self, run_id: &str, seq: u64, messages: &[Message]) -> PreparedBatch {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg("sms_produce")
            .arg(3)
            .arg(self.keys.messages())
            .arg(self.keys.stats())
            .arg(self.keys.producer_run(run_id))
            .arg(seq)
            .arg(PRODUCER_RUN_TTL_S)
            .arg(field::RECIPIENT)
            .arg(field::BODY)
            .arg(field::CREATED_MS);
        for message in messages {
            cmd.arg(&message.recipient)
                .arg(&message.body)
                .arg(message.created_ms);
        }
        PreparedBatch {
            cmd: Arc::new(cmd),
            seq,
            len: messages.len(),
        }
    }

    /// Sends `batch` on `conn` and waits for its reply. The request is queued
    /// on the connection when the returned future is first polled, and one
    /// connection sends its requests in the order they were queued: so batches
    /// first polled in order reach Redis in order, however many are in flight.
    pub fn send_batch(
        &self,
        conn: &MultiplexedConnection,
        batch: &PreparedBatch,
    ) -> impl Future<Output = Result<BatchWrite, StoreError>> + Send + 'static {
        let mut conn = conn.clone();
        let cmd = Arc::clone(&batch.cmd);
        async move { BatchWrite::from_reply(cmd.query_async(&mut conn).await) }
    }

    /// Sends `batch` again on a pooled connection. Safe after any failure:
    /// `sms_produce` adds a batch only once.
    pub async fn rewrite_batch(&self, batch: &PreparedBatch) -> Result<BatchWrite, StoreError> {
        let mut conn = self.conn().await?;
        BatchWrite::from_reply(batch.cmd.query_async(&mut conn).await)
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
