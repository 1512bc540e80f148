//! The read connection: the sender's XREADGROUP, and the audit's walk over
//! a stream's ids (XRANGE), on a connection of its own ([`RespConnection`]),
//! replies decoded here rather than by redis-rs.
//!
//! Why: a profile of a sender at full load put over half of its CPU in
//! redis-rs's reply parser (`combine`), almost all of it on the big
//! XREADGROUP replies: 3.3 µs per entry, measured on a 1,000-entry reply.
//! `redis-protocol`'s range decoder reads the same reply at 0.66 µs per
//! entry, without copying it. Several reads can be on the wire at once.
//! The audit needs only ids: it skips every field, so a page of hostile
//! entries (thousands of fields, 50 KB bodies) costs no more to walk than
//! any other; redis-rs allocated each of their fields.

use std::time::Duration;

use bytes::Bytes;
use redis::ConnectionInfo;
use redis_protocol::resp2::decode::decode_range;
use redis_protocol::resp2::types::RangeFrame;

use super::StoreError;
use super::reply::{bad, pairs};
use super::resp::{RespConnection, array_elements, bulk_string, replies, server_error};
use super::streams::StreamEntry;

/// The group read, named in errors.
const READ: &str = "XREADGROUP";
/// The range read, named in errors.
const RANGE: &str = "XRANGE";

/// A connection for stream reads. Cheap to clone; once the last clone is
/// dropped, the socket closes as soon as the reads already sent are answered.
#[derive(Clone, Debug)]
pub struct ReadConnection {
    conn: RespConnection,
}

impl ReadConnection {
    /// Opens a connection as `info` describes (TCP or a Unix socket), logs in
    /// and selects the database. Replies may take up to `reply_timeout`.
    pub(super) async fn open(
        info: &ConnectionInfo,
        connect_timeout: Duration,
        reply_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let conn = RespConnection::open(info, connect_timeout, reply_timeout).await?;
        Ok(Self { conn })
    }

    /// Sends an XREADGROUP now and returns a future of its entries.
    pub(super) fn read(
        &self,
        cmd: &redis::Cmd,
    ) -> impl Future<Output = Result<Vec<StreamEntry>, StoreError>> + Send + 'static + use<> {
        let reply = self.conn.send_cmd(READ, cmd);
        async move { stream_entries(&reply.await?) }
    }

    /// Sends an XRANGE now and returns a future of its entries' ids.
    pub(super) fn range_ids(
        &self,
        cmd: &redis::Cmd,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send + 'static + use<> {
        let reply = self.conn.send_cmd(RANGE, cmd);
        async move { entry_ids(&reply.await?) }
    }
}

/// Decodes an XREADGROUP reply: nil when the block timed out, else
/// `[[stream, [[id, [field, value, ...]], ...]], ...]`. An entry deleted from
/// the stream while pending comes with nil fields and decodes with none.
fn stream_entries(frame: &Bytes) -> Result<Vec<StreamEntry>, StoreError> {
    server_error(frame).map_err(StoreError::redis(READ))?;
    let (reply, _) = decode_range(frame)
        .map_err(|err| bad(READ, err.to_string()))?
        .ok_or_else(|| bad(READ, "an incomplete reply"))?;
    let mut entries = Vec::new();
    let streams = match reply {
        RangeFrame::Null => return Ok(entries),
        other => array(other)?,
    };
    for stream in streams {
        let mut parts = array(stream)?.into_iter();
        let items = match parts.nth(1) {
            None | Some(RangeFrame::Null) => continue,
            Some(items) => array(items)?,
        };
        entries.reserve(items.len());
        for item in items {
            let mut parts = array(item)?.into_iter();
            let id = String::from_utf8(string(frame, parts.next())?.to_vec())
                .map_err(|_| bad(READ, "an entry id that is not UTF-8"))?;
            let fields = match parts.next() {
                None | Some(RangeFrame::Null) => Vec::new(),
                Some(fields) => pairs(READ, array(fields)?, |item| {
                    Ok(string(frame, Some(item))?.to_vec())
                })?,
            };
            entries.push(StreamEntry { id, fields });
        }
    }
    Ok(entries)
}

