//! A minimal Redis connection for the two hot paths whose replies redis-rs
//! parses too slowly: the sender's reads ([`super::ReadConnection`]) and the
//! producer's batch writes ([`super::BatchConnection`]).
//!
//! Why: a profile of a sender at full load put over half of its CPU in
//! redis-rs's reply parser (`combine`): 3.3 µs per XREADGROUP entry,
//! measured on a 1,000-entry reply; and a producer using `MULTI` spent
//! 2.7 µs per message parsing the replies of its queued commands. Here a
//! reply is only framed (found where it ends) as its bytes arrive, by a
//! [`FrameScanner`] that remembers where it stopped, so a big reply that
//! arrives in many pieces is scanned once; the caller decodes what it needs.
//! Every other command goes through redis-rs.
//!
//! Requests are written in the order they are made and answered in that
//! order, so several can be on the wire at once. A request may carry several
//! commands (a pipeline); its reply is the bytes of their replies, together.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use redis::{ConnectionAddr, ConnectionInfo, RedisError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::StoreError;
use super::reply::bad;

/// Room kept free in the read buffer; a read of 1,000 entries is ~170 KB.
const READ_CHUNK: usize = 64 * 1024;

/// One request: commands as RESP bytes, how many replies they get, and where
/// those replies go.
struct Request {
    packed: Bytes,
    replies: usize,
    reply: oneshot::Sender<Result<Bytes, RedisError>>,
}

/// A request sent, its replies awaited: how many, and who waits.
struct Waiting {
    replies: usize,
    reply: oneshot::Sender<Result<Bytes, RedisError>>,
}

/// A connection to Redis. Cheap to clone; once the last clone is dropped,
/// the socket closes as soon as the requests already sent are answered.
#[derive(Clone, Debug)]
pub(super) struct RespConnection {
    requests: mpsc::UnboundedSender<Request>,
    /// How long a reply may take.
    reply_timeout: Duration,
}

impl RespConnection {
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
                    "sms-alerts' own connections support TCP and Unix sockets only",
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
    pub(super) fn start<S>(stream: S, reply_timeout: Duration) -> Self
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
        let reply = self.send_cmd(command, cmd).await?;
        server_error(&reply).map_err(StoreError::redis(command))
    }

    /// Sends `cmd` now and returns a future of its reply's raw bytes.
    pub(super) fn send_cmd(
        &self,
        command: &'static str,
        cmd: &redis::Cmd,
    ) -> impl Future<Output = Result<Bytes, StoreError>> + Send + 'static + use<> {
        self.send(command, Bytes::from(cmd.get_packed_command()), 1)
    }

    /// Sends `packed`, RESP commands that get `replies` replies, now (so
    /// requests reach Redis in the order they are made) and returns a future
    /// of those replies' raw bytes. `command` names the request in errors.
    pub(super) fn send(
        &self,
        command: &'static str,
        packed: Bytes,
        replies: usize,
    ) -> impl Future<Output = Result<Bytes, StoreError>> + Send + 'static + use<> {
        let (reply, answer) = oneshot::channel();
        let sent = self.requests.send(Request {
            packed,
            replies,
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
}

fn connection_lost() -> RedisError {
    RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset))
}

/// Owns the socket: writes requests in order and hands the replies to the
/// oldest request waiting, once all of its replies have come. When every
/// handle is gone it still answers the requests already sent (for up to
/// `reply_timeout`), as a redis-rs connection does: a dispatcher that drops
/// its read connection after an error on one read must not fail the reads it
/// sent since, nor a producer the batches it committed. If the socket fails,
/// the requests still waiting get an error.
async fn drive<S>(
    stream: S,
    mut incoming: mpsc::UnboundedReceiver<Request>,
    reply_timeout: Duration,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut socket_in, mut socket_out) = tokio::io::split(stream);
    let mut waiting: VecDeque<Waiting> = VecDeque::new();
    let mut buffer = BytesMut::with_capacity(READ_CHUNK);
    let mut scanner = FrameScanner::default();
    // Replies of the oldest waiting request that are complete in `buffer`.
    let mut complete = 0;
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
                waiting.push_back(Waiting { replies: request.replies, reply: request.reply });
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
                    if let Err(err) = hand_out(&mut buffer, &mut scanner, &mut complete, &mut waiting) {
                        break err;
                    }
                }
            }
        }
    };
    tracing::debug!(error = %failure, "connection closed");
    for waiting in waiting {
        let _ = waiting.reply.send(Err(clone_error(&failure)));
    }
}

