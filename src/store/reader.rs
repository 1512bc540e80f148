//! The sender's read connection: a socket of its own for XREADGROUP, whose
//! replies are framed and decoded here rather than by redis-rs.
//!
//! Why: a profile of a sender at full load put over half of its CPU in
//! redis-rs's reply parser (`combine`), almost all of it on the big
//! XREADGROUP replies: 3.3 µs per entry, measured on a 1,000-entry reply.
//! `redis-protocol`'s range decoder reads the same reply at 0.66 µs per
//! entry, without copying it. Every other command still goes through
//! redis-rs, whose connection keeps its parser.
//!
//! Requests are written in the order they are made and answered in that
//! order, so several reads can be on the wire at once (as on a redis-rs
//! multiplexed connection). A reply is framed as its bytes arrive by a
//! [`FrameScanner`] that remembers where it stopped, so a big reply that
//! arrives in many pieces is scanned once, not once per piece.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use redis::{ConnectionAddr, ConnectionInfo, RedisError};
use redis_protocol::resp2::decode::decode_range;
use redis_protocol::resp2::types::RangeFrame;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::StoreError;
use super::reply::{bad, pairs};
use super::streams::StreamEntry;

/// The command this connection carries, for errors.
const COMMAND: &str = "XREADGROUP";
/// Room kept free in the read buffer; a read of 1,000 entries is ~170 KB.
const READ_CHUNK: usize = 64 * 1024;

/// One request: the command as RESP bytes, and where its reply goes.
struct Request {
    packed: Vec<u8>,
    reply: oneshot::Sender<Result<Bytes, RedisError>>,
}

/// A connection for XREADGROUP. Cheap to clone; once the last clone is
/// dropped, the socket closes as soon as the reads already sent are answered.
#[derive(Clone, Debug)]
pub struct ReadConnection {
    requests: mpsc::UnboundedSender<Request>,
    /// How long a reply may take: the longest block plus the response timeout.
    reply_timeout: Duration,
}

impl ReadConnection {
    /// Opens a connection as `info` describes (TCP or a Unix socket), logs in
    /// and selects the database. Replies may take up to `reply_timeout`.
    pub(super) async fn open(
        info: &ConnectionInfo,
        connect_timeout: Duration,
        reply_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let connect = async {
            match info.addr() {
                ConnectionAddr::Tcp(host, port) => {
                    let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                    stream.set_nodelay(true)?;
                    Ok(Self::start(stream, reply_timeout))
                }
                #[cfg(unix)]
                ConnectionAddr::Unix(path) => {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok(Self::start(stream, reply_timeout))
                }
                _ => Err(std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "the read connection supports TCP and Unix sockets only",
                )),
            }
        };
        let conn = tokio::time::timeout(connect_timeout, connect)
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))
            .and_then(|opened| opened)
            .map_err(|err| StoreError::redis("connect")(RedisError::from(err)))?;
        conn.log_in(info).await?;
        Ok(conn)
    }

    /// Starts the task that owns the socket.
    fn start<S>(stream: S, reply_timeout: Duration) -> Self
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (requests, incoming) = mpsc::unbounded_channel();
        tokio::spawn(drive(stream, incoming, reply_timeout));
        Self {
            requests,
            reply_timeout,
        }
    }

    /// AUTH and SELECT, as the URL asks.
    async fn log_in(&self, info: &ConnectionInfo) -> Result<(), StoreError> {
        let settings = info.redis_settings();
        if let Some(password) = settings.password() {
            let mut auth = redis::cmd("AUTH");
            if let Some(username) = settings.username() {
                auth.arg(username);
            }
            auth.arg(password);
            self.simple("AUTH", &auth).await?;
        }
        if settings.db() != 0 {
            self.simple("SELECT", redis::cmd("SELECT").arg(settings.db()))
                .await?;
        }
        Ok(())
    }

    /// Sends a command whose reply is a status or an error.
    async fn simple(&self, command: &'static str, cmd: &redis::Cmd) -> Result<(), StoreError> {
        let frame = self.send(command, cmd).await?;
        server_error(&frame).map_err(StoreError::redis(command))
    }

    /// Sends `cmd` now (so requests reach Redis in the order they are made)
    /// and returns a future of the reply's raw bytes.
    fn send(
        &self,
        command: &'static str,
        cmd: &redis::Cmd,
    ) -> impl Future<Output = Result<Bytes, StoreError>> + Send + 'static + use<> {
        let (reply, answer) = oneshot::channel();
        let sent = self.requests.send(Request {
            packed: cmd.get_packed_command(),
            reply,
        });
        let reply_timeout = self.reply_timeout;
        async move {
            let lost = || StoreError::redis(command)(connection_lost());
            sent.map_err(|_| lost())?;
            match tokio::time::timeout(reply_timeout, answer).await {
                Ok(Ok(reply)) => reply.map_err(StoreError::redis(command)),
                Ok(Err(_)) => Err(lost()),
                Err(_) => Err(StoreError::redis(command)(RedisError::from(
                    std::io::Error::from(std::io::ErrorKind::TimedOut),
                ))),
            }
        }
    }

    /// Sends an XREADGROUP now and returns a future of its entries.
    pub(super) fn read(
        &self,
        cmd: &redis::Cmd,
    ) -> impl Future<Output = Result<Vec<StreamEntry>, StoreError>> + Send + 'static + use<> {
        let reply = self.send(COMMAND, cmd);
        async move { stream_entries(&reply.await?) }
    }
}

