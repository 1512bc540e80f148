//! A minimal pipelined Redis connection: the one the hot paths use, the
//! sender's reads and the audit's walks ([`super::ReadConnection`]), the
//! sender's reports ([`super::ReportConnection`]) and the producer's batch
//! writes ([`super::BatchConnection`]). Cold commands go through redis-rs.
//!
//! Why: building redis-rs values for every reply would be most of a busy
//! sender's CPU (its big XREADGROUP replies) and a large part of the
//! producer's (a reply per queued command). Here a
//! reply is only framed (found where it ends) as its bytes arrive, by a
//! [`FrameScanner`] that remembers where it stopped, so a big reply that
//! arrives in many pieces is scanned once; the caller reads what it needs
//! with the store's one decoder (`frame/decode.rs`).
//!
//! A request is handed to the task that owns the socket in the call that
//! makes it ([`RespConnection::send`] does not wait), so requests reach
//! Redis in the order they are made, are answered in that order, and several
//! can be on the wire at once. A request may carry several commands (a
//! pipeline); its reply is the bytes of their replies, together.
//!
//! The scanner also drops strings over [`MAX_VALUE_BYTES`] as their bytes
//! arrive, so a reply never holds one whole.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use redis::{ConnectionInfo, RedisError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use std::sync::Arc;

use super::StoreError;
use super::frame::{FrameScanner, MAX_VALUE_BYTES, server_error};
use super::topology::Topology;
use super::transport::Endpoint;

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
    /// Told of redirections and lost connections, so that the next
    /// connection goes where the partition is served now.
    topology: Option<Arc<Topology>>,
}

impl RespConnection {
    /// Opens a connection to `endpoint` (TCP, TLS or a Unix socket), logs in
    /// and selects the database. Replies may take up to `reply_timeout`.
    /// `topology` learns of the redirections and failures it meets.
    pub(super) async fn open(
        endpoint: &Endpoint,
        connect_timeout: Duration,
        reply_timeout: Duration,
        topology: Option<Arc<Topology>>,
    ) -> Result<Self, StoreError> {
        let stream = tokio::time::timeout(connect_timeout, endpoint.connect())
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))
            .and_then(|opened| opened)
            .map_err(|err| {
                if let Some(topology) = &topology {
                    topology.lost_node();
                }
                endpoint.connect_error(err)
            })?;
        let mut conn = Self::start(stream, reply_timeout);
        conn.topology = topology;
        // With TLS 1.3 Redis refuses a client certificate after the
        // handshake: the first reply tells.
        conn.log_in(endpoint.info())
            .await
            .map_err(|err| endpoint.classify(err))?;
        Ok(conn)
    }

    /// The topology this connection tells of redirections, if any.
    pub(super) fn topology(&self) -> Option<Arc<Topology>> {
        self.topology.clone()
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
            topology: None,
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
        let topology = self.topology.clone();
        async move {
            let reply = match sent {
                Err(_) => Err(connection_lost()),
                Ok(()) => match tokio::time::timeout(reply_timeout, answer).await {
                    Ok(Ok(reply)) => reply,
                    Ok(Err(_)) => Err(connection_lost()),
                    Err(_) => Err(RedisError::from(std::io::Error::from(
                        std::io::ErrorKind::TimedOut,
                    ))),
                },
            };
            if let Some(topology) = topology {
                match &reply {
                    Ok(bytes) => topology.saw_reply(bytes),
                    Err(err) => topology.saw(err),
                }
            }
            reply.map_err(StoreError::redis(command))
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
    let mut scanner = FrameScanner::new(MAX_VALUE_BYTES);
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
    async fn a_reply_with_a_long_string_comes_with_the_marker_in_its_place() {
        let (client, mut server) = tokio::io::duplex(4096);
        let conn = RespConnection::start(client, Duration::from_secs(5));
        let read = conn.send_cmd("XRANGE", &redis::cmd("XRANGE"));
        let long = 1024 * 1024;
        let mut reply = format!("*2\r\n$3\r\n1-0\r\n${long}\r\n").into_bytes();
        reply.resize(reply.len() + long, b'x');
        reply.extend_from_slice(b"\r\n");
        // The duplex pipe carries it in pieces of at most 4 KiB.
        server.write_all(&reply).await.expect("reply");
        let got = read.await.expect("answered");
        assert_eq!(
            &got[..],
            format!("*2\r\n$3\r\n1-0\r\n-CLIPPED {long}\r\n").as_bytes()
        );
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
