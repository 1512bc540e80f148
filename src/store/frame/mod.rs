//! Framing RESP2 replies as their bytes arrive (finding where each one
//! ends, without parsing it), and reading a framed reply ([`Cursor`], in
//! `decode.rs`): the half of our own connection (`resp.rs`) that looks at
//! bytes.
//!
//! A string longer than [`MAX_VALUE_BYTES`] is never held: its bytes are
//! dropped as they arrive and the reply carries a marker in its place, the
//! error reply `-CLIPPED <length>` (see [`clipped_length`]). Why: a reply is
//! handed out only once complete, so without this one read of foreign
//! entries with 1 MB bodies held hundreds of MB; with it a reply costs at most
//! this much per string, whatever Redis sends. An error reply is a complete
//! RESP element that every decoder already frames, and it cannot be mistaken
//! for data: Redis puts none inside a stream entry, and where it may put one
//! (a command's result in an `EXEC` reply) a value too long to read is an
//! error too.

mod decode;

use std::ops::Range;

use bytes::BytesMut;

pub(super) use decode::{Cursor, server_error};

/// The longest string a reply keeps; a longer one is clipped (see the module
/// docs). A valid message field is under 1 KB, an id or a status far less.
pub(super) const MAX_VALUE_BYTES: usize = 64 * 1024;

/// The error code of the marker that stands in for a clipped string.
const CLIPPED: &str = "CLIPPED";

/// Finds where each complete RESP2 reply ends in a buffer that grows at its
/// end, without looking at any byte twice: it keeps its place and the
/// elements still owed by each open array between calls. Strings over its
/// limit ([`MAX_VALUE_BYTES`] on a connection) are clipped out of the buffer
/// as they arrive.
#[derive(Debug)]
pub(super) struct FrameScanner {
    /// Where the next element starts.
    at: usize,
    /// Elements still to come in each open array, innermost last.
    open: Vec<i64>,
    /// Bytes of a clipped string (the rest of its body, then CRLF) still to
    /// arrive; they are dropped at `at`.
    dropping: usize,
    /// The longest string kept; a longer one is clipped.
    limit: usize,
}

/// What [`FrameScanner::token`] found at the scanner's place.
#[derive(Debug, PartialEq, Eq)]
enum Token {
    /// Not all of it has arrived.
    Partial,
    /// An array header: its elements follow.
    Array,
    /// A whole element (a scalar, a nil, an empty array).
    Element,
    /// The header, `header` bytes long, of a string of `len` bytes over the
    /// limit; nothing was consumed.
    Oversized { header: usize, len: usize },
}

impl FrameScanner {
    /// A scanner that clips strings longer than `limit` bytes.
    pub(super) fn new(limit: usize) -> Self {
        Self {
            at: 0,
            open: Vec::new(),
            dropping: 0,
            limit,
        }
    }

    /// Starts over at the front of the buffer (after the caller took the
    /// replies scanned so far), keeping the array stack's memory.
    pub(super) fn restart(&mut self) {
        self.at = 0;
        self.open.clear();
        self.dropping = 0;
    }

    /// Where the next complete reply in `buffer` ends (scanning on from the
    /// end of the last one found), `None` if it has not all arrived, or what
    /// is wrong with it. A string over the limit is replaced in `buffer` by
    /// its marker, and its bytes are removed as they come.
    pub(super) fn scan(&mut self, buffer: &mut BytesMut) -> Result<Option<usize>, &'static str> {
        loop {
            if self.dropping > 0 {
                let arrived = self.dropping.min(buffer.len() - self.at);
                splice(buffer, self.at..self.at + arrived, b"");
                self.dropping -= arrived;
                if self.dropping > 0 {
                    return Ok(None);
                }
            } else {
                match self.token(buffer)? {
                    Token::Partial => return Ok(None),
                    Token::Array => continue,
                    Token::Element => {}
                    Token::Oversized { header, len } => {
                        let marker = clip_marker(len);
                        splice(buffer, self.at..self.at + header, &marker);
                        self.at += marker.len();
                        self.dropping = len + 2;
                        continue;
                    }
                }
            }
            if let Some(end) = self.close_element() {
                return Ok(Some(end));
            }
        }
    }

    /// Reads the token at the scanner's place and moves past it, unless it
    /// is partial or a string over the limit.
    fn token(&mut self, buffer: &[u8]) -> Result<Token, &'static str> {
        let rest = &buffer[self.at..];
        let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") else {
            return Ok(Token::Partial);
        };
        let Some((&kind, line)) = rest[..line_end].split_first() else {
            return Err("an empty line");
        };
        let header = line_end + 2;
        match kind {
            b'+' | b'-' | b':' => {
                self.at += header;
                Ok(Token::Element)
            }
            b'$' => {
                // A nil string (`$-1`) has no body.
                let Ok(len) = usize::try_from(length(line)?) else {
                    self.at += header;
                    return Ok(Token::Element);
                };
                if len > self.limit {
                    return Ok(Token::Oversized { header, len });
                }
                if rest.len() < header + len + 2 {
                    return Ok(Token::Partial);
                }
                self.at += header + len + 2;
                Ok(Token::Element)
            }
            b'*' => {
                self.at += header;
                let len = length(line)?;
                if len > 0 {
                    self.open.push(len);
                    return Ok(Token::Array);
                }
                Ok(Token::Element)
            }
            _ => Err("an unknown type byte"),
        }
    }

    /// One element is complete: closes the arrays it completes. Returns
    /// where the reply ends if that completes it.
    fn close_element(&mut self) -> Option<usize> {
        loop {
            match self.open.last_mut() {
                None => return Some(self.at),
                Some(left) => {
                    *left -= 1;
                    if *left > 0 {
                        return None;
                    }
                    self.open.pop();
                }
            }
        }
    }
}

