//! How the store reaches Redis: a queue's address, password and TLS files,
//! turned once into what both kinds of connection need. redis-rs (the pool)
//! gets a `ConnectionInfo` carrying the password
//! and the certificates; our own connection (`resp.rs`) gets a [`Transport`]:
//! TCP, a Unix socket, or TLS over TCP with a rustls configuration built
//! from the same files (`tls.rs`), so both verify Redis the same way.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::tls::{TlsFiles, certificate_problem, install_crypto_provider};
use super::{QueueSettings, StoreError, TlsSettings, redact_url};

/// Where and how to connect, for redis-rs and for our own connections.
pub(super) struct Endpoint {
    /// redis-rs's view: the password override and the certificates applied.
    info: ConnectionInfo,
    /// For `rediss://` only: our connections' TLS configuration.
    tls: Option<TlsConnector>,
    /// The URL with its password redacted, for messages.
    url: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Only the redacted URL: `info` holds the password.
        f.debug_struct("Endpoint")
            .field("url", &self.url)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Endpoint {
    /// Parses the URL, applies the password override, and for `rediss://`
    /// reads the TLS files once. Fails with [`StoreError::InvalidUrl`] or
    /// [`StoreError::InvalidTls`].
    pub(super) fn new(queue: &QueueSettings) -> Result<Self, StoreError> {
        install_crypto_provider();
        let url = redact_url(&queue.redis_url);
        let invalid_url = |reason: String| StoreError::InvalidUrl {
            url: url.clone(),
            reason,
        };
        let mut info = queue
            .redis_url
            .as_str()
            .into_connection_info()
            .map_err(|err| invalid_url(err.to_string()))?;
        // No CLIENT SETINFO on connect: one command less for the ACL rule
        // (see `acl`), the same on every Redis version.
        let mut settings = info.redis_settings().clone().set_skip_set_lib_name();
        if let Some(password) = &queue.password {
            settings = settings.set_password(password);
        }
        info = info.set_redis_settings(settings);
        let tls = match info.addr().clone() {
            ConnectionAddr::TcpTls { host, port, .. } => {
                let files = TlsFiles::read(&queue.tls)?;
                let addr = ConnectionAddr::TcpTls {
                    host,
                    port,
                    insecure: queue.tls.insecure_skip_verify,
                    tls_params: None,
                };
                info = redis::Client::build_with_tls(info.set_addr(addr), files.for_redis_rs())
                    .map_err(|err| StoreError::InvalidTls(err.to_string()))?
                    .get_connection_info()
                    .clone();
                let config = files.client_config(queue.tls.insecure_skip_verify)?;
                Some(TlsConnector::from(Arc::new(config)))
            }
            _ if queue.tls != TlsSettings::default() => {
                return Err(StoreError::InvalidTls(format!(
                    "TLS settings were given but {url} is not a rediss:// URL"
                )));
            }
            _ => None,
        };
        Ok(Self { info, tls, url })
    }

    /// The same server settings (password, TLS files) for another server
    /// of the same deployment, e.g. a cluster node named by `CLUSTER SLOTS`.
    pub(super) fn at(&self, host: &str, port: u16) -> Self {
        let addr = match self.info.addr() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(host.to_owned(), port),
        };
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        Self {
            info: self.info.clone().set_addr(addr),
            tls: self.tls.clone(),
            url: format!("{scheme}://{host}:{port}"),
        }
    }

    /// The host and port of a TCP or TLS endpoint.
    pub(super) fn host_port(&self) -> Option<(&str, u16)> {
        match self.info.addr() {
            ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
                Some((host.as_str(), *port))
            }
            _ => None,
        }
    }

    /// redis-rs's connection info (it holds the password: never print it).
    pub(super) fn info(&self) -> &ConnectionInfo {
        &self.info
    }

    /// The URL with its password redacted.
    pub(super) fn url(&self) -> &str {
        &self.url
    }

    /// Opens the socket, and for `rediss://` completes the TLS handshake.
    pub(super) async fn connect(&self) -> io::Result<Transport> {
        match (self.info.addr(), &self.tls) {
            (ConnectionAddr::Tcp(host, port), _) => {
                let stream = TcpStream::connect((host.as_str(), *port)).await?;
                stream.set_nodelay(true)?;
                Ok(Transport::Tcp(stream))
            }
            (ConnectionAddr::TcpTls { host, port, .. }, Some(tls)) => {
                let name = ServerName::try_from(host.clone())
                    .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
                let stream = TcpStream::connect((host.as_str(), *port)).await?;
                stream.set_nodelay(true)?;
                let stream = tls.connect(name, stream).await?;
                Ok(Transport::Tls(Box::new(stream)))
            }
            #[cfg(unix)]
            (ConnectionAddr::Unix(path), _) => Ok(Transport::Unix(
                tokio::net::UnixStream::connect(path).await?,
            )),
            _ => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "sms-alerts' own connections support TCP, TLS and Unix sockets only",
            )),
        }
    }

    /// `err` as [`StoreError::Certificate`] when it is a certificate
    /// problem, else as it is.
    pub(super) fn classify(&self, err: StoreError) -> StoreError {
        match &err {
            StoreError::Redis { source, .. } => match certificate_problem(source) {
                Some(reason) => StoreError::Certificate {
                    url: self.url.clone(),
                    reason,
                },
                None => err,
            },
            _ => err,
        }
    }

    /// A failure to open a connection, as a [`StoreError`].
    pub(super) fn connect_error(&self, err: io::Error) -> StoreError {
        match certificate_problem(&err) {
            Some(reason) => StoreError::Certificate {
                url: self.url.clone(),
                reason,
            },
            None => StoreError::redis("connect")(redis::RedisError::from(err)),
        }
    }
}

