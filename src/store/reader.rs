//! The read connection: the sender's XREADGROUP, and the audit's walks over
//! a stream's ids and over the dead stream's reasons (XRANGE), on a
//! connection of its own ([`RespConnection`]), replies decoded here rather
//! than by redis-rs.
//!
//! Why: a profile of a sender at full load put over half of its CPU in
//! redis-rs's reply parser (`combine`), almost all of it on the big
//! XREADGROUP replies: 3.3 µs per entry, measured on a 1,000-entry reply.
//! `redis-protocol`'s range decoder reads the same reply at 0.66 µs per
//! entry, without copying it. Several reads can be on the wire at once.
//! The audit needs only ids (and, in the dead stream, one field): it skips
//! every other field, so a page of hostile entries (thousands of fields,
//! 50 KB bodies) costs no more to decode than any other; redis-rs allocated
//! each of their fields.
//!
//! A value too long to hold arrives as a marker (see [`super::frame`]): the
//! sender's entry then comes with no fields and the field named in
//! [`StreamEntry::oversized`], to be dead-lettered as malformed; the audit's
//! walks skip it.

use std::time::Duration;

use bytes::Bytes;
use redis_protocol::resp2::decode::decode_range;
use redis_protocol::resp2::types::RangeFrame;

use super::StoreError;
use super::frame::{array_elements, bulk_string, clipped_length, replies, server_error};
use super::reply::{bad, pairs};
use super::resp::RespConnection;
use super::streams::StreamEntry;
use super::transport::Endpoint;
use crate::message::{Oversized, RawFields};

/// The group read, named in errors.
const READ: &str = "XREADGROUP";
/// The range read, named in errors.
const RANGE: &str = "XRANGE";

/// An entry's id and the value of one of its fields, if it has one that
/// could be read.
pub(super) type IdAndValue = (String, Option<Vec<u8>>);

/// A connection for stream reads. Cheap to clone; once the last clone is
/// dropped, the socket closes as soon as the reads already sent are answered.
#[derive(Clone, Debug)]
pub struct ReadConnection {
    conn: RespConnection,
}

impl ReadConnection {
    /// Opens a connection to `endpoint` (TCP, TLS or a Unix socket), logs in
    /// and selects the database. Replies may take up to `reply_timeout`.
    pub(super) async fn open(
        endpoint: &Endpoint,
        connect_timeout: Duration,
        reply_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let conn = RespConnection::open(endpoint, connect_timeout, reply_timeout).await?;
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

    /// Sends an XRANGE or XREVRANGE now and returns a future of its entries
    /// with their fields (values over the clipping limit left out).
    pub(super) fn range_full(
        &self,
        cmd: &redis::Cmd,
    ) -> impl Future<Output = Result<Vec<StreamEntry>, StoreError>> + Send + 'static + use<> {
        let reply = self.conn.send_cmd(RANGE, cmd);
        async move { range_full_entries(&reply.await?) }
    }

    /// Sends an XRANGE now and returns a future of its entries' ids.
    pub(super) fn range_ids(
        &self,
        cmd: &redis::Cmd,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send + 'static + use<> {
        let reply = self.conn.send_cmd(RANGE, cmd);
        async move { entry_ids(&reply.await?) }
    }

    /// Sends an XRANGE now and returns a future of its entries' ids, each
    /// with the value of its field `name` (see [`entry_values`]).
    pub(super) fn range_values(
        &self,
        cmd: &redis::Cmd,
        name: &'static str,
    ) -> impl Future<Output = Result<Vec<IdAndValue>, StoreError>> + Send + 'static + use<> {
        let reply = self.conn.send_cmd(RANGE, cmd);
        async move { entry_values(&reply.await?, name.as_bytes()) }
    }
}

/// Decodes an XREADGROUP reply: nil when the block timed out, else
/// `[[stream, [[id, [field, value, ...]], ...]], ...]`. An entry deleted from
/// the stream while pending comes with nil fields and decodes with none; one
/// with a field too long to read decodes with none and that field named.
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
        decode_items(frame, items, &mut entries)?;
    }
    Ok(entries)
}

/// Decodes an XRANGE or XREVRANGE reply, `[[id, [field, value, ...]], ...]`,
/// with every field, as [`stream_entries`] does: a value too long to read is
/// never held, and its entry comes with no fields and that field named.
fn range_full_entries(frame: &Bytes) -> Result<Vec<StreamEntry>, StoreError> {
    server_error(frame).map_err(StoreError::redis(RANGE))?;
    let (reply, _) = decode_range(frame)
        .map_err(|err| bad(RANGE, err.to_string()))?
        .ok_or_else(|| bad(RANGE, "an incomplete reply"))?;
    let items = array(reply)?;
    let mut entries = Vec::with_capacity(items.len());
    decode_items(frame, items, &mut entries)?;
    Ok(entries)
}

