//! TLS for every connection: the queue's TLS files read once and turned
//! into redis-rs's certificates and our own connections' rustls
//! configuration, the verifier behind `insecure_skip_verify`, and the
//! failures recognized as certificate problems.
//!
//! Why rustls with the `ring` provider, installed as the process default
//! once: redis-rs builds its TLS configuration from the process default, and
//! rustls panics when it finds no provider, or two.

use std::io;
use std::path::Path;
use std::sync::{Arc, Once};

use redis::{ClientTlsConfig, TlsCertificates};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{AlertDescription, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::{StoreError, TlsSettings};

/// Installs `ring` as rustls's process-wide provider, once. Another one
/// installed first (by an embedding program) is left in place.
pub(super) fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The TLS files of a queue, read once (PEM).
pub(super) struct TlsFiles {
    ca: Option<Vec<u8>>,
    client: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsFiles {
    pub(super) fn read(tls: &TlsSettings) -> Result<Self, StoreError> {
        let ca = tls.ca_cert.as_deref().map(read_file).transpose()?;
        let client = match (&tls.cert, &tls.key) {
            (Some(cert), Some(key)) => Some((read_file(cert)?, read_file(key)?)),
            (None, None) => None,
            (Some(cert), None) => {
                return Err(StoreError::InvalidTls(format!(
                    "client certificate '{}' given without its key",
                    cert.display()
                )));
            }
            (None, Some(key)) => {
                return Err(StoreError::InvalidTls(format!(
                    "client key '{}' given without its certificate",
                    key.display()
                )));
            }
        };
        Ok(Self { ca, client })
    }

    pub(super) fn for_redis_rs(&self) -> TlsCertificates {
        TlsCertificates {
            client_tls: self.client.as_ref().map(|(cert, key)| ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.clone(),
            }),
            root_cert: self.ca.clone(),
        }
    }

    /// Our connections' rustls configuration: Redis's certificate checked
    /// against the CA file, else the system's roots, or not at all when
    /// `insecure`; the client certificate presented when there is one.
    pub(super) fn client_config(&self, insecure: bool) -> Result<rustls::ClientConfig, StoreError> {
        let invalid = |err: rustls::Error| StoreError::InvalidTls(err.to_string());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(invalid)?;
        let builder = if insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        } else {
            builder.with_root_certificates(self.roots()?)
        };
        match &self.client {
            None => Ok(builder.with_no_client_auth()),
            Some((cert, key)) => {
                let chain = CertificateDer::pem_slice_iter(cert)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|err| pem_error("client certificate", &err))?;
                let key = PrivateKeyDer::from_pem_slice(key)
                    .map_err(|err| pem_error("client key", &err))?;
                builder.with_client_auth_cert(chain, key).map_err(invalid)
            }
        }
    }

    fn roots(&self) -> Result<RootCertStore, StoreError> {
        let mut roots = RootCertStore::empty();
        match &self.ca {
            Some(pem) => {
                for cert in CertificateDer::pem_slice_iter(pem) {
                    let cert = cert.map_err(|err| pem_error("CA certificate", &err))?;
                    roots
                        .add(cert)
                        .map_err(|err| StoreError::InvalidTls(format!("CA certificate: {err}")))?;
                }
                if roots.is_empty() {
                    return Err(StoreError::InvalidTls(
                        "the CA file holds no certificate".to_owned(),
                    ));
                }
            }
            // Unreadable system certificates are skipped: a Redis whose CA
            // is missing fails as a certificate problem, which names it.
            None => {
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            }
        }
        Ok(roots)
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path)
        .map_err(|err| StoreError::InvalidTls(format!("cannot read '{}': {err}", path.display())))
}

fn pem_error(what: &str, err: &rustls::pki_types::pem::Error) -> StoreError {
    StoreError::InvalidTls(format!("{what} is not valid PEM: {err}"))
}

/// Accepts any server certificate (signatures in the handshake are still
/// checked, so the connection is encrypted, but to an unverified peer).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Alerts a server sends when it rejects our certificate, or its absence.
const CERTIFICATE_ALERTS: &[AlertDescription] = &[
    AlertDescription::BadCertificate,
    AlertDescription::UnsupportedCertificate,
    AlertDescription::CertificateRevoked,
    AlertDescription::CertificateExpired,
    AlertDescription::CertificateUnknown,
    AlertDescription::UnknownCA,
    AlertDescription::CertificateRequired,
];

/// Why `err` is a certificate problem (Redis's certificate rejected, or
/// ours rejected by Redis), if it is one.
///
/// rustls's error is found in the chain of our own connections' errors;
/// redis-rs keeps only its text (its error hides the `io::Error` that
/// wraps it), so that text is matched too: `rustls_error_texts_are_matched`
/// pins it.
pub(super) fn certificate_problem(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return describe(tls);
        }
        // io::Error's `source` skips the error it wraps.
        if let Some(inner) = err.downcast_ref::<io::Error>().and_then(io::Error::get_ref)
            && let Some(found) = certificate_problem(inner)
        {
            return Some(found);
        }
        next = err.source();
    }
    let text = err.to_string();
    if let Some(at) = text.find("invalid peer certificate") {
        return Some(text[at..].to_owned());
    }
    if text.contains("peer sent no certificates") {
        return describe(&rustls::Error::NoCertificatesPresented);
    }
    CERTIFICATE_ALERTS
        .iter()
        .find(|alert| text.contains(&format!("received fatal alert: {alert:?}")))
        .and_then(|alert| describe(&rustls::Error::AlertReceived(*alert)))
}

fn describe(err: &rustls::Error) -> Option<String> {
    match err {
        rustls::Error::InvalidCertificate(_) => Some(err.to_string()),
        rustls::Error::NoCertificatesPresented => Some("Redis presented no certificate".to_owned()),
        rustls::Error::AlertReceived(alert) if CERTIFICATE_ALERTS.contains(alert) => Some(format!(
            "Redis refused our client certificate, or its absence ({err})"
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rustls_error_texts_are_matched() {
        let unknown = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        // redis-rs keeps the text only: the same error, seen as text.
        let as_text = io::Error::other(format!("connect failed: {unknown}"));
        assert_eq!(
            certificate_problem(&as_text).as_deref(),
            Some("invalid peer certificate: UnknownIssuer")
        );
        let wrapped = io::Error::new(io::ErrorKind::InvalidData, unknown);
        assert_eq!(
            certificate_problem(&wrapped).as_deref(),
            Some("invalid peer certificate: UnknownIssuer")
        );
        let alert = rustls::Error::AlertReceived(AlertDescription::CertificateRequired);
        let reason = certificate_problem(&io::Error::other(alert.to_string()))
            .expect("a refused client certificate is a certificate problem");
        assert!(reason.contains("CertificateRequired"), "{reason}");
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(certificate_problem(&reset), None);
        let other = rustls::Error::AlertReceived(AlertDescription::HandshakeFailure);
        assert_eq!(certificate_problem(&io::Error::other(other)), None);
    }
}
