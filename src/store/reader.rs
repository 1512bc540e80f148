//! The read connection: the sender's XREADGROUP, and the audit's walks over
//! a stream's ids and over the dead stream's reasons (XRANGE), on a
//! connection of its own ([`RespConnection`]), replies decoded here with the
//! store's one decoder ([`Cursor`]) rather than by redis-rs.
//!
//! Why: parsing the big XREADGROUP replies into redis-rs values would be
//! most of a busy sender's CPU. The cursor reads the reply where it lies, copying only the fields kept.
//! Several reads can be on the wire at once ([`PendingReply`]). The audit
//! needs only ids (and, in the dead stream, one field): it skips every other
//! field, so a page of hostile entries (thousands of fields, 50 KB bodies)
//! costs no more to decode than any other.
//!
//! A value too long to hold arrives as a marker (see [`super::frame`]): the
//! sender's entry then comes with no fields and the field named in
//! [`StreamEntry::oversized`], to be dead-lettered as malformed; the audit's
//! walks skip it.

use super::StoreError;
use super::frame::{Cursor, server_error};
use super::pending::PendingReply;
use super::resp::RespConnection;
use super::streams::StreamEntry;
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
    /// Reads on `conn` (see [`super::Store::read_connection`]).
    pub(super) fn new(conn: RespConnection) -> Self {
        Self { conn }
    }

    /// Sends an XREADGROUP now; its entries come later.
    pub(super) fn read(&self, cmd: &redis::Cmd) -> PendingReply<Vec<StreamEntry>> {
        let reply = self.conn.send_cmd(READ, cmd);
        PendingReply::new(async move { stream_entries(&reply.await?) })
    }

    /// Sends an XRANGE or XREVRANGE now; its entries come later with their
    /// fields (values over the clipping limit left out).
    pub(super) fn range_full(&self, cmd: &redis::Cmd) -> PendingReply<Vec<StreamEntry>> {
        let reply = self.conn.send_cmd(RANGE, cmd);
        PendingReply::new(async move { range_full_entries(&reply.await?) })
    }

    /// Sends an XRANGE now; its entries' ids come later.
    pub(super) fn range_ids(&self, cmd: &redis::Cmd) -> PendingReply<Vec<String>> {
        let reply = self.conn.send_cmd(RANGE, cmd);
        PendingReply::new(async move { entry_ids(&reply.await?) })
    }

    /// Sends an XRANGE now; its entries' ids come later, each with the value
    /// of its field `name` (see [`entry_values`]).
    pub(super) fn range_values(
        &self,
        cmd: &redis::Cmd,
        name: &'static str,
    ) -> PendingReply<Vec<IdAndValue>> {
        let reply = self.conn.send_cmd(RANGE, cmd);
        PendingReply::new(async move { entry_values(&reply.await?, name.as_bytes()) })
    }
}

/// Decodes an XREADGROUP reply: nil when the block timed out, else
/// `[[stream, [[id, [field, value, ...]], ...]], ...]`. An entry deleted from
/// the stream while pending comes with nil fields and decodes with none; one
/// with a field too long to read decodes with none and that field named.
fn stream_entries(frame: &[u8]) -> Result<Vec<StreamEntry>, StoreError> {
    server_error(frame).map_err(StoreError::redis(READ))?;
    let mut reply = Cursor::new(READ, frame);
    let mut entries = Vec::new();
    let Some(streams) = reply.array()? else {
        return Ok(entries);
    };
    for _ in 0..streams {
        // [name, entries]
        let parts = reply.array()?.ok_or_else(|| reply.bad("a nil stream"))?;
        for part in 0..parts {
            match part {
                1 => {
                    if let Some(items) = reply.array()? {
                        entries.reserve(reply.fits(items));
                        decode_items(&mut reply, items, &mut entries)?;
                    }
                }
                _ => reply.skip()?,
            }
        }
    }
    Ok(entries)
}

/// Decodes an XRANGE or XREVRANGE reply, `[[id, [field, value, ...]], ...]`,
/// with every field, as [`stream_entries`] does: a value too long to read is
/// never held, and its entry comes with no fields and that field named.
fn range_full_entries(frame: &[u8]) -> Result<Vec<StreamEntry>, StoreError> {
    server_error(frame).map_err(StoreError::redis(RANGE))?;
    let mut reply = Cursor::new(RANGE, frame);
    let items = reply.array()?.ok_or_else(|| reply.bad("a nil array"))?;
    let mut entries = Vec::with_capacity(reply.fits(items));
    decode_items(&mut reply, items, &mut entries)?;
    Ok(entries)
}

/// Decodes `count` items `[id, [field, value, ...]]` into `entries`.
fn decode_items(
    reply: &mut Cursor<'_>,
    count: usize,
    entries: &mut Vec<StreamEntry>,
) -> Result<(), StoreError> {
    for _ in 0..count {
        let parts = entry_start(reply)?;
        let id = entry_id(reply)?;
        let (fields, oversized) = match parts {
            1 => (Vec::new(), None),
            _ => match reply.array()? {
                None => (Vec::new(), None),
                Some(items) => entry_fields(reply, items)?,
            },
        };
        skip(reply, parts.saturating_sub(2))?;
        entries.push(StreamEntry {
            id,
            fields,
            oversized,
        });
    }
    Ok(())
}