fn connection_lost() -> RedisError {
    RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset))
}

/// Owns the socket: writes requests in order and hands each framed reply to
/// the oldest request waiting. When every handle is gone it still answers
/// the requests already sent (for up to `reply_timeout`), as a redis-rs
/// connection does: a dispatcher that drops this connection after an error
/// on one read must not fail the reads it sent since. If the socket fails,
/// the requests still waiting get an error.
async fn drive<S>(
    stream: S,
    mut incoming: mpsc::UnboundedReceiver<Request>,
    reply_timeout: Duration,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut socket_in, mut socket_out) = tokio::io::split(stream);
    let mut waiting: VecDeque<oneshot::Sender<Result<Bytes, RedisError>>> = VecDeque::new();
    let mut buffer = BytesMut::with_capacity(READ_CHUNK);
    let mut scanner = FrameScanner::default();
    // Set once every handle is gone: the last moment to wait for replies.
    let mut closing: Option<tokio::time::Instant> = None;
    let failure = loop {
        if closing.is_some() && waiting.is_empty() {
            return;
        }
        if buffer.capacity() - buffer.len() < READ_CHUNK / 4 {
            buffer.reserve(READ_CHUNK);
        }
        tokio::select! {
            request = incoming.recv(), if closing.is_none() => {
                let Some(request) = request else {
                    closing = Some(tokio::time::Instant::now() + reply_timeout);
                    continue;
                };
                waiting.push_back(request.reply);
                if let Err(err) = socket_out.write_all(&request.packed).await {
                    break RedisError::from(err);
                }
            }
            () = async {
                match closing {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            } => break std::io::Error::from(std::io::ErrorKind::TimedOut).into(),
            read = socket_in.read_buf(&mut buffer) => match read {
                Ok(0) => break connection_lost(),
                Err(err) => break RedisError::from(err),
                Ok(_) => {
                    let mut broken = None;
                    loop {
                        match scanner.scan(&buffer) {
                            Ok(Some(len)) => {
                                let frame = buffer.split_to(len).freeze();
                                scanner.restart();
                                match waiting.pop_front() {
                                    // The caller may have timed out; nothing to do.
                                    Some(reply) => drop(reply.send(Ok(frame))),
                                    None => {
                                        broken = Some(protocol_error("a reply nobody asked for"));
                                        break;
                                    }
                                }
                            }
                            Ok(None) => break,
                            Err(detail) => {
                                broken = Some(protocol_error(detail));
                                break;
                            }
                        }
                    }
                    if let Some(err) = broken {
                        break err;
                    }
                }
            }
        }
    };
    tracing::debug!(error = %failure, "read connection closed");
    for reply in waiting {
        let _ = reply.send(Err(clone_error(&failure)));
    }
}

