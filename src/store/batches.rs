//! The producer's batch writes: each batch lands exactly once, however late a
//! try whose reply was lost is executed, and without a Lua call per message.
//!
//! A batch is one `MULTI`/`EXEC` transaction that adds its messages, counts
//! them and marks the batch (field `seq` of its producer run's hash), fenced
//! by `WATCH` on that hash:
//!
//! 1. `WATCH run`, `HEXISTS run seq`, then `MULTI` and the queued commands,
//!    sent at once;
//! 2. once the `WATCH` and `HEXISTS` replies are back: `EXEC` if the batch is
//!    not marked, else `DISCARD`.
//!
//! Why this is exactly-once: `EXEC` is sent only after the client has seen
//! its `WATCH` executed, so a try that is sent again after a failure starts
//! after the first try's `WATCH`. If the first try's `EXEC` runs before the
//! retry's `HEXISTS`, the retry finds the mark and discards; if it runs after,
//! the retry (which marks the batch) has changed the watched hash, or is
//! itself aborted by the first try's mark. Either way one of them lands. A
//! try whose `EXEC` was never sent never lands: Redis drops a transaction
//! when its connection closes. Without waiting for the `WATCH` reply, a first
//! try held up in Redis's socket (a stalled disk) could run entirely after its
//! retry, watch too late and land twice.
//!
//! This replaced a Lua Function (`sms_produce`, which checked and marked in
//! one call): a `redis.call` per message cost Redis about 2 µs more per
//! message than a queued command, and produce is bound by Redis's CPU. The
//! replies (`QUEUED` and an id per message) are framed by
//! [`RespConnection`], not parsed by redis-rs, which cost the producer 2.7 µs
//! per message.
//!
//! A batch's transaction aborts (nil `EXEC`) when the watched hash changed:
//! another try of it landed, or a retry of another batch of the same run
//! marked that one meanwhile. The caller cannot tell which, so that is
//! [`StoreError::Conflict`], transient: the next try checks the mark again.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use super::frame::{array_elements, replies, server_error};
use super::resp::{RespConnection, encode};
use super::{Store, StoreError};
use crate::message::{Message, field};

/// How long a producer run's record of written batches is kept, in seconds.
const PRODUCER_RUN_TTL_S: u64 = 24 * 3600;

/// Names of the steps, for errors.
const CHECK: &str = "WATCH/HEXISTS (batch check)";
const QUEUE: &str = "MULTI (batch)";
const EXEC: &str = "EXEC (batch)";
const DISCARD: &str = "DISCARD (batch)";

type Reply = Pin<Box<dyn Future<Output = Result<Bytes, StoreError>> + Send>>;

/// A producer batch encoded for sending: cheap to send again after a failure.
#[derive(Debug, Clone)]
pub struct PreparedBatch {
    /// `WATCH` and `HEXISTS` of the batch's mark.
    check: Bytes,
    /// `MULTI` and the commands it queues.
    body: Bytes,
    /// Replies `body` gets: `MULTI`'s and one per queued command.
    body_replies: usize,
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

/// A connection for producer batches. Batches started on it land in the
/// order they were committed. After any error the connection is in an
/// unknown state (a transaction may be open): drop it and open another.
#[derive(Clone, Debug)]
pub struct BatchConnection {
    conn: RespConnection,
}

impl BatchConnection {
    /// Sends the first part of `batch` (check and queued commands) now. The
    /// previous batch on this connection must be committed first: its `EXEC`
    /// would end this one's `WATCH`.
    pub fn start(&self, batch: &PreparedBatch) -> StartedBatch {
        StartedBatch {
            conn: self.conn.clone(),
            check: Box::pin(self.conn.send(CHECK, batch.check.clone(), 2)),
            queued: Box::pin(
                self.conn
                    .send(QUEUE, batch.body.clone(), batch.body_replies),
            ),
        }
    }

    /// Writes `batch` and waits for the outcome.
    pub async fn write(&self, batch: &PreparedBatch) -> Result<BatchWrite, StoreError> {
        self.start(batch).commit().await?.outcome().await
    }
}

/// A batch whose check and queued commands are on the wire.
pub struct StartedBatch {
    conn: RespConnection,
    check: Reply,
    queued: Reply,
}

impl std::fmt::Debug for StartedBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartedBatch").finish_non_exhaustive()
    }
}

impl StartedBatch {
    /// Waits for the check's replies, then sends `EXEC` (or `DISCARD` if the
    /// batch is already marked). The next batch may be started once this
    /// returns.
    pub async fn commit(self) -> Result<CommittedBatch, StoreError> {
        let check = self.check.await?;
        let mut parts = replies(CHECK, &check);
        let mut next = || {
            let reply = parts
                .next()
                .unwrap_or_else(|| Err(super::reply::bad(CHECK, "a reply is missing")))?;
            server_error(reply).map_err(StoreError::redis(CHECK))?;
            Ok::<_, StoreError>(reply)
        };
        next()?;
        let marked = match next()? {
            b":0\r\n" => false,
            b":1\r\n" => true,
            other => {
                return Err(super::reply::bad(
                    CHECK,
                    format!("HEXISTS gave {}", String::from_utf8_lossy(other)),
                ));
            }
        };
        Ok(if marked {
            CommittedBatch {
                queued: self.queued,
                last: Box::pin(self.conn.send(DISCARD, Bytes::from_static(DISCARD_CMD), 1)),
                discarded: true,
            }
        } else {
            CommittedBatch {
                queued: self.queued,
                last: Box::pin(self.conn.send(EXEC, Bytes::from_static(EXEC_CMD), 1)),
                discarded: false,
            }
        })
    }
}

