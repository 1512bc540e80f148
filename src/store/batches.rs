//! The producer's batch writes: each batch lands exactly once, however late a
//! try whose reply was lost is executed, and without a Lua call per message.
//!
//! A batch is one `MULTI`/`EXEC` transaction that adds its messages, counts
//! them and marks the batch (field `seq` of its producer run's hash), fenced
//! by `WATCH` on that hash and on the queue's identity. All of its keys are
//! one partition's (one cluster slot): on a queue of several partitions, the
//! producer writes each partition's part of a batch as a batch of its own
//! there, marked under the batch's number in that partition's hash. The
//! steps:
//!
//! 1. `WATCH run queue`, `HEXISTS run seq`, the checks (the queue's epoch,
//!    the stream's type, the `produced` counter), then `MULTI` and the queued
//!    commands, sent at once;
//! 2. once the check replies are back: `EXEC` if the batch is not marked
//!    and the queue is sound, else `DISCARD`.
//!
//! The checks make a batch all-or-nothing in effect, as a Function call is:
//! a transaction does not roll back a command that fails in `EXEC`, so a
//! batch is never started on a queue whose identity is gone
//! ([`StoreError::Lost`]) or whose keys are damaged
//! ([`StoreError::Damaged`]); a flush between the check and `EXEC` touches
//! the watched identity and aborts the transaction.
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
//! Why not a Function that checks and writes in one call: a `redis.call` per
//! message costs Redis more than a queued command, and produce is bound by
//! Redis's CPU. The replies (`QUEUED` and an id per message) are framed by
//! [`RespConnection`] and read by the store's cursor, never built into
//! redis-rs values: the producer would spend more time parsing them than
//! encoding the batch.
//!
//! A batch's transaction aborts (nil `EXEC`) when the watched hash changed:
//! another try of it landed, or a retry of another batch of the same run
//! marked that one meanwhile. The caller cannot tell which, so that is
//! [`StoreError::Conflict`], transient: the next try checks the mark again.

use bytes::Bytes;

use super::Producer;
use super::StoreError;
use super::frame::{Cursor, server_error};
use super::pending::PendingReply;
use super::resp::{RespConnection, encode};
use crate::message::{Message, field};

/// Names of the steps, for errors.
const CHECK: &str = "WATCH/HEXISTS (batch check)";
/// Replies the check gets: WATCH, HEXISTS, HGET epoch, TYPE stream, HGET produced.
const CHECK_REPLIES: usize = 5;
const QUEUE: &str = "MULTI (batch)";
const EXEC: &str = "EXEC (batch)";
const DISCARD: &str = "DISCARD (batch)";
const WAIT: &str = "WAIT (batch replicated)";
/// How long a batch waits for its primary's replicas to confirm it.
const REPLICATION_WAIT_MS: u64 = 2_000;

type Reply = PendingReply<Bytes>;

/// A producer batch encoded for sending: cheap to send again after a failure.
#[derive(Debug, Clone)]
pub struct PreparedBatch {
    /// `WATCH` and `HEXISTS` of the batch's mark.
    check: Bytes,
    /// What the check expects of the queue.
    queue: QueueCheck,
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
    /// The replicas of the partition's primary: on a cluster with replicas,
    /// a batch counts as written only once they confirm it (`WAIT`), so a
    /// primary that dies and fails over cannot take a written batch with it.
    replicas: u32,
}