/// Decodes `[id, [field, value, ...]]` items into `entries`.
fn decode_items(
    frame: &Bytes,
    items: Vec<RangeFrame>,
    entries: &mut Vec<StreamEntry>,
) -> Result<(), StoreError> {
    for item in items {
        let mut parts = array(item)?.into_iter();
        let id = String::from_utf8(string(frame, parts.next().as_ref())?.to_vec())
            .map_err(|_| bad(READ, "an entry id that is not UTF-8"))?;
        let (fields, oversized) = match parts.next() {
            None | Some(RangeFrame::Null) => (Vec::new(), None),
            Some(fields) => entry_fields(frame, array(fields)?)?,
        };
        entries.push(StreamEntry {
            id,
            fields,
            oversized,
        });
    }
    Ok(())
}

/// Decodes the ids of an XRANGE reply, `[[id, [field, value, ...]], ...]`:
/// the fields are only framed (skipped), never decoded, so their number and
/// size cost no memory.
fn entry_ids(frame: &Bytes) -> Result<Vec<String>, StoreError> {
    range_entries(frame)?
        .map(|item| Ok(range_entry(item?)?.0))
        .collect()
}

/// Decodes an XRANGE reply into each entry's id and the value of its field
/// `name`: the last one if it comes more than once (a dead entry keeps the
/// fields of the entry it copies, then adds its own), `None` when absent or
/// too long to read. Other fields are only framed, never copied.
fn entry_values(frame: &Bytes, name: &[u8]) -> Result<Vec<IdAndValue>, StoreError> {
    range_entries(frame)?
        .map(|item| {
            let (id, mut rest) = range_entry(item?)?;
            let value = match rest.next().transpose()? {
                Some(fields) => field_value(fields, name)?,
                None => None,
            };
            Ok((id, value))
        })
        .collect()
}

/// The entries of an XRANGE reply, one slice each.
fn range_entries(
    frame: &Bytes,
) -> Result<impl Iterator<Item = Result<&[u8], StoreError>>, StoreError> {
    server_error(frame).map_err(StoreError::redis(RANGE))?;
    let items = array_elements(RANGE, frame)?.ok_or_else(|| bad(RANGE, "a nil array"))?;
    Ok(replies(RANGE, items))
}

/// An XRANGE entry, `[id, [field, value, ...]]`: its id, then what follows
/// it (the field list), not yet framed.
fn range_entry(
    item: &[u8],
) -> Result<(String, impl Iterator<Item = Result<&[u8], StoreError>>), StoreError> {
    let parts = array_elements(RANGE, item)?.ok_or_else(|| bad(RANGE, "a nil entry"))?;
    let mut parts = replies(RANGE, parts);
    let id = parts
        .next()
        .ok_or_else(|| bad(RANGE, "an entry without an id"))??;
    let id = String::from_utf8(bulk_string(RANGE, id)?.to_vec())
        .map_err(|_| bad(RANGE, "an entry id that is not UTF-8"))?;
    Ok((id, parts))
}

/// The value of the last field `name` in a field list, `None` when absent or
/// too long to read (a marker is not a string).
fn field_value(fields: &[u8], name: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
    let Some(items) = array_elements(RANGE, fields)? else {
        return Ok(None);
    };
    let mut items = replies(RANGE, items);
    let mut found = None;
    while let Some(field) = items.next() {
        let value = items
            .next()
            .ok_or_else(|| bad(RANGE, "odd number of field/value items"))??;
        if bulk_string(RANGE, field?).is_ok_and(|field| field == name) {
            found = bulk_string(RANGE, value).ok().map(<[u8]>::to_vec);
        }
    }
    Ok(found)
}

/// An entry's fields as pairs of bytes; or none, and the first field too
/// long to read, if a marker stands in for a name or a value.
fn entry_fields(
    buffer: &[u8],
    items: Vec<RangeFrame>,
) -> Result<(RawFields, Option<Oversized>), StoreError> {
    for pair in items.chunks(2) {
        if let Some(oversized) = oversized_field(buffer, pair)? {
            return Ok((Vec::new(), Some(oversized)));
        }
    }
    let fields = pairs(
        READ,
        items,
        |item| Ok(string(buffer, Some(&item))?.to_vec()),
    )?;
    Ok((fields, None))
}

/// The field a `[name, value]` pair stands for, if either was too long to
/// read; `None` for a pair read whole (or a lone name, an error later).
fn oversized_field(buffer: &[u8], pair: &[RangeFrame]) -> Result<Option<Oversized>, StoreError> {
    let [name, value] = pair else {
        return Ok(None);
    };
    if let Some(bytes) = clipped(buffer, name)? {
        return Ok(Some(Oversized::new(None, bytes)));
    }
    Ok(clipped(buffer, value)?.map(|bytes| Oversized::new(string(buffer, Some(name)).ok(), bytes)))
}