/// Frames the replies in `buffer` and hands each waiting request its replies
/// as soon as all of them are there.
fn hand_out(
    buffer: &mut BytesMut,
    scanner: &mut FrameScanner,
    complete: &mut usize,
    waiting: &mut VecDeque<Waiting>,
) -> Result<(), RedisError> {
    loop {
        let Some(end) = scanner.scan(buffer).map_err(protocol_error)? else {
            return Ok(());
        };
        let Some(oldest) = waiting.front() else {
            return Err(protocol_error("a reply nobody asked for"));
        };
        *complete += 1;
        if *complete < oldest.replies {
            continue;
        }
        let replies = buffer.split_to(end).freeze();
        scanner.restart();
        *complete = 0;
        if let Some(oldest) = waiting.pop_front() {
            // The caller may have timed out; nothing to do.
            let _ = oldest.reply.send(Ok(replies));
        }
    }
}

fn protocol_error(detail: &str) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("bad reply from Redis: {detail}"),
    ))
}

/// `RedisError` is not `Clone`; the waiting requests get the same kind and text.
fn clone_error(err: &RedisError) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        err.to_string(),
    ))
}

/// Finds where each complete RESP2 reply ends in a buffer that grows at its
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
    /// Starts over at the front of the buffer (after the caller took the
    /// replies scanned so far), keeping the array stack's memory.
    fn restart(&mut self) {
        self.at = 0;
        self.open.clear();
    }

    /// Where the next complete reply in `buffer` ends (scanning on from the
    /// end of the last one found), `None` if it has not all arrived, or what
    /// is wrong with it.
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

/// The replies in `bytes`, one slice each, for a caller that only needs to
/// look at the first bytes of each (a status, an error, a count).
pub(super) fn replies<'a>(
    command: &'static str,
    bytes: &'a [u8],
) -> impl Iterator<Item = Result<&'a [u8], StoreError>> + 'a {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at == bytes.len() {
            return None;
        }
        let found = FrameScanner::default().scan(&bytes[at..]);
        Some(match found {
            Ok(Some(len)) => {
                let reply = &bytes[at..at + len];
                at += len;
                Ok(reply)
            }
            Ok(None) => {
                at = bytes.len();
                Err(bad(command, "an incomplete reply"))
            }
            Err(detail) => {
                at = bytes.len();
                Err(bad(command, detail))
            }
        })
    })
}

/// The elements of an array reply (`*<n>` then its elements), or `None` for a
/// nil array. Anything else is an error.
pub(super) fn array_elements<'a>(
    command: &'static str,
    reply: &'a [u8],
) -> Result<Option<&'a [u8]>, StoreError> {
    let header_end = reply
        .windows(2)
        .position(|w| w == b"\r\n")
        .ok_or_else(|| bad(command, "an incomplete reply"))?;
    match reply.split_first() {
        Some((b'*', _)) if &reply[1..header_end] == b"-1" => Ok(None),
        Some((b'*', _)) => Ok(Some(&reply[header_end + 2..])),
        _ => Err(bad(command, "expected an array")),
    }
}

/// The bytes of a bulk string reply (`$<n>` then `n` bytes). Anything else,
/// nil included, is an error.
pub(super) fn bulk_string<'a>(
    command: &'static str,
    reply: &'a [u8],
) -> Result<&'a [u8], StoreError> {
    let header_end = reply
        .windows(2)
        .position(|w| w == b"\r\n")
        .ok_or_else(|| bad(command, "an incomplete reply"))?;
    let len = match reply.split_first() {
        Some((b'$', _)) => length(&reply[1..header_end]).map_err(|detail| bad(command, detail))?,
        _ => return Err(bad(command, "expected a string")),
    };
    usize::try_from(len)
        .ok()
        .and_then(|len| reply.get(header_end + 2..header_end + 2 + len))
        .ok_or_else(|| bad(command, "expected a string"))
}

/// An error reply as redis-rs would report it (so that NOGROUP and the like
/// are told apart exactly as on other connections); `Ok` for anything else.
pub(super) fn server_error(reply: &[u8]) -> Result<(), RedisError> {
    if reply.first() == Some(&b'-') {
        redis::parse_redis_value(reply)?.extract_error()?;
    }
    Ok(())
}