/// Decodes the ids of an XRANGE reply, `[[id, [field, value, ...]], ...]`:
/// the fields are only framed (skipped), never decoded, so their number and
/// size cost no memory.
fn entry_ids(frame: &Bytes) -> Result<Vec<String>, StoreError> {
    server_error(frame).map_err(StoreError::redis(RANGE))?;
    let items = array_elements(RANGE, frame)?.ok_or_else(|| bad(RANGE, "a nil array"))?;
    replies(RANGE, items)
        .map(|item| {
            let parts = array_elements(RANGE, item?)?.ok_or_else(|| bad(RANGE, "a nil entry"))?;
            let id = replies(RANGE, parts)
                .next()
                .ok_or_else(|| bad(RANGE, "an entry without an id"))??;
            String::from_utf8(bulk_string(RANGE, id)?.to_vec())
                .map_err(|_| bad(RANGE, "an entry id that is not UTF-8"))
        })
        .collect()
}

fn array(frame: RangeFrame) -> Result<Vec<RangeFrame>, StoreError> {
    match frame {
        RangeFrame::Array(items) => Ok(items),
        other => Err(bad(READ, format!("expected an array, got {other:?}"))),
    }
}

fn string(buffer: &[u8], frame: Option<RangeFrame>) -> Result<&[u8], StoreError> {
    match frame {
        Some(RangeFrame::BulkString((start, end)) | RangeFrame::SimpleString((start, end))) => {
            Ok(&buffer[start..end])
        }
        other => Err(bad(READ, format!("expected a string, got {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply of two entries, the second deleted (nil fields).
    const REPLY: &[u8] = b"*1\r\n*2\r\n$1\r\ns\r\n*2\r\n\
        *2\r\n$3\r\n1-0\r\n*4\r\n$9\r\nrecipient\r\n$3\r\n+44\r\n$4\r\nbody\r\n$0\r\n\r\n\
        *2\r\n$3\r\n2-0\r\n*-1\r\n";

    #[test]
    fn entries_decode_with_their_fields_and_deleted_ones_with_none() {
        let entries = stream_entries(&Bytes::from_static(REPLY)).expect("decodes");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].id, "1-0");
        assert_eq!(
            entries[0].fields,
            vec![
                (b"recipient".to_vec(), b"+44".to_vec()),
                (b"body".to_vec(), Vec::new())
            ]
        );
        assert_eq!(entries[1].id, "2-0");
        assert!(entries[1].fields.is_empty());
        assert!(
            stream_entries(&Bytes::from_static(b"*-1\r\n"))
                .expect("nil")
                .is_empty()
        );
    }

    #[test]
    fn range_ids_skip_the_fields_however_many() {
        let mut reply = b"*2\r\n*2\r\n$3\r\n1-0\r\n*4000\r\n".to_vec();
        for _ in 0..4_000 {
            reply.extend_from_slice(b"$1\r\nv\r\n");
        }
        reply.extend_from_slice(b"*2\r\n$3\r\n2-5\r\n*2\r\n$4\r\nbody\r\n$0\r\n\r\n");
        let ids = entry_ids(&Bytes::from(reply)).expect("decodes");
        assert_eq!(ids, ["1-0", "2-5"]);
        assert!(
            entry_ids(&Bytes::from_static(b"*0\r\n"))
                .expect("empty")
                .is_empty()
        );
        assert!(entry_ids(&Bytes::from_static(b"$3\r\n1-0\r\n")).is_err());
    }

    #[test]
    fn error_replies_keep_their_redis_code() {
        let err = stream_entries(&Bytes::from_static(b"-NOGROUP No such key\r\n"))
            .expect_err("an error reply");
        assert!(err.is_no_group(), "{err}");
    }
}