fn protocol_error(detail: &str) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("bad reply on the read connection: {detail}"),
    ))
}

/// `RedisError` is not `Clone`; the waiting requests get the same kind and text.
fn clone_error(err: &RedisError) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        err.to_string(),
    ))
}

/// Finds where one complete RESP2 reply ends in a buffer that grows at its
/// end, without looking at any byte twice: it keeps its place and the
/// elements still owed by each open array between calls.
#[derive(Debug, Default)]
struct FrameScanner {
    /// Where the next element starts.
    at: usize,
    /// Elements still to come in each open array, innermost last.
    open: Vec<i64>,
}

impl FrameScanner {
    /// Starts over on the next reply, keeping the array stack's memory.
    fn restart(&mut self) {
        self.at = 0;
        self.open.clear();
    }

    /// The length of the first complete reply in `buffer`, `None` if it has
    /// not all arrived, or what is wrong with it.
    fn scan(&mut self, buffer: &[u8]) -> Result<Option<usize>, &'static str> {
        loop {
            let rest = &buffer[self.at..];
            let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") else {
                return Ok(None);
            };
            let Some((&kind, line)) = rest[..line_end].split_first() else {
                return Err("an empty line");
            };
            let header = line_end + 2;
            match kind {
                b'+' | b'-' | b':' => self.at += header,
                b'$' => {
                    let len = length(line)?;
                    let total = if len < 0 {
                        header
                    } else {
                        header + len as usize + 2
                    };
                    if rest.len() < total {
                        return Ok(None);
                    }
                    self.at += total;
                }
                b'*' => {
                    self.at += header;
                    let len = length(line)?;
                    if len > 0 {
                        self.open.push(len);
                        continue;
                    }
                }
                _ => return Err("an unknown type byte"),
            }
            // One element is complete: close the arrays it completes.
            loop {
                match self.open.last_mut() {
                    None => return Ok(Some(self.at)),
                    Some(left) => {
                        *left -= 1;
                        if *left > 0 {
                            break;
                        }
                        self.open.pop();
                    }
                }
            }
        }
    }
}

/// The length in a `$` or `*` header (-1 for nil).
fn length(line: &[u8]) -> Result<i64, &'static str> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|text| text.parse().ok())
        .filter(|len| *len >= -1)
        .ok_or("a bad length")
}

/// An error reply as redis-rs would report it (so that NOGROUP and the like
/// are told apart exactly as on other connections); `Ok` for anything else.
fn server_error(frame: &[u8]) -> Result<(), RedisError> {
    if frame.first() == Some(&b'-') {
        redis::parse_redis_value(frame)?.extract_error()?;
    }
    Ok(())
}

/// Decodes an XREADGROUP reply: nil when the block timed out, else
/// `[[stream, [[id, [field, value, ...]], ...]], ...]`. An entry deleted from
/// the stream while pending comes with nil fields and decodes with none.
fn stream_entries(frame: &Bytes) -> Result<Vec<StreamEntry>, StoreError> {
    server_error(frame).map_err(StoreError::redis(COMMAND))?;
    let (reply, _) = decode_range(frame)
        .map_err(|err| bad(COMMAND, err.to_string()))?
        .ok_or_else(|| bad(COMMAND, "an incomplete reply"))?;
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
                .map_err(|_| bad(COMMAND, "an entry id that is not UTF-8"))?;
            let fields = match parts.next() {
                None | Some(RangeFrame::Null) => Vec::new(),
                Some(fields) => pairs(COMMAND, array(fields)?, |item| {
                    Ok(string(frame, Some(item))?.to_vec())
                })?,
            };
            entries.push(StreamEntry { id, fields });
        }
    }
    Ok(entries)
}

