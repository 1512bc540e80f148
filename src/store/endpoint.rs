//! Where a queue lives and how to reach it: the Redis address, the
//! credentials and the TLS files, plus the key prefix and consumer group
//! that name the queue inside that Redis. Every connection the store opens,
//! pooled or its own, is made from one of these.

use std::path::PathBuf;

/// The queue to open: shared by every subcommand.
#[derive(Clone, PartialEq, Default)]
pub struct QueueSettings {
    /// Redis URL (`redis://`, `rediss://` for TLS, `unix://`). It may hold a
    /// password: print it only through [`super::redact_url`].
    pub redis_url: String,
    /// A password that overrides the URL's, so it need not appear in the
    /// URL (or in `ps`): from `REDIS_PASSWORD` or a password file.
    pub password: Option<String>,
    /// TLS settings; used when the URL is `rediss://`.
    pub tls: TlsSettings,
    /// Key prefix.
    pub prefix: String,
    /// Consumer group.
    pub group: String,
}

impl std::fmt::Debug for QueueSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueSettings")
            .field("redis_url", &super::redact_url(&self.redis_url))
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("tls", &self.tls)
            .field("prefix", &self.prefix)
            .field("group", &self.group)
            .finish()
    }
}

/// How a `rediss://` connection proves who it talks to, and who it is.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TlsSettings {
    /// PEM file of the certificate authorities the server's certificate must
    /// chain to; `None` for the system's roots.
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate, for servers with `tls-auth-clients yes`.
    pub cert: Option<PathBuf>,
    /// PEM private key of [`Self::cert`].
    pub key: Option<PathBuf>,
    /// Accept any server certificate: for self-signed test setups only.
    pub insecure_skip_verify: bool,
}
