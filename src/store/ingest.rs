//! The HTTP API's writes (`sms_ingest`): one request's messages for one
//! partition, added and counted in one Function call, with the request's
//! idempotency record when it has one.
//!
//! A Function rather than the producer's `MULTI`/`EXEC` batches: the record
//! must hold the ids the messages got, which a transaction only learns once
//! it has run. A request is small next to a producer batch, so the Lua call
//! per message costs little; one request of the largest batch is still one
//! call per partition.

use std::future::Future;
use std::time::Duration;

use redis::Value;

use super::frame::{Cursor, server_error};
use super::reply::{array, bad, text};
use super::resp::RespConnection;
use super::{Ingester, StoreError};

/// The function's name, for errors.
const INGEST: &str = "sms_ingest";
/// The `WAIT` after a write on a primary with replicas.
const WAIT: &str = "WAIT (ingest replicated)";
/// How long a write waits for a replica to confirm it.
const REPLICATION_WAIT_MS: u64 = 2_000;
/// Tries of a call Redis refused without running it (wrong node, slot on
/// the move, library missing on a new primary).
const TRIES: u32 = 4;
/// Wait between two such tries.
const TRY_AGAIN_AFTER: Duration = Duration::from_millis(50);

/// What an idempotency key covers; each has its own key names, so a
/// message's `request_id` never meets a request's header key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdempotencyScope {
    /// A whole request (the `Idempotency-Key` header).
    Request,
    /// The messages carrying one `request_id`.
    Message,
}

/// An idempotency key and how long its record is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// The key the client sent.
    pub key: String,
    /// What it covers.
    pub scope: IdempotencyScope,
    /// A digest of what the request asked for: a repeat must match it.
    pub fingerprint: String,
    /// How long the record is kept.
    pub ttl: Duration,
}

/// What one ingest call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ingested {
    /// The messages were added; their ids, in order.
    Written(Vec<String>),
    /// The request had landed before: the ids its messages got then.
    Replayed(Vec<String>),
    /// The idempotency key was used before with another request; nothing
    /// was written.
    Mismatch,
}

impl Ingester {
    /// The handle of partition `partition` of the same queue.
    pub fn partition(&self, partition: u32) -> Ingester {
        Ingester {
            store: self.store.partition(partition),
        }
    }

    /// This handle's partition.
    pub fn partition_id(&self) -> u32 {
        self.store.partition_id()
    }

    /// How many partitions the queue had when this handle opened it.
    pub fn partition_count(&self) -> u32 {
        self.store.partition_count()
    }

    /// A handle that knows the partitions `migrate` added since this one
    /// was opened ([`super::Store::reopen_grown`]).
    pub async fn reopen_grown(&self) -> Result<Ingester, StoreError> {
        Ok(Ingester {
            store: self.store.reopen_grown().await?,
        })
    }

    /// Whether Redis answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }

