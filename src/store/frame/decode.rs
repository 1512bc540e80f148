//! Reading a framed reply element by element: the one decoder of the replies
//! that come on our own connection (reads, audit walks, reports, batches).
//!
//! A [`Cursor`] walks the bytes in place: it copies nothing, and an element
//! the caller does not need is skipped whole, only framed, however many
//! elements it holds. Every error names the command the reply answers. The
//! bytes come from a connection, so nothing here trusts a length: a reply cut
//! short anywhere, or one that lies about its lengths, is an error, never a
//! panic nor a huge allocation.

use redis::RedisError;

use super::super::StoreError;
use super::super::reply::bad;
use super::{clipped_length, length};

/// The fewest bytes an element takes (`+\r\n`): a bound on how many elements
/// the rest of a reply can hold, whatever its headers claim.
const SMALLEST_ELEMENT: usize = 3;

/// The most of a foreign text (an error's, a bad number) a message shows.
const SHOWN_ERROR: usize = 120;

/// A place in a framed reply, moving forward one element at a time.
#[derive(Debug, Clone)]
pub(in crate::store) struct Cursor<'a> {
    /// The command the reply answers, named in errors.
    command: &'static str,
    bytes: &'a [u8],
    /// Where the next element starts.
    at: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at the first element of `bytes`, the reply to `command`.
    pub(in crate::store) fn new(command: &'static str, bytes: &'a [u8]) -> Self {
        Self {
            command,
            bytes,
            at: 0,
        }
    }

    /// A reply that had the wrong shape, naming the command.
    pub(in crate::store) fn bad(&self, detail: impl Into<String>) -> StoreError {
        bad(self.command, detail)
    }

    /// Whether every element has been read.
    pub(in crate::store) fn is_at_end(&self) -> bool {
        self.at >= self.bytes.len()
    }

    /// How many of `claimed` elements the rest of the reply can hold: what
    /// to reserve room for.
    pub(in crate::store) fn fits(&self, claimed: usize) -> usize {
        claimed.min(self.bytes.len().saturating_sub(self.at) / SMALLEST_ELEMENT)
    }

    /// An array's length, its elements next; `None` for a nil array.
    pub(in crate::store) fn array(&mut self) -> Result<Option<usize>, StoreError> {
        match self.peek() {
            Some(b'*') => {
                let line = self.header()?;
                self.length(line)
            }
            _ => Err(self.unexpected("an array")),
        }
    }

    /// A string, bulk or status; `None` for a nil string.
    pub(in crate::store) fn string(&mut self) -> Result<Option<&'a [u8]>, StoreError> {
        match self.peek() {
            Some(b'$') => {
                let line = self.header()?;
                let Some(len) = self.length(line)? else {
                    return Ok(None);
                };
                let end = self.at.checked_add(len).ok_or_else(|| self.incomplete())?;
                let (Some(body), Some(crlf)) = (
                    self.bytes.get(self.at..end),
                    self.bytes.get(end..end.saturating_add(2)),
                ) else {
                    return Err(self.incomplete());
                };
                if crlf != b"\r\n" {
                    return Err(self.bad("a string longer than its length"));
                }
                self.at = end + 2;
                Ok(Some(body))
            }
            Some(b'+') => self.header().map(Some),
            _ => Err(self.unexpected("a string")),
        }
    }

    /// A string that must be there: nil is an error too.
    pub(in crate::store) fn bytes(&mut self) -> Result<&'a [u8], StoreError> {
        self.string()?
            .ok_or_else(|| self.bad("expected a string, got nil"))
    }

    /// The next element's bytes if it is a string; anything else (nil, a
    /// marker, an error, a number, an array) is skipped and gives `None`.
    pub(in crate::store) fn string_or_skip(&mut self) -> Result<Option<&'a [u8]>, StoreError> {
        match self.peek() {
            Some(b'$' | b'+') => self.string(),
            _ => self.skip().map(|()| None),
        }
    }

    /// An integer. A string holding one is read as one too, as redis-rs
    /// does: a Function's numbers may come either way.
    pub(in crate::store) fn int(&mut self) -> Result<i64, StoreError> {
        let digits = match self.peek() {
            Some(b':') => self.header()?,
            Some(b'$' | b'+') => self.bytes()?,
            _ => return Err(self.unexpected("an integer")),
        };
        std::str::from_utf8(digits)
            .ok()
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| {
                self.bad(format!(
                    "expected an integer, got {:?}",
                    shown(digits, SHOWN_ERROR)
                ))
            })
    }

    /// If the next element is an error reply: its text (no `-`, no CRLF),
    /// moving past it. Anything else is left where it is; no element at all
    /// is an error.
    pub(in crate::store) fn error(&mut self) -> Result<Option<&'a [u8]>, StoreError> {
        match self.peek() {
            Some(b'-') => self.header().map(Some),
            Some(_) => Ok(None),
            None => Err(self.incomplete()),
        }
    }

    /// If the next element is the marker of a clipped string (see
    /// [`super::clipped_length`]): the length it stands in for, moving past
    /// it. Anything but an error is left where it is. Another error is one:
    /// Redis puts none where a value belongs.
    pub(in crate::store) fn clipped(&mut self) -> Result<Option<u64>, StoreError> {
        let Some(text) = self.error()? else {
            return Ok(None);
        };
        clipped_length(text).map(Some).ok_or_else(|| {
            self.bad(format!(
                "an error where a value belongs: {}",
                shown(text, SHOWN_ERROR)
            ))
        })
    }

    /// Moves past the next element whole, arrays and all, decoding nothing.
    pub(in crate::store) fn skip(&mut self) -> Result<(), StoreError> {
        self.element().map(|_| ())
    }

    /// The next element's bytes, whole (arrays and all), moving past it: for
    /// a caller that compares a reply as bytes or hands an error reply to
    /// [`server_error`].
    pub(in crate::store) fn element(&mut self) -> Result<&'a [u8], StoreError> {
        let start = self.at;
        // Elements still to move past: this one, then those of its arrays.
        let mut owed: usize = 1;
        while owed > 0 {
            owed -= 1;
            match self.peek() {
                Some(b'*') => {
                    let line = self.header()?;
                    owed = owed.saturating_add(self.length(line)?.unwrap_or(0));
                }
                Some(b'$') => {
                    self.string()?;
                }
                Some(b'+' | b'-' | b':') => {
                    self.header()?;
                }
                Some(_) => return Err(self.bad("an unknown type byte")),
                None => return Err(self.incomplete()),
            }
        }
        Ok(&self.bytes[start..self.at])
    }

    /// The type byte of the next element, without reading it.
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    /// Reads the header line of the next element, moving past its CRLF:
    /// the line after the type byte. A header holds no CR of its own.
    fn header(&mut self) -> Result<&'a [u8], StoreError> {
        let rest = self.bytes.get(self.at..).unwrap_or_default();
        let Some(cr) = rest.iter().position(|&byte| byte == b'\r') else {
            return Err(self.incomplete());
        };
        match rest.get(cr + 1) {
            Some(b'\n') => {}
            Some(_) => return Err(self.bad("a CR without LF")),
            None => return Err(self.incomplete()),
        }
        let line = rest.get(1..cr).ok_or_else(|| self.bad("an empty line"))?;
        self.at += cr + 2;
        Ok(line)
    }

    /// The length in a `$` or `*` header; `None` for nil (-1).
    fn length(&self, line: &[u8]) -> Result<Option<usize>, StoreError> {
        let len = length(line).map_err(|detail| self.bad(detail))?;
        Ok(usize::try_from(len).ok())
    }

    fn incomplete(&self) -> StoreError {
        self.bad("an incomplete reply")
    }

    /// The error for finding something other than `expected` next.
    fn unexpected(&self, expected: &str) -> StoreError {
        let rest = self.bytes.get(self.at..).unwrap_or_default();
        let line = rest.split(|&byte| byte == b'\r').next().unwrap_or_default();
        let found = match line {
            [] => return self.incomplete(),
            [b'-', text @ ..] => format!("the error {}", shown(text, SHOWN_ERROR)),
            [b'*', b'-', ..] => "a nil array".to_owned(),
            [b'$', b'-', ..] => "nil".to_owned(),
            [b'*', ..] => "an array".to_owned(),
            [b'$' | b'+', ..] => "a string".to_owned(),
            [b':', ..] => "an integer".to_owned(),
            _ => "an unknown type byte".to_owned(),
        };
        self.bad(format!("expected {expected}, got {found}"))
    }
}