impl BatchConnection {
    /// Sends the first part of `batch` (check and queued commands) now. The
    /// previous batch on this connection must be committed first: its `EXEC`
    /// would end this one's `WATCH`.
    pub fn start(&self, batch: &PreparedBatch) -> StartedBatch {
        StartedBatch {
            conn: self.conn.clone(),
            replicas: self.replicas,
            check: PendingReply::new(self.conn.send(CHECK, batch.check.clone(), CHECK_REPLIES)),
            queue: batch.queue.clone(),
            queued: PendingReply::new(self.conn.send(
                QUEUE,
                batch.body.clone(),
                batch.body_replies,
            )),
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
    replicas: u32,
    check: Reply,
    queued: Reply,
    queue: QueueCheck,
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
        let mut parts = Cursor::new(CHECK, &check);
        let mut next = || {
            if parts.is_at_end() {
                return Err(parts.bad("a reply is missing"));
            }
            let reply = parts.element()?;
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
        let soundness = self.queue.verdict(next()?, next()?, next()?);
        if let Err(err) = soundness {
            // Ends the transaction the queued commands opened; the caller
            // stops, so the reply does not matter.
            drop(self.conn.send(DISCARD, Bytes::from_static(DISCARD_CMD), 1));
            return Err(err);
        }
        let (command, packed) = if marked {
            (DISCARD, DISCARD_CMD)
        } else {
            (EXEC, EXEC_CMD)
        };
        let last = PendingReply::new(self.conn.send(command, Bytes::from_static(packed), 1));
        // One replica is enough: a failover promotes the replica that is
        // furthest along. Also after a DISCARD, as the earlier try that wrote
        // the batch may not have reached a replica yet; but WAIT counts only
        // this connection's own writes, and a DISCARD writes nothing, so a
        // write that changes nothing (HINCRBY by 0, replicated in order after
        // that earlier try) goes first for WAIT to count. It goes to the
        // queue's identity hash: were that hash deleted meanwhile, the one
        // field it re-creates holds no epoch, so the loss still shows; the
        // counters would come back looking sound.
        let replicated = (self.replicas > 0).then(|| {
            let mut wait = Vec::new();
            let mut replies = 1;
            if marked {
                let queue = self.queue.queue.as_bytes();
                encode(&mut wait, &[b"HINCRBY", queue, b"created_ms", b"0"]);
                replies += 1;
            }
            let timeout = REPLICATION_WAIT_MS.to_string();
            encode(&mut wait, &[b"WAIT", b"1", timeout.as_bytes()]);
            PendingReply::new(self.conn.send(WAIT, Bytes::from(wait), replies))
        });
        Ok(CommittedBatch {
            queued: self.queued,
            last,
            discarded: marked,
            replicated: replicated.map(|reply| (marked, reply)),
            topology: self.conn.topology(),
        })
    }
}

/// What a batch's check expects of the queue, to judge the check's replies.
#[derive(Debug, Clone)]
pub(super) struct QueueCheck {
    pub(super) epoch: std::sync::Arc<str>,
    pub(super) queue: String,
    pub(super) stream: String,
    pub(super) stats: String,
}

impl QueueCheck {
    /// Judges the replies of `HGET queue epoch`, `TYPE stream` and
    /// `HGET stats produced`.
    pub(super) fn verdict(
        &self,
        epoch: &[u8],
        stream_type: &[u8],
        produced: &[u8],
    ) -> Result<(), StoreError> {
        let found = optional_string(CHECK, epoch)?;
        match found {
            None => {
                return Err(StoreError::Lost(format!(
                    "the queue identity {} is gone: Redis was flushed, restarted without its \
                     data, or is another Redis",
                    self.queue
                )));
            }
            Some(found) if found != self.epoch.as_bytes() => {
                return Err(StoreError::Lost(format!(
                    "the queue was created anew (epoch {}, this process started with {}): its \
                     earlier state is gone",
                    String::from_utf8_lossy(found),
                    self.epoch
                )));
            }
            Some(_) => {}
        }
        if stream_type != b"+stream\r\n" {
            let shown = String::from_utf8_lossy(stream_type);
            return Err(StoreError::Damaged(format!(
                "{} is not a stream (TYPE gave {})",
                self.stream,
                shown.trim_start_matches('+').trim_end()
            )));
        }
        // Every queue's totals hold `produced` from their creation: one
        // missing means the counts are lost, and counting on from 0 would
        // hide that.
        let Some(value) = optional_string(CHECK, produced)? else {
            return Err(StoreError::Damaged(format!(
                "counter produced of {} is missing while the queue exists: its counts are \
                 lost; see `sms-alerts repair`",
                self.stats
            )));
        };
        if !super::reply::is_counter(value) {
            return Err(StoreError::Damaged(format!(
                "counter produced of {} is not a number: {:?}",
                self.stats,
                String::from_utf8_lossy(&value[..value.len().min(40)])
            )));
        }
        Ok(())
    }
}

/// A string reply, or `None` for nil.
pub(super) fn optional_string<'a>(
    command: &'static str,
    reply: &'a [u8],
) -> Result<Option<&'a [u8]>, StoreError> {
    Cursor::new(command, reply).string()
}

const EXEC_CMD: &[u8] = b"*1\r\n$4\r\nEXEC\r\n";
const DISCARD_CMD: &[u8] = b"*1\r\n$7\r\nDISCARD\r\n";