/// Appends one command, its arguments as RESP bulk strings, to `out`.
pub(super) fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    let mut number = itoa::Buffer::new();
    out.push(b'*');
    out.extend_from_slice(number.format(args.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    for arg in args {
        out.push(b'$');
        out.extend_from_slice(number.format(arg.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An XREADGROUP reply of two entries, the second deleted (nil fields).
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
        let buffer = b"*-1\r\n:5\r\n$-1\r\n*0\r\n-ERR no\r\n";
        let mut scanner = FrameScanner::default();
        let mut ends = Vec::new();
        while let Some(end) = scanner.scan(buffer).expect("valid") {
            ends.push(end);
        }
        assert_eq!(ends, [5, 9, 14, 18, 27]);
        let lengths: Vec<usize> = replies("TEST", buffer)
            .map(|reply| reply.expect("valid").len())
            .collect();
        assert_eq!(lengths, [5, 4, 5, 4, 9]);
    }

    #[test]
    fn garbage_is_an_error_not_a_hang() {
        assert!(FrameScanner::default().scan(b"?what\r\n").is_err());
        assert!(FrameScanner::default().scan(b"$x\r\n").is_err());
        assert!(FrameScanner::default().scan(b"*-2\r\n").is_err());
        assert!(
            replies("TEST", b":1\r\n$5\r\nab")
                .nth(1)
                .expect("a second")
                .is_err()
        );
    }

    #[test]
    fn arrays_give_their_elements_and_nil_arrays_none() {
        assert_eq!(
            array_elements("TEST", b"*2\r\n:1\r\n+OK\r\n").expect("an array"),
            Some(&b":1\r\n+OK\r\n"[..])
        );
        assert_eq!(array_elements("TEST", b"*-1\r\n").expect("nil"), None);
        assert!(array_elements("TEST", b"+OK\r\n").is_err());
    }

    #[test]
    fn commands_encode_as_resp_bulk_strings() {
        let mut out = Vec::new();
        encode(&mut out, &[b"XADD", b"s", b"*", b""]);
        assert_eq!(out, b"*4\r\n$4\r\nXADD\r\n$1\r\ns\r\n$1\r\n*\r\n$0\r\n\r\n");
    }

    #[tokio::test]
    async fn a_request_of_several_commands_gets_all_their_replies_together() {
        let (client, mut server) = tokio::io::duplex(4096);
        let conn = RespConnection::start(client, Duration::from_secs(5));
        let pair = conn.send("TEST", Bytes::from_static(b"two commands"), 2);
        let single = conn.send_cmd("PING", &redis::cmd("PING"));
        let mut asked = vec![0; b"two commands".len()];
        server.read_exact(&mut asked).await.expect("request");
        server.write_all(b"+OK\r\n").await.expect("reply");
        server.write_all(b":1\r\n+PONG\r\n").await.expect("reply");
        assert_eq!(&pair.await.expect("both replies")[..], b"+OK\r\n:1\r\n");
        assert_eq!(&single.await.expect("its reply")[..], b"+PONG\r\n");
    }

    #[tokio::test]
    async fn requests_sent_before_the_last_handle_went_still_get_their_replies() {
        let (client, mut server) = tokio::io::duplex(4096);
        let conn = RespConnection::start(client, Duration::from_secs(5));
        let first = conn.send_cmd("XREADGROUP", &redis::cmd("XREADGROUP"));
        let second = conn.send_cmd("XREADGROUP", &redis::cmd("XREADGROUP"));
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
        assert_eq!(&first.await.expect("first is answered")[..], REPLY);
        assert_eq!(&second.await.expect("second is answered")[..], b"*-1\r\n");
    }

    #[tokio::test]
    async fn a_lost_socket_fails_every_waiting_request_as_transient() {
        let (client, server) = tokio::io::duplex(4096);
        let conn = RespConnection::start(client, Duration::from_secs(5));
        let first = conn.send_cmd("XREADGROUP", &redis::cmd("XREADGROUP"));
        let second = conn.send_cmd("XREADGROUP", &redis::cmd("XREADGROUP"));
        drop(server);
        for read in [first.await, second.await] {
            let err = read.expect_err("the socket is gone");
            assert!(err.is_transient(), "{err}");
        }
        let later = conn.send_cmd("XREADGROUP", &redis::cmd("XREADGROUP")).await;
        assert!(later.expect_err("still gone").is_transient());
    }
}