    /// Adds `messages` (each its stream fields) to this partition and counts
    /// them, in one atomic call; with `record`, only if no request with the
    /// same key landed here before. On a cluster primary with replicas, the
    /// write counts only once a replica confirms it
    /// ([`StoreError::NotReplicated`] otherwise; sending the same request
    /// again with its key is then safe).
    pub async fn ingest(
        &self,
        record: Option<&IdempotencyRecord>,
        messages: &[Vec<(&'static str, String)>],
    ) -> Result<Ingested, StoreError> {
        let mut tries = 1;
        loop {
            match self.ingest_once(record, messages).await {
                Err(err) if tries < TRIES && err.needs_library() => {
                    // A Redis without the library may be one that lost the
                    // queue: nothing is loaded into it before that is ruled out.
                    self.store.diagnose().await?;
                    self.store.ensure_library().await?;
                }
                Err(err) if tries < TRIES && err.was_not_run() => {
                    tokio::time::sleep(TRY_AGAIN_AFTER).await;
                }
                result => return result,
            }
            tries += 1;
        }
    }

    async fn ingest_once(
        &self,
        record: Option<&IdempotencyRecord>,
        messages: &[Vec<(&'static str, String)>],
    ) -> Result<Ingested, StoreError> {
        let cmd = self.ingest_cmd(record, messages);
        let replicas = self.store.replicas().await?;
        let mut conn = self.store.conn().await?;
        let reply: Value = cmd
            .query_async(&mut conn)
            .await
            .map_err(StoreError::redis(INGEST))?;
        let ingested = ingested(reply)?;
        if replicas > 0 && !matches!(ingested, Ingested::Mismatch) {
            let got: i64 = redis::cmd("WAIT")
                .arg(1)
                .arg(REPLICATION_WAIT_MS)
                .query_async(&mut conn)
                .await
                .map_err(StoreError::redis(WAIT))?;
            if got < 1 {
                return Err(StoreError::NotReplicated {
                    command: WAIT,
                    wanted: 1,
                    got: got.max(0) as u32,
                });
            }
        }
        Ok(ingested)
    }

    /// Whether the queue lives on Redis Cluster, where a write also waits
    /// for a replica (and so goes over a pooled connection).
    pub fn is_cluster(&self) -> bool {
        self.store.is_cluster()
    }

    /// A connection of this partition's own for writes (see
    /// [`IngestConnection`]).
    pub async fn ingest_connection(&self) -> Result<IngestConnection, StoreError> {
        Ok(IngestConnection {
            conn: self.store.resp_connection(Duration::ZERO).await?,
        })
    }

    /// The FCALL of one ingest.
    fn ingest_cmd(
        &self,
        record: Option<&IdempotencyRecord>,
        messages: &[Vec<(&'static str, String)>],
    ) -> redis::Cmd {
        let keys = &self.store.keys;
        let mut key_names = vec![keys.queue(), keys.messages(), keys.totals()];
        if let Some(record) = record {
            key_names.push(match record.scope {
                IdempotencyScope::Request => keys.request_idempotency(&record.key),
                IdempotencyScope::Message => keys.message_idempotency(&record.key),
            });
        }
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(INGEST).arg(key_names.len()).arg(&key_names);
        cmd.arg(&*self.store.epoch);
        match record {
            Some(record) => cmd
                .arg(&record.fingerprint)
                .arg(record.ttl.as_millis().max(1) as u64),
            None => cmd.arg("").arg(0),
        };
        for fields in messages {
            cmd.arg(fields.len());
            for (name, value) in fields {
                cmd.arg(*name).arg(value);
            }
        }
        cmd
    }
}

/// A connection of one partition's own for the API's writes on a Redis
/// without replicas: the calls of every request pipelined on it, in the
/// order they are made, without a pool checkout and its health check per
/// call. Cheap to clone. After an error, open another: it may be broken.
#[derive(Clone, Debug)]
pub struct IngestConnection {
    conn: RespConnection,
}

impl IngestConnection {
    /// Sends one ingest call (as [`Ingester::ingest`], without its retries
    /// and without waiting for replicas) now; its outcome comes later.
    pub fn send(
        &self,
        ingester: &Ingester,
        record: Option<&IdempotencyRecord>,
        messages: &[Vec<(&'static str, String)>],
    ) -> impl Future<Output = Result<Ingested, StoreError>> + Send + 'static + use<> {
        let reply = self
            .conn
            .send_cmd(INGEST, &ingester.ingest_cmd(record, messages));
        async move { ingested_frame(&reply.await?) }
    }
}

/// Decodes `sms_ingest`'s reply as our connection frames it.
fn ingested_frame(frame: &[u8]) -> Result<Ingested, StoreError> {
    server_error(frame).map_err(StoreError::redis(INGEST))?;
    let mut reply = Cursor::new(INGEST, frame);
    let count = reply
        .array()?
        .ok_or_else(|| reply.bad("expected an array, got nil"))?;
    let mut items = Vec::with_capacity(count);
    for _ in 0..count {
        let item = reply
            .string()?
            .ok_or_else(|| reply.bad("expected a string, got nil"))?;
        items.push(Value::BulkString(item.to_vec()));
    }
    ingested(Value::Array(items))
}

/// Decodes `sms_ingest`'s reply.
fn ingested(reply: Value) -> Result<Ingested, StoreError> {
    let mut items = array(INGEST, reply)?.into_iter();
    let status = text(INGEST, items.next().unwrap_or(Value::Nil))?;
    let ids = || {
        items
            .map(|id| text(INGEST, id))
            .collect::<Result<Vec<_>, _>>()
    };
    match status.as_str() {
        "written" => Ok(Ingested::Written(ids()?)),
        "replayed" => Ok(Ingested::Replayed(ids()?)),
        "mismatch" => Ok(Ingested::Mismatch),
        other => Err(bad(INGEST, format!("unknown status {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn replies_decode_by_status() {
        let written = Value::Array(vec![bulk("written"), bulk("1-0"), bulk("1-1")]);
        assert_eq!(
            ingested(written).expect("written"),
            Ingested::Written(vec!["1-0".into(), "1-1".into()])
        );
        let replayed = Value::Array(vec![bulk("replayed"), bulk("2-0")]);
        assert_eq!(
            ingested(replayed).expect("replayed"),
            Ingested::Replayed(vec!["2-0".into()])
        );
        assert_eq!(
            ingested(Value::Array(vec![bulk("mismatch")])).expect("mismatch"),
            Ingested::Mismatch
        );
        assert!(ingested(Value::Array(vec![bulk("odd")])).is_err());
        assert_eq!(
            ingested_frame(b"*2\r\n$7\r\nwritten\r\n$3\r\n1-0\r\n").expect("framed"),
            Ingested::Written(vec!["1-0".into()])
        );
        let lost = ingested_frame(b"-LOST the queue identity is gone\r\n").expect_err("lost");
        assert!(lost.is_queue_state(), "{lost}");
        assert!(ingested(Value::Int(1)).is_err());
    }
}
