//! The API's writes without an idempotency key, on a Redis without
//! replicas: one `MULTI`/`EXEC` transaction each, checked as the producer's
//! batches are (`batches.rs`): `WATCH` on the queue's identity, the checks
//! (epoch, stream, counter), then `EXEC` only if they pass, else `DISCARD`.
//!
//! Why not `sms_ingest` for these too: its `redis.call` per `XADD` costs
//! Redis about twice a queued `XADD`, and a write without a key needs no
//! record, so nothing in it must be learned inside the call. The ids come
//! back in `EXEC`'s reply. A transaction needs its connection to itself
//! between `WATCH` and `EXEC`, so a connection serves one write at a time.

use bytes::Bytes;

use super::batches::{QueueCheck, optional_string};
use super::frame::{Cursor, server_error};
use super::pending::PendingReply;
use super::resp::{RespConnection, encode};
use super::{Ingester, StoreError};

const CHECK: &str = "WATCH (ingest check)";
/// Replies of the check: WATCH, HGET epoch, TYPE stream, HGET produced.
const CHECK_REPLIES: usize = 4;
const QUEUE: &str = "MULTI (ingest)";
const EXEC: &str = "EXEC (ingest)";
const DISCARD: &str = "DISCARD (ingest)";
const EXEC_CMD: &[u8] = b"*1\r\n$4\r\nEXEC\r\n";
const DISCARD_CMD: &[u8] = b"*1\r\n$7\r\nDISCARD\r\n";

/// A connection of one partition's own for key-less writes as
/// transactions, one at a time. After an error, drop it: a transaction may
/// be open on it.
#[derive(Debug)]
pub struct TransactionConnection {
    conn: RespConnection,
}

impl Ingester {
    /// A connection for key-less writes to this partition (see
    /// [`TransactionConnection`]).
    pub async fn transaction_connection(&self) -> Result<TransactionConnection, StoreError> {
        Ok(TransactionConnection {
            conn: self
                .store
                .resp_connection(std::time::Duration::ZERO)
                .await?,
        })
    }
}

impl TransactionConnection {
    /// Adds `messages` (each its stream fields) to `ingester`'s partition
    /// and counts them, in one transaction; their ids, in order. Nothing is
    /// written when the queue's identity is gone or its keys are damaged;
    /// [`StoreError::Conflict`] (nothing written) when the queue's identity
    /// hash changed meanwhile.
    pub async fn write(
        &mut self,
        ingester: &Ingester,
        messages: &[Vec<(&'static str, String)>],
    ) -> Result<Vec<String>, StoreError> {
        let store = &ingester.store;
        let (queue, stream, stats) = (
            store.keys.queue(),
            store.keys.messages(),
            store.keys.totals(),
        );
        let mut check = Vec::with_capacity(128);
        encode(&mut check, &[b"WATCH", queue.as_bytes()]);
        encode(&mut check, &[b"HGET", queue.as_bytes(), b"epoch"]);
        encode(&mut check, &[b"TYPE", stream.as_bytes()]);
        encode(&mut check, &[b"HGET", stats.as_bytes(), b"produced"]);
        let mut body = Vec::with_capacity(messages.len() * 160 + 64);
        encode(&mut body, &[b"MULTI"]);
        let mut args: Vec<&[u8]> = Vec::with_capacity(16);
        for fields in messages {
            args.clear();
            args.extend([&b"XADD"[..], stream.as_bytes(), b"*"]);
            for (name, value) in fields {
                args.extend([name.as_bytes(), value.as_bytes()]);
            }
            encode(&mut body, &args);
        }
        let count = messages.len().to_string();
        encode(
            &mut body,
            &[b"HINCRBY", stats.as_bytes(), b"produced", count.as_bytes()],
        );
        let verdict = QueueCheck {
            epoch: store.epoch.clone(),
            queue,
            stream,
            stats,
        };
        // The check and the queued commands go out at once; EXEC only once
        // the check is seen, so a failed check writes nothing.
        let checked = PendingReply::new(self.conn.send(CHECK, Bytes::from(check), CHECK_REPLIES));
        let queued =
            PendingReply::new(self.conn.send(QUEUE, Bytes::from(body), messages.len() + 2));
        let check = checked.await?;
        let mut parts = Cursor::new(CHECK, &check);
        let mut next = || {
            let reply = parts.element()?;
            server_error(reply).map_err(StoreError::redis(CHECK))?;
            Ok::<_, StoreError>(reply)
        };
        next()?;
        if let Err(err) = verdict.verdict(next()?, next()?, next()?) {
            drop(self.conn.send(DISCARD, Bytes::from_static(DISCARD_CMD), 1));
            return Err(err);
        }
        let exec = self.conn.send(EXEC, Bytes::from_static(EXEC_CMD), 1);
        let queued = queued.await?;
        let mut replies = Cursor::new(QUEUE, &queued);
        while !replies.is_at_end() {
            server_error(replies.element()?).map_err(StoreError::redis(QUEUE))?;
        }
        ids(messages.len(), &exec.await?)
    }
}

/// The ids in `EXEC`'s reply: one per `XADD`, then `HINCRBY`'s count.
fn ids(count: usize, reply: &[u8]) -> Result<Vec<String>, StoreError> {
    server_error(reply).map_err(StoreError::redis(EXEC))?;
    let mut results = Cursor::new(EXEC, reply);
    let Some(len) = results.array()? else {
        return Err(StoreError::Conflict { command: EXEC });
    };
    if len != count + 1 {
        return Err(results.bad(format!("expected {} replies, got {len}", count + 1)));
    }
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        let element = results.element()?;
        // A command that fails inside EXEC does not undo the others.
        server_error(element).map_err(|err| {
            StoreError::Damaged(format!(
                "an API write was applied in part, a command in it failed: {err}"
            ))
        })?;
        let id = optional_string(EXEC, element)?.ok_or_else(|| results.bad("XADD gave nil"))?;
        ids.push(String::from_utf8_lossy(id).into_owned());
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_replies_give_the_ids_in_order() {
        let reply = b"*3\r\n$3\r\n1-0\r\n$3\r\n1-1\r\n:2\r\n";
        assert_eq!(ids(2, reply).expect("ids"), ["1-0", "1-1"]);
        assert!(matches!(
            ids(2, b"*-1\r\n"),
            Err(StoreError::Conflict { .. })
        ));
        assert!(ids(3, reply).is_err(), "a count that does not match");
        let failed = ids(1, b"*2\r\n-ERR oops\r\n:1\r\n").expect_err("part applied");
        assert!(failed.is_queue_state(), "{failed}");
    }
}