/// Reads an entry's array header: how many parts it has, at least an id.
fn entry_start(reply: &mut Cursor<'_>) -> Result<usize, StoreError> {
    match reply.array()? {
        None => Err(reply.bad("a nil entry")),
        Some(0) => Err(reply.bad("an entry without an id")),
        Some(parts) => Ok(parts),
    }
}

/// Reads an entry's id.
fn entry_id(reply: &mut Cursor<'_>) -> Result<String, StoreError> {
    let id = reply.bytes()?;
    String::from_utf8(id.to_vec()).map_err(|_| reply.bad("an entry id that is not UTF-8"))
}

/// Moves past `elements` whole elements (parts of an entry nobody reads).
fn skip(reply: &mut Cursor<'_>, elements: usize) -> Result<(), StoreError> {
    (0..elements).try_for_each(|_| reply.skip())
}

/// Decodes the ids of an XRANGE reply, `[[id, [field, value, ...]], ...]`:
/// the fields are only framed (skipped), never decoded, so their number and
/// size cost no memory.
fn entry_ids(frame: &[u8]) -> Result<Vec<String>, StoreError> {
    range_entries(frame, |fields, id| {
        if let Some(fields) = fields {
            fields.skip()?;
        }
        Ok(id)
    })
}

/// Decodes an XRANGE reply into each entry's id and the value of its field
/// `name`: the last one if it comes more than once (a dead entry keeps the
/// fields of the entry it copies, then adds its own), `None` when absent or
/// too long to read. Other fields are only framed, never copied.
fn entry_values(frame: &[u8], name: &[u8]) -> Result<Vec<IdAndValue>, StoreError> {
    range_entries(frame, |fields, id| {
        let value = match fields {
            Some(fields) => field_value(fields, name)?,
            None => None,
        };
        Ok((id, value))
    })
}

/// Decodes the entries of an XRANGE reply, each with `decode` given the
/// cursor at its field list (`None` for an entry without one), which it
/// must read whole, and its id.
fn range_entries<T>(
    frame: &[u8],
    mut decode: impl FnMut(Option<&mut Cursor<'_>>, String) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    server_error(frame).map_err(StoreError::redis(RANGE))?;
    let mut reply = Cursor::new(RANGE, frame);
    let items = reply.array()?.ok_or_else(|| reply.bad("a nil array"))?;
    let mut decoded = Vec::with_capacity(reply.fits(items));
    for _ in 0..items {
        let parts = entry_start(&mut reply)?;
        let id = entry_id(&mut reply)?;
        decoded.push(decode((parts > 1).then_some(&mut reply), id)?);
        skip(&mut reply, parts.saturating_sub(2))?;
    }
    Ok(decoded)
}

/// The value of the last field `name` in a field list, `None` when absent or
/// too long to read (a marker is not a string).
fn field_value(reply: &mut Cursor<'_>, name: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
    let Some(items) = reply.array()? else {
        return Ok(None);
    };
    if !items.is_multiple_of(2) {
        return Err(reply.bad("odd number of field/value items"));
    }
    let mut found = None;
    for _ in 0..items / 2 {
        let field = reply.string_or_skip()?;
        let value = reply.string_or_skip()?;
        if field == Some(name) {
            found = value;
        }
    }
    Ok(found.map(<[u8]>::to_vec))
}

/// Reads a field list of `items` elements: the fields as pairs of bytes; or
/// none, and the first field too long to read, if a marker stands in for a
/// name or a value.
fn entry_fields(
    reply: &mut Cursor<'_>,
    items: usize,
) -> Result<(RawFields, Option<Oversized>), StoreError> {
    let mut fields = Vec::with_capacity(reply.fits(items) / 2);
    let mut oversized = None;
    for _ in 0..items / 2 {
        if oversized.is_some() {
            skip(reply, 2)?;
        } else if let Some(bytes) = reply.clipped()? {
            oversized = Some(Oversized::new(None, bytes));
            reply.skip()?;
        } else {
            let name = reply.string_or_skip()?;
            if let Some(bytes) = reply.clipped()? {
                oversized = Some(Oversized::new(name, bytes));
                continue;
            }
            let value = reply.string()?;
            let (Some(name), Some(value)) = (name, value) else {
                return Err(reply.bad("a field or value that is not a string"));
            };
            fields.push((name.to_vec(), value.to_vec()));
        }
    }
    if !items.is_multiple_of(2) {
        if oversized.is_none() {
            return Err(reply.bad("odd number of field/value items"));
        }
        reply.skip()?;
    }
    Ok(match oversized {
        Some(oversized) => (Vec::new(), Some(oversized)),
        None => (fields, None),
    })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

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
    fn a_reply_cut_short_anywhere_fails_the_read_without_a_panic() {
        for end in 0..REPLY.len() {
            let cut = &REPLY[..end];
            let err = stream_entries(cut).expect_err("cut short");
            assert!(matches!(err, StoreError::Reply { .. }), "{end}: {err}");
        }
        let range = &REPLY[b"*1\r\n*2\r\n$1\r\ns\r\n".len()..];
        assert_eq!(entry_ids(range).expect("whole"), ["1-0", "2-0"]);
        for end in 0..range.len() {
            assert!(entry_ids(&range[..end]).is_err(), "ids, {end}");
            assert!(
                entry_values(&range[..end], b"body").is_err(),
                "values, {end}"
            );
            assert!(range_full_entries(&range[..end]).is_err(), "full, {end}");
        }
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