/// Replaces `range` of `buffer` by `with`, moving what follows.
fn splice(buffer: &mut BytesMut, range: Range<usize>, with: &[u8]) {
    let tail = range.end..buffer.len();
    let with_end = range.start + with.len();
    let new_len = with_end + tail.len();
    if new_len > buffer.len() {
        buffer.resize(new_len, 0);
    }
    buffer.copy_within(tail, with_end);
    buffer[range.start..with_end].copy_from_slice(with);
    buffer.truncate(new_len);
}

/// The marker that stands in for a clipped string of `len` bytes.
fn clip_marker(len: usize) -> Vec<u8> {
    format!("-{CLIPPED} {len}\r\n").into_bytes()
}

/// The length of the string a marker stands in for, given the marker's text
/// (an error reply's, without `-` and CRLF); `None` for any other error.
pub(super) fn clipped_length(error: &[u8]) -> Option<u64> {
    let rest = error.strip_prefix(CLIPPED.as_bytes())?.strip_prefix(b" ")?;
    std::str::from_utf8(rest).ok()?.parse().ok()
}

/// The length in a `$` or `*` header (-1 for nil).
fn length(line: &[u8]) -> Result<i64, &'static str> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|text| text.parse().ok())
        .filter(|len| *len >= -1)
        .ok_or("a bad length")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An XREADGROUP reply of two entries, the second deleted (nil fields).
    const REPLY: &[u8] = b"*1\r\n*2\r\n$1\r\ns\r\n*2\r\n\
        *2\r\n$3\r\n1-0\r\n*4\r\n$9\r\nrecipient\r\n$3\r\n+44\r\n$4\r\nbody\r\n$0\r\n\r\n\
        *2\r\n$3\r\n2-0\r\n*-1\r\n";

    /// Feeds `reply` to a scanner that clips strings over `limit`, `piece`
    /// bytes at a time as a socket would. Returns where it framed the reply,
    /// the buffer left and the most the buffer ever held.
    fn scan_in_pieces(
        reply: &[u8],
        piece: usize,
        limit: usize,
    ) -> (Option<usize>, BytesMut, usize) {
        let mut scanner = FrameScanner::new(limit);
        let mut buffer = BytesMut::new();
        let mut found = None;
        let mut most = 0;
        for chunk in reply.chunks(piece) {
            assert_eq!(found, None, "framed before the end, pieces of {piece}");
            buffer.extend_from_slice(chunk);
            most = most.max(buffer.len());
            found = scanner.scan(&mut buffer).expect("valid");
        }
        (found, buffer, most)
    }

    #[test]
    fn a_reply_is_framed_whatever_pieces_it_arrives_in() {
        for piece in 1..=REPLY.len() {
            let (found, buffer, _) = scan_in_pieces(REPLY, piece, MAX_VALUE_BYTES);
            assert_eq!(found, Some(REPLY.len()), "pieces of {piece}");
            assert_eq!(&buffer[..], REPLY, "pieces of {piece}");
        }
    }

    #[test]
    fn long_strings_are_clipped_as_they_arrive_whatever_the_pieces() {
        // (reply, what is kept of it) with strings over 4 bytes clipped.
        let cases: [(&[u8], &[u8]); 6] = [
            (
                b"*2\r\n$6\r\nABCDEF\r\n$4\r\nkept\r\n",
                b"*2\r\n-CLIPPED 6\r\n$4\r\nkept\r\n",
            ),
            (
                b"*1\r\n*3\r\n$1\r\na\r\n$10\r\n0123456789\r\n:1\r\n",
                b"*1\r\n*3\r\n$1\r\na\r\n-CLIPPED 10\r\n:1\r\n",
            ),
            (
                b"*2\r\n*1\r\n$2\r\nok\r\n*1\r\n$5\r\nhello\r\n",
                b"*2\r\n*1\r\n$2\r\nok\r\n*1\r\n-CLIPPED 5\r\n",
            ),
            (
                b"*3\r\n$5\r\nfirst\r\n$6\r\nsecond\r\n$0\r\n\r\n",
                b"*3\r\n-CLIPPED 5\r\n-CLIPPED 6\r\n$0\r\n\r\n",
            ),
            // CRLF inside a string, clipped or kept, is data.
            (
                b"*2\r\n$6\r\na\r\nb\r\n\r\n$4\r\n\r\n\r\n\r\n",
                b"*2\r\n-CLIPPED 6\r\n$4\r\n\r\n\r\n\r\n",
            ),
            (b"$7\r\nabcdefg\r\n", b"-CLIPPED 7\r\n"),
        ];
        for (reply, kept) in cases {
            for piece in 1..=reply.len() {
                let (found, buffer, most) = scan_in_pieces(reply, piece, 4);
                let shown = String::from_utf8_lossy(reply);
                assert_eq!(found, Some(kept.len()), "{shown:?} in pieces of {piece}");
                assert_eq!(&buffer[..], kept, "{shown:?} in pieces of {piece}");
                assert!(
                    most <= kept.len() + piece,
                    "{shown:?} in pieces of {piece}: the buffer held {most} bytes"
                );
            }
        }
    }

    #[test]
    fn a_string_of_the_limit_is_kept_and_one_byte_more_is_clipped() {
        let mut reply = format!("*2\r\n${MAX_VALUE_BYTES}\r\n").into_bytes();
        reply.resize(reply.len() + MAX_VALUE_BYTES, b'k');
        reply.extend_from_slice(format!("\r\n${}\r\n", MAX_VALUE_BYTES + 1).as_bytes());
        let kept = reply.len();
        reply.resize(kept + MAX_VALUE_BYTES + 1, b'c');
        reply.extend_from_slice(b"\r\n");
        let mut expected = reply[..kept - format!("${}\r\n", MAX_VALUE_BYTES + 1).len()].to_vec();
        expected.extend_from_slice(format!("-CLIPPED {}\r\n", MAX_VALUE_BYTES + 1).as_bytes());
        for piece in [1, 1000, 4096, MAX_VALUE_BYTES, reply.len()] {
            let (found, buffer, _) = scan_in_pieces(&reply, piece, MAX_VALUE_BYTES);
            assert_eq!(found, Some(expected.len()), "pieces of {piece}");
            assert!(buffer[..] == expected[..], "pieces of {piece}");
        }
    }

    #[test]
    fn markers_tell_the_length_and_other_errors_are_not_markers() {
        assert_eq!(clipped_length(b"CLIPPED 1048576"), Some(1_048_576));
        assert_eq!(clipped_length(b"ERR no"), None);
        assert_eq!(clipped_length(b"CLIPPEDX 5"), None);
        assert_eq!(clipped_length(b"CLIPPED five"), None);
    }

    #[test]
    fn back_to_back_replies_are_framed_one_at_a_time() {
        let mut buffer =
            BytesMut::from(&b"*-1\r\n:5\r\n$-1\r\n*0\r\n-ERR no\r\n$5\r\nhello\r\n:1\r\n"[..]);
        let mut scanner = FrameScanner::new(4);
        let mut ends = Vec::new();
        while let Some(end) = scanner.scan(&mut buffer).expect("valid") {
            ends.push(end);
        }
        assert_eq!(ends, [5, 9, 14, 18, 27, 39, 43]);
        let mut replies = Cursor::new("TEST", &buffer);
        let mut lengths = Vec::new();
        while !replies.is_at_end() {
            lengths.push(replies.element().expect("valid").len());
        }
        assert_eq!(lengths, [5, 4, 5, 4, 9, 12, 4]);
    }

    #[test]
    fn garbage_is_an_error_not_a_hang() {
        for garbage in [&b"?what\r\n"[..], b"$x\r\n", b"*-2\r\n", b"\r\n"] {
            let mut buffer = BytesMut::from(garbage);
            assert!(
                FrameScanner::new(4).scan(&mut buffer).is_err(),
                "{garbage:?}"
            );
        }
        let mut replies = Cursor::new("TEST", b":1\r\n$5\r\nab");
        replies.skip().expect("a first");
        assert!(replies.skip().is_err(), "the second is cut short");
    }
}