fn array(frame: RangeFrame) -> Result<Vec<RangeFrame>, StoreError> {
    match frame {
        RangeFrame::Array(items) => Ok(items),
        other => Err(bad(COMMAND, format!("expected an array, got {other:?}"))),
    }
}

fn string(buffer: &[u8], frame: Option<RangeFrame>) -> Result<&[u8], StoreError> {
    match frame {
        Some(RangeFrame::BulkString((start, end)) | RangeFrame::SimpleString((start, end))) => {
            Ok(&buffer[start..end])
        }
        other => Err(bad(COMMAND, format!("expected a string, got {other:?}"))),
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
    fn a_reply_is_framed_whatever_pieces_it_arrives_in() {
        for piece in [1, 2, 3, 7, REPLY.len()] {
            let mut scanner = FrameScanner::default();
            let mut buffer = Vec::new();
            let mut found = None;
            for chunk in REPLY.chunks(piece) {
                assert_eq!(found, None, "framed before the end, pieces of {piece}");
                buffer.extend_from_slice(chunk);
                found = scanner.scan(&buffer).expect("valid");
            }
            assert_eq!(found, Some(REPLY.len()), "pieces of {piece}");
        }
    }

    #[test]
    fn back_to_back_replies_are_framed_one_at_a_time() {
        let mut buffer = b"*-1\r\n:5\r\n$-1\r\n*0\r\n-ERR no\r\n".to_vec();
        let mut lengths = Vec::new();
        loop {
            let mut scanner = FrameScanner::default();
            match scanner.scan(&buffer).expect("valid") {
                Some(len) => {
                    lengths.push(len);
                    buffer.drain(..len);
                }
                None => break,
            }
        }
        assert_eq!(lengths, [5, 4, 5, 4, 9]);
        assert!(buffer.is_empty());
    }

    #[test]
    fn garbage_is_an_error_not_a_hang() {
        assert!(FrameScanner::default().scan(b"?what\r\n").is_err());
        assert!(FrameScanner::default().scan(b"$x\r\n").is_err());
        assert!(FrameScanner::default().scan(b"*-2\r\n").is_err());
    }

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

    #[tokio::test]
    async fn reads_sent_before_the_last_handle_went_still_get_their_replies() {
        let (client, mut server) = tokio::io::duplex(4096);
        let conn = ReadConnection::start(client, Duration::from_secs(5));
        let first = conn.read(&redis::cmd("XREADGROUP"));
        let second = conn.read(&redis::cmd("XREADGROUP"));
        drop(conn);
        // Like Redis, answer only what has arrived.
        let asked = 2 * redis::cmd("XREADGROUP").get_packed_command().len();
        let mut requests = vec![0; asked];
        server
            .read_exact(&mut requests)
            .await
            .expect("both requests");
        server.write_all(REPLY).await.expect("reply");
        server.write_all(b"*-1\r\n").await.expect("reply");
        assert_eq!(first.await.expect("first is answered").len(), 2);
        assert!(second.await.expect("second is answered").is_empty());
    }

    #[tokio::test]
    async fn a_lost_socket_fails_every_waiting_read_as_transient() {
        let (client, server) = tokio::io::duplex(4096);
        let conn = ReadConnection::start(client, Duration::from_secs(5));
        let first = conn.read(&redis::cmd("XREADGROUP"));
        let second = conn.read(&redis::cmd("XREADGROUP"));
        drop(server);
        for read in [first.await, second.await] {
            let err = read.expect_err("the socket is gone");
            assert!(err.is_transient(), "{err}");
        }
        let later = conn.read(&redis::cmd("XREADGROUP")).await;
        assert!(later.expect_err("still gone").is_transient());
    }

    #[test]
    fn error_replies_keep_their_redis_code() {
        let err = stream_entries(&Bytes::from_static(b"-NOGROUP No such key\r\n"))
            .expect_err("an error reply");
        assert!(err.needs_prepare(), "{err}");
    }
}