/// The length of the string a marker stands in for; `None` for anything but
/// an error reply. An error reply other than a marker has no place in an
/// entry: an error.
fn clipped(buffer: &[u8], frame: &RangeFrame) -> Result<Option<u64>, StoreError> {
    let RangeFrame::Error((start, end)) = frame else {
        return Ok(None);
    };
    let text = &buffer[*start..*end];
    clipped_length(text).map(Some).ok_or_else(|| {
        bad(
            READ,
            format!(
                "an error inside an entry: {}",
                String::from_utf8_lossy(text)
            ),
        )
    })
}

fn array(frame: RangeFrame) -> Result<Vec<RangeFrame>, StoreError> {
    match frame {
        RangeFrame::Array(items) => Ok(items),
        other => Err(bad(READ, format!("expected an array, got {other:?}"))),
    }
}

fn string<'a>(buffer: &'a [u8], frame: Option<&RangeFrame>) -> Result<&'a [u8], StoreError> {
    match frame {
        Some(RangeFrame::BulkString((start, end)) | RangeFrame::SimpleString((start, end))) => {
            Ok(&buffer[*start..*end])
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
    fn an_entry_with_a_clipped_field_comes_without_fields_naming_it() {
        let reply = Bytes::from_static(
            b"*1\r\n*2\r\n$1\r\ns\r\n*3\r\n\
            *2\r\n$3\r\n1-0\r\n*4\r\n$9\r\nrecipient\r\n$3\r\n+44\r\n$4\r\nbody\r\n-CLIPPED 1048576\r\n\
            *2\r\n$3\r\n2-0\r\n*2\r\n-CLIPPED 70000\r\n$1\r\nv\r\n\
            *2\r\n$3\r\n3-0\r\n*2\r\n$4\r\nbody\r\n$2\r\nhi\r\n",
        );
        let entries = stream_entries(&reply).expect("decodes");
        let ids: Vec<&str> = entries.iter().map(|entry| entry.id.as_str()).collect();
        assert_eq!(ids, ["1-0", "2-0", "3-0"]);
        assert!(entries[0].fields.is_empty() && entries[1].fields.is_empty());
        assert_eq!(
            entries[0].oversized,
            Some(Oversized {
                field: "body".to_owned(),
                bytes: 1_048_576
            })
        );
        let err = entries[0].message().expect_err("not a message");
        assert_eq!(
            err.to_string(),
            "field 'body' is 1048576 bytes, too long to read"
        );
        assert_eq!(
            entries[1].oversized,
            Some(Oversized {
                field: "…".to_owned(),
                bytes: 70_000
            })
        );
        assert_eq!(entries[2].oversized, None);
        assert_eq!(entries[2].fields, vec![(b"body".to_vec(), b"hi".to_vec())]);
    }

    #[test]
    fn an_error_inside_an_entry_that_is_no_marker_fails_the_read() {
        let reply = Bytes::from_static(
            b"*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nk\r\n-ERR odd\r\n",
        );
        let err = stream_entries(&reply).expect_err("not an entry");
        assert!(err.to_string().contains("ERR odd"), "{err}");
    }

    #[test]
    fn range_ids_skip_markers() {
        let reply = Bytes::from_static(
            b"*2\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$4\r\nbody\r\n-CLIPPED 1048576\r\n\
            *2\r\n$3\r\n2-0\r\n*2\r\n-CLIPPED 70000\r\n$0\r\n\r\n",
        );
        assert_eq!(entry_ids(&reply).expect("decodes"), ["1-0", "2-0"]);
    }

    #[test]
    fn range_values_give_the_last_value_of_the_field_if_readable() {
        let reply = Bytes::from_static(
            b"*4\r\n\
            *2\r\n$3\r\n1-0\r\n*6\r\n$4\r\nbody\r\n-CLIPPED 1048576\r\n\
              $6\r\nreason\r\n$7\r\nforeign\r\n$6\r\nreason\r\n$9\r\nmalformed\r\n\
            *2\r\n$3\r\n2-0\r\n*2\r\n$6\r\nreason\r\n-CLIPPED 70000\r\n\
            *2\r\n$3\r\n3-0\r\n*2\r\n$1\r\nx\r\n$1\r\ny\r\n\
            *2\r\n$3\r\n4-0\r\n*4\r\n-CLIPPED 70000\r\n$1\r\nv\r\n$6\r\nreason\r\n$4\r\nlate\r\n",
        );
        let values = entry_values(&reply, b"reason").expect("decodes");
        assert_eq!(
            values,
            [
                ("1-0".to_owned(), Some(b"malformed".to_vec())),
                ("2-0".to_owned(), None),
                ("3-0".to_owned(), None),
                ("4-0".to_owned(), Some(b"late".to_vec())),
            ]
        );
        assert!(
            entry_values(
                &Bytes::from_static(b"*1\r\n*2\r\n$3\r\n1-0\r\n*1\r\n$1\r\nx\r\n"),
                b"x"
            )
            .is_err()
        );
    }

    #[test]
    fn error_replies_keep_their_redis_code() {
        let err = stream_entries(&Bytes::from_static(b"-NOGROUP No such key\r\n"))
            .expect_err("an error reply");
        assert!(err.is_no_group(), "{err}");
    }
}