const EXEC_CMD: &[u8] = b"*1\r\n$4\r\nEXEC\r\n";
const DISCARD_CMD: &[u8] = b"*1\r\n$7\r\nDISCARD\r\n";

/// A batch whose `EXEC` (or `DISCARD`) is on the wire.
pub struct CommittedBatch {
    queued: Reply,
    last: Reply,
    discarded: bool,
}

impl std::fmt::Debug for CommittedBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommittedBatch")
            .field("discarded", &self.discarded)
            .finish_non_exhaustive()
    }
}

impl CommittedBatch {
    /// Waits for the outcome. An error from a queued command (which makes
    /// Redis refuse the whole transaction) is reported as itself.
    pub async fn outcome(self) -> Result<BatchWrite, StoreError> {
        let queued = self.queued.await?;
        for reply in replies(QUEUE, &queued) {
            server_error(reply?).map_err(StoreError::redis(QUEUE))?;
        }
        let last = self.last.await?;
        if self.discarded {
            server_error(&last).map_err(StoreError::redis(DISCARD))?;
            return Ok(BatchWrite::AlreadyWritten);
        }
        server_error(&last).map_err(StoreError::redis(EXEC))?;
        let Some(results) = array_elements(EXEC, &last)? else {
            return Err(StoreError::Conflict { command: EXEC });
        };
        for result in replies(EXEC, results) {
            server_error(result?).map_err(StoreError::redis(EXEC))?;
        }
        Ok(BatchWrite::Added)
    }
}

impl Store {
    /// A connection for producer batches (see [`BatchConnection`]).
    pub async fn batch_connection(&self) -> Result<BatchConnection, StoreError> {
        let conn = RespConnection::open(
            self.client.get_connection_info(),
            super::CONNECT_TIMEOUT,
            super::RESPONSE_TIMEOUT,
        )
        .await?;
        Ok(BatchConnection { conn })
    }

    /// Writes `batch` on a connection of its own and closes it. Safe after any
    /// failure: a batch lands once however many times it is sent.
    pub async fn write_batch(&self, batch: &PreparedBatch) -> Result<BatchWrite, StoreError> {
        self.batch_connection().await?.write(batch).await
    }

    /// Encodes batch `seq` of producer run `run_id`, holding `messages`, once,
    /// so that it can be sent on a [`BatchConnection`] and sent again after a
    /// failure.
    pub fn prepare_batch(&self, run_id: &str, seq: u64, messages: &[Message]) -> PreparedBatch {
        let stream = self.keys.messages();
        let stats = self.keys.stats();
        let run = self.keys.producer_run(run_id);
        let mut number = itoa::Buffer::new();
        let seq_text = number.format(seq).as_bytes().to_vec();
        let count = messages.len().to_string();

        let mut check = Vec::with_capacity(64 + 2 * run.len());
        encode(&mut check, &[b"WATCH", run.as_bytes()]);
        encode(&mut check, &[b"HEXISTS", run.as_bytes(), &seq_text]);

        let per_message: usize = messages
            .iter()
            .map(|m| m.recipient.len() + m.body.len())
            .sum::<usize>()
            + messages.len() * (100 + stream.len());
        let mut body = Vec::with_capacity(per_message + 256);
        encode(&mut body, &[b"MULTI"]);
        encode(
            &mut body,
            &[b"HSET", run.as_bytes(), &seq_text, count.as_bytes()],
        );
        encode(
            &mut body,
            &[
                b"EXPIRE",
                run.as_bytes(),
                number.format(PRODUCER_RUN_TTL_S).as_bytes(),
            ],
        );
        for message in messages {
            encode(
                &mut body,
                &[
                    b"XADD",
                    stream.as_bytes(),
                    b"*",
                    field::RECIPIENT.as_bytes(),
                    message.recipient.as_bytes(),
                    field::BODY.as_bytes(),
                    message.body.as_bytes(),
                    field::CREATED_MS.as_bytes(),
                    number.format(message.created_ms).as_bytes(),
                ],
            );
        }
        encode(
            &mut body,
            &[b"HINCRBY", stats.as_bytes(), b"produced", count.as_bytes()],
        );
        PreparedBatch {
            check: Bytes::from(check),
            body: Bytes::from(body),
            // MULTI, HSET, EXPIRE, the XADDs, HINCRBY.
            body_replies: messages.len() + 4,
            seq,
            len: messages.len(),
        }
    }
}