/// A batch whose `EXEC` (or `DISCARD`) is on the wire.
pub struct CommittedBatch {
    queued: Reply,
    last: Reply,
    discarded: bool,
    /// Whether a write that changes nothing precedes the `WAIT`, and the
    /// replies of both (see [`StartedBatch::commit`]).
    replicated: Option<(bool, Reply)>,
    /// Told when the replicas do not confirm, so the next connection looks
    /// at the cluster's map again.
    topology: Option<std::sync::Arc<super::topology::Topology>>,
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
        let mut replies = Cursor::new(QUEUE, &queued);
        while !replies.is_at_end() {
            server_error(replies.element()?).map_err(StoreError::redis(QUEUE))?;
        }
        let last = self.last.await?;
        if let Some((noop_first, reply)) = self.replicated {
            let reply = reply.await?;
            let mut replies = Cursor::new(WAIT, &reply);
            if noop_first {
                server_error(replies.element()?).map_err(StoreError::redis(WAIT))?;
            }
            let wait = replies.element()?;
            server_error(wait).map_err(StoreError::redis(WAIT))?;
            let got = Cursor::new(WAIT, wait).int()?;
            let got = u32::try_from(got).unwrap_or(0);
            let wanted = 1;
            if got < wanted {
                if let Some(topology) = &self.topology {
                    topology.lost_node();
                }
                return Err(StoreError::NotReplicated {
                    command: WAIT,
                    wanted,
                    got,
                });
            }
        }
        if self.discarded {
            server_error(&last).map_err(StoreError::redis(DISCARD))?;
            return Ok(BatchWrite::AlreadyWritten);
        }
        server_error(&last).map_err(StoreError::redis(EXEC))?;
        let mut results = Cursor::new(EXEC, &last);
        let Some(count) = results.array()? else {
            return Err(StoreError::Conflict { command: EXEC });
        };
        for _ in 0..count {
            // A command that fails inside EXEC does not undo the others: the
            // batch landed in part, which no retry can mend.
            server_error(results.element()?).map_err(|err| {
                StoreError::Damaged(format!(
                    "a producer batch was applied in part, a command in it failed: {err}"
                ))
            })?;
        }
        Ok(BatchWrite::Added)
    }
}

impl Producer {
    /// A connection for producer batches (see [`BatchConnection`]).
    pub async fn batch_connection(&self) -> Result<BatchConnection, StoreError> {
        let replicas = self.store.replicas().await?;
        // A WAIT may hold the replies that follow it for its whole timeout.
        let wait_ms = if replicas > 0 { REPLICATION_WAIT_MS } else { 0 };
        let conn = self
            .store
            .resp_connection(std::time::Duration::from_millis(wait_ms))
            .await?;
        Ok(BatchConnection { conn, replicas })
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
        let stream = self.store.keys.messages();
        let stats = self.store.keys.totals();
        let run = self.store.keys.run_batches(run_id);
        let queue = self.store.keys.queue();
        let mut number = itoa::Buffer::new();
        let seq_text = number.format(seq).as_bytes().to_vec();
        let count = messages.len().to_string();

        let mut check = Vec::with_capacity(160 + 2 * run.len());
        encode(&mut check, &[b"WATCH", run.as_bytes(), queue.as_bytes()]);
        encode(&mut check, &[b"HEXISTS", run.as_bytes(), &seq_text]);
        encode(&mut check, &[b"HGET", queue.as_bytes(), b"epoch"]);
        encode(&mut check, &[b"TYPE", stream.as_bytes()]);
        encode(&mut check, &[b"HGET", stats.as_bytes(), b"produced"]);

        let per_message: usize = messages
            .iter()
            .map(|m| m.recipient.len() + m.body.len() + m.email.as_ref().map_or(0, String::len))
            .sum::<usize>()
            + messages.len() * (100 + stream.len());
        let mut body = Vec::with_capacity(per_message + 256);
        encode(&mut body, &[b"MULTI"]);
        encode(
            &mut body,
            &[b"HSET", run.as_bytes(), &seq_text, count.as_bytes()],
        );
        for message in messages {
            let created = number.format(message.created_ms).as_bytes().to_vec();
            let mut command: [&[u8]; 11] = [
                b"XADD",
                stream.as_bytes(),
                b"*",
                field::RECIPIENT.as_bytes(),
                message.recipient.as_bytes(),
                field::BODY.as_bytes(),
                message.body.as_bytes(),
                field::CREATED_MS.as_bytes(),
                &created,
                b"",
                b"",
            ];
            let used = match &message.email {
                Some(email) => {
                    command[9] = field::EMAIL.as_bytes();
                    command[10] = email.as_bytes();
                    11
                }
                None => 9,
            };
            encode(&mut body, &command[..used]);
        }
        encode(
            &mut body,
            &[b"HINCRBY", stats.as_bytes(), b"produced", count.as_bytes()],
        );
        PreparedBatch {
            check: Bytes::from(check),
            queue: QueueCheck {
                epoch: self.store.epoch.clone(),
                queue,
                stream,
                stats,
            },
            body: Bytes::from(body),
            // MULTI, HSET, the XADDs, HINCRBY.
            body_replies: messages.len() + 3,
            seq,
            len: messages.len(),
        }
    }
}