/// A connection's byte stream: plain TCP, a Unix socket, or TLS over TCP.
pub(super) enum Transport {
    /// `redis://`.
    Tcp(TcpStream),
    /// `unix://`.
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
    /// `rediss://`; boxed, it is much larger than the others.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(stream) => Pin::new(stream).poll_read(cx, buf),
            #[cfg(unix)]
            Self::Unix(stream) => Pin::new(stream).poll_read(cx, buf),
            Self::Tls(stream) => {
                // rustls may keep the last records of a write when the
                // socket was full, until a flush; the connection's task
                // writes without flushing but polls its reads all the time,
                // so they go out from here.
                if let Poll::Ready(Err(err)) = Pin::new(stream.as_mut()).poll_flush(cx) {
                    return Poll::Ready(Err(err));
                }
                Pin::new(stream.as_mut()).poll_read(cx, buf)
            }
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(stream) => Pin::new(stream).poll_write(cx, buf),
            #[cfg(unix)]
            Self::Unix(stream) => Pin::new(stream).poll_write(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(stream) => Pin::new(stream).poll_flush(cx),
            #[cfg(unix)]
            Self::Unix(stream) => Pin::new(stream).poll_flush(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(stream) => Pin::new(stream).poll_shutdown(cx),
            #[cfg(unix)]
            Self::Unix(stream) => Pin::new(stream).poll_shutdown(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(url: &str, tls: TlsSettings) -> QueueSettings {
        QueueSettings {
            redis_url: url.to_owned(),
            tls,
            ..QueueSettings::default()
        }
    }

    #[test]
    fn tls_settings_need_a_rediss_url_and_whole_key_pairs() {
        let insecure = TlsSettings {
            insecure_skip_verify: true,
            ..TlsSettings::default()
        };
        let err = Endpoint::new(&queue("redis://127.0.0.1:1", insecure)).expect_err("plain URL");
        assert!(matches!(err, StoreError::InvalidTls(_)), "{err}");
        let half = TlsSettings {
            cert: Some("client.pem".into()),
            ..TlsSettings::default()
        };
        let err = Endpoint::new(&queue("rediss://127.0.0.1:1", half)).expect_err("no key");
        assert!(err.to_string().contains("client.pem"), "{err}");
        let missing = TlsSettings {
            ca_cert: Some("/nonexistent/ca.pem".into()),
            ..TlsSettings::default()
        };
        let err = Endpoint::new(&queue("rediss://127.0.0.1:1", missing)).expect_err("no file");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn the_password_overrides_the_urls_and_never_shows() {
        let settings = QueueSettings {
            redis_url: "redis://app:old@127.0.0.1:6379".to_owned(),
            password: Some("s3cret".to_owned()),
            ..QueueSettings::default()
        };
        let endpoint = Endpoint::new(&settings).expect("valid");
        let redis = endpoint.info().redis_settings();
        assert_eq!(redis.username(), Some("app"));
        assert_eq!(redis.password(), Some("s3cret"));
        let shown = format!("{endpoint:?} {}", endpoint.url());
        assert!(
            !shown.contains("s3cret") && !shown.contains("old"),
            "{shown}"
        );
    }
}

#[cfg(test)]
mod big_writes {
    use std::time::Duration;

    use bytes::Bytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::TlsAcceptor;

    use super::super::resp::RespConnection;
    use super::*;

    /// A TLS server on loopback for `localhost` that reads `expect` bytes
    /// slowly, then answers `+OK`; its port and CA (PEM).
    async fn slow_tls_server(expect: usize) -> (u16, String) {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_pem = ca.self_signed(&ca_key).expect("CA cert").pem();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("cert");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("server config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listen");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.expect("accept");
            let mut tls = TlsAcceptor::from(Arc::new(config))
                .accept(socket)
                .await
                .expect("handshake");
            let mut chunk = vec![0; 16 * 1024];
            let mut got = 0;
            while got < expect {
                // Slow enough that the client's socket fills up.
                tokio::time::sleep(Duration::from_micros(200)).await;
                got += tls.read(&mut chunk).await.expect("read");
            }
            tls.write_all(b"+OK\r\n").await.expect("reply");
            tls.flush().await.expect("flush");
            // Hold the connection until the client is done.
            let _ = tls.read(&mut chunk).await;
        });
        (port, ca_pem)
    }

    #[tokio::test]
    async fn a_large_request_reaches_a_slow_reader_whole_over_tls() {
        let size = 8 * 1024 * 1024;
        let (port, ca) = slow_tls_server(size).await;
        let dir = tempfile::tempdir().expect("temp dir");
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca).expect("CA file");
        let endpoint = Endpoint::new(&QueueSettings {
            redis_url: format!("rediss://localhost:{port}"),
            tls: TlsSettings {
                ca_cert: Some(ca_path),
                ..TlsSettings::default()
            },
            ..QueueSettings::default()
        })
        .expect("endpoint");
        let timeout = Duration::from_secs(20);
        let conn = RespConnection::open(&endpoint, timeout, timeout, None)
            .await
            .expect("connects");
        let reply = conn
            .send("BIG", Bytes::from(vec![b'x'; size]), 1)
            .await
            .expect("the whole request arrives and is answered");
        assert_eq!(&reply[..], b"+OK\r\n");
    }
}