/// At most `limit` bytes of `text`, as text.
fn shown(text: &[u8], limit: usize) -> String {
    String::from_utf8_lossy(&text[..text.len().min(limit)]).into_owned()
}

/// An error reply as redis-rs would report it (so that NOGROUP, a missing
/// Function and the like are told apart exactly as on other connections);
/// `Ok` for anything else.
pub(in crate::store) fn server_error(reply: &[u8]) -> Result<(), RedisError> {
    if reply.first() == Some(&b'-') {
        redis::parse_redis_value(reply)?.extract_error()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shape the callers read: nested arrays, a nil array, bulk,
    /// status and nil strings, an integer, a marker.
    const MIXED: &[u8] = b"*7\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$4\r\nbody\r\n$0\r\n\r\n\
        *-1\r\n+OK\r\n$-1\r\n:-42\r\n-CLIPPED 70000\r\n$4\r\na\r\nb\r\n";

    fn cursor(bytes: &[u8]) -> Cursor<'_> {
        Cursor::new("TEST", bytes)
    }

    /// Reads `MIXED` as its callers would, every element by its type.
    fn read_mixed(reply: &mut Cursor<'_>) -> Result<(), StoreError> {
        assert_eq!(reply.array()?, Some(7));
        assert_eq!(reply.array()?, Some(2));
        assert_eq!(reply.bytes()?, b"1-0");
        assert_eq!(reply.array()?, Some(2));
        assert_eq!(reply.bytes()?, b"body");
        assert_eq!(reply.string()?, Some(&b""[..]));
        assert_eq!(reply.array()?, None);
        assert_eq!(reply.string()?, Some(&b"OK"[..]));
        assert_eq!(reply.string()?, None);
        assert_eq!(reply.int()?, -42);
        assert_eq!(reply.clipped()?, Some(70_000));
        assert_eq!(reply.bytes()?, b"a\r\nb");
        Ok(())
    }

    #[test]
    fn every_shape_reads_as_what_it_is() {
        let mut reply = cursor(MIXED);
        read_mixed(&mut reply).expect("reads");
        assert!(reply.is_at_end());
    }

    #[test]
    fn a_reply_cut_short_anywhere_is_an_error_not_a_panic() {
        for end in 0..MIXED.len() {
            let cut = &MIXED[..end];
            let shown = String::from_utf8_lossy(cut);
            let err = read_mixed(&mut cursor(cut)).expect_err("cut short");
            assert!(matches!(err, StoreError::Reply { .. }), "{shown:?}: {err}");
            assert!(cursor(cut).skip().is_err(), "skipping {shown:?}");
        }
    }

    #[test]
    fn skipping_moves_past_a_whole_element() {
        let mut reply = cursor(MIXED);
        assert_eq!(reply.array().expect("outer"), Some(7));
        assert_eq!(
            reply.element().expect("the entry"),
            b"*2\r\n$3\r\n1-0\r\n*2\r\n$4\r\nbody\r\n$0\r\n\r\n"
        );
        for _ in 0..4 {
            reply.skip().expect("skips");
        }
        assert_eq!(reply.element().expect("the marker"), b"-CLIPPED 70000\r\n");
        reply.skip().expect("the string");
        assert!(reply.is_at_end());
        assert_eq!(cursor(MIXED).element().expect("all"), MIXED);
    }

    #[test]
    fn each_reader_refuses_another_type_and_names_the_command() {
        let err = cursor(b"+OK\r\n").array().expect_err("not an array");
        assert_eq!(
            err.to_string(),
            "unexpected reply to TEST: expected an array, got a string"
        );
        assert!(cursor(b"*1\r\n:1\r\n").string().is_err());
        assert!(cursor(b"$-1\r\n").bytes().is_err());
        assert!(cursor(b"*0\r\n").int().is_err());
        assert!(cursor(b"$2\r\nxy\r\n").int().is_err());
        assert_eq!(cursor(b"$2\r\n12\r\n").int().expect("a number"), 12);
        let err = cursor(b"-ERR no\r\n").array().expect_err("an error");
        assert!(err.to_string().contains("the error ERR no"), "{err}");
    }

    #[test]
    fn markers_are_read_and_other_errors_are_not_values() {
        let mut reply = cursor(b"-CLIPPED 9\r\n$1\r\nv\r\n-ERR odd\r\n");
        assert_eq!(reply.clipped().expect("a marker"), Some(9));
        assert_eq!(reply.clipped().expect("a string"), None);
        assert_eq!(reply.bytes().expect("left in place"), b"v");
        let err = reply.clipped().expect_err("no marker");
        assert!(err.to_string().contains("ERR odd"), "{err}");
        assert_eq!(
            cursor(b"-ERR x\r\n").error().expect("one"),
            Some(&b"ERR x"[..])
        );
        assert_eq!(cursor(b":1\r\n").error().expect("none"), None);
    }

    #[test]
    fn skipping_reads_only_strings() {
        let mut reply = cursor(b"*2\r\n$1\r\nx\r\n:1\r\n-CLIPPED 9\r\n$-1\r\n+s\r\n");
        for expected in [None, None, None, Some(&b"s"[..])] {
            assert_eq!(reply.string_or_skip().expect("reads"), expected);
        }
        assert!(reply.is_at_end());
    }

    #[test]
    fn lying_lengths_are_errors_and_reserve_nothing() {
        let huge = b"*9223372036854775807\r\n:1\r\n";
        let mut reply = cursor(huge);
        assert_eq!(reply.array().expect("a header"), Some(i64::MAX as usize));
        assert_eq!(reply.fits(i64::MAX as usize), 1);
        assert!(cursor(huge).skip().is_err());
        assert!(cursor(b"$9223372036854775807\r\nab\r\n").string().is_err());
        assert!(cursor(b"$1\r\nab\r\n").string().is_err());
        for garbage in [&b"?x\r\n"[..], b"*-2\r\n", b"$x\r\n", b"\r\n", b":1\rx"] {
            assert!(cursor(garbage).skip().is_err(), "{garbage:?}");
        }
    }

    #[test]
    fn error_replies_keep_their_redis_kind() {
        let err = server_error(b"-NOGROUP No such key\r\n").expect_err("an error");
        assert_eq!(err.code(), Some("NOGROUP"));
        assert!(server_error(b"*0\r\n").is_ok());
    }
}
