//! TLS for both sides (rustls, with the `ring` provider), and the stream
//! type that is plain TCP or TLS.
//!
//! - Clients: a certificate and key from PEM files; `SSLRequest` and
//!   direct TLS (PostgreSQL 17's `sslnegotiation=direct`, ALPN
//!   `postgresql`) are both accepted.
//! - Upstream: libpq's modes ([`crate::config::UpstreamTls`]). The server's
//!   certificate is not checked ([`Verification::None`]: `allow`, `prefer`,
//!   `require` without `ca_file`), its chain is checked against the CAs of
//!   `ca_file` (`verify-ca`, and `require` with `ca_file`), or the chain and
//!   the host name (`verify-full`), by webpki.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::config::{RootCerts, Verification};

/// The ALPN protocol name of PostgreSQL's direct TLS.
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The gateway's certificate and key, which a reload replaces: handshakes
/// that begin afterwards present the new pair, connections already up
/// keep theirs.
#[derive(Debug)]
pub struct ServerCert {
    current: std::sync::RwLock<Arc<CertifiedKey>>,
}

impl ServerCert {
    /// Reads the pair again; a pair that does not load is refused and the
    /// one in use is kept.
    pub fn reload(&self, cert: &Path, key: &Path) -> Result<(), String> {
        let pair = certified_key(cert, key)?;
        match self.current.write() {
            Ok(mut c) => *c = pair,
            Err(poisoned) => *poisoned.into_inner() = pair,
        }
        Ok(())
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match self.current.read() {
            Ok(c) => Some(Arc::clone(&c)),
            Err(poisoned) => Some(Arc::clone(&poisoned.into_inner())),
        }
    }
}

/// A certificate chain and its private key from PEM files, checked to
/// make a pair; errors name the configuration key and the file.
fn certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let shown = cert.display();
    let bytes = std::fs::read(cert).map_err(|e| format!("[tls] cert {shown}: {e}"))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("[tls] cert {shown}: not a PEM file of certificates: {e}"))?;
    if certs.is_empty() {
        return Err(format!("[tls] cert {shown}: no certificate in the file (a PEM \"BEGIN CERTIFICATE\" block)"));
    }
    let key_bytes = std::fs::read(key).map_err(|e| format!("[tls] key {}: {e}", key.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes)
        .map_err(|e| format!("[tls] key {}: no PEM private key in the file: {e}", key.display()))?;
    let pair = CertifiedKey::from_der(certs, key, &provider())
        .map_err(|e| format!("[tls] cert and key do not make a pair: {e}"))?;
    Ok(Arc::new(pair))
}

/// The server-side TLS configuration from PEM files, and the handle that
/// reloads its certificate; errors name the configuration key (`[tls]
/// cert`, `[tls] key`) and the file.
pub fn server_config(cert: &Path, key: &Path) -> Result<(Arc<ServerConfig>, Arc<ServerCert>), String> {
    let served = Arc::new(ServerCert { current: std::sync::RwLock::new(certified_key(cert, key)?) });
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(&served) as Arc<dyn ResolvesServerCert>);
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok((Arc::new(config), served))
}

/// The upstream TLS configuration for `verification`, with the CAs of
/// `roots` (which `Chain` and `ChainAndName` need).
pub fn client_config(verification: Verification, roots: Option<&RootCerts>) -> Result<Arc<ClientConfig>, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let roots = match (verification, roots) {
        (Verification::None, _) => None,
        (_, Some(roots)) => Some(Arc::new(root_store(roots)?)),
        (_, None) => return Err("verifying the server needs ca_file".to_string()),
    };
    let config = match (verification, roots) {
        (Verification::ChainAndName, Some(roots)) => builder.with_root_certificates(roots).with_no_client_auth(),
        (Verification::Chain, Some(roots)) => {
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|e| format!("CA certificates: {e}"))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Lenient::ChainOnly(webpki)))
                .with_no_client_auth()
        }
        _ => builder.dangerous().with_custom_certificate_verifier(Arc::new(Lenient::Unverified)).with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The CA certificates of `roots`; an error when there is none (an empty
/// store would make every handshake fail, with a vaguer message, at the
/// first login).
pub fn root_store(roots: &RootCerts) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match roots {
        RootCerts::File(path) => {
            let shown = path.display();
            let bytes = std::fs::read(path).map_err(|e| format!("{shown}: {e}"))?;
            for cert in CertificateDer::pem_slice_iter(&bytes) {
                let cert = cert.map_err(|e| format!("{shown}: not a PEM file of certificates: {e}"))?;
                store.add(cert).map_err(|e| format!("{shown}: a certificate that cannot be used: {e}"))?;
            }
            if store.is_empty() {
                return Err(format!("{shown}: no certificate in the file (a PEM \"BEGIN CERTIFICATE\" block)"));
            }
        }
        RootCerts::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found.errors.first().map(|e| format!(": {e}")).unwrap_or_default();
                return Err(format!(
                    "\"system\": no CA certificate in the platform's store (install ca-certificates, or set \
                     SSL_CERT_FILE){why}"
                ));
            }
        }
    }
    Ok(store)
}

/// The upstream verifiers weaker than webpki's full check. The handshake's
/// signatures are checked in both, with the provider's algorithms (as
/// webpki's verifier checks them).
#[derive(Debug)]
enum Lenient {
    /// Any certificate: `allow`, `prefer`, `require` without `ca_file`, as
    /// libpq's.
    Unverified,
    /// The chain, not the name: `verify-ca` (and `require` with `ca_file`),
    /// as libpq's. webpki checks the name only once the chain is good, so
    /// a name error means the chain passed.
    ChainOnly(Arc<WebPkiServerVerifier>),
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Lenient::ChainOnly(webpki) = self else { return Ok(ServerCertVerified::assertion()) };
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &provider().signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &provider().signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider().signature_verification_algorithms.supported_schemes()
    }
}

/// A connection: plain TCP or TLS on either side.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS accepted from a client.
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// TLS to the upstream server.
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// Whether the stream is encrypted.
    pub fn is_tls(&self) -> bool {
        !matches!(self, Stream::Plain(_))
    }

    /// Writes what the socket takes now, without waiting: the bytes
    /// written (`WouldBlock` when none could be, and always for TLS, whose
    /// records are written through [`AsyncWrite`]).
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.try_write(buf),
            Stream::Server(_) | Stream::Client(_) => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Server(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Client(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Server(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Client(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Server(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Client(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Server(s) => s.is_write_vectored(),
            Stream::Client(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Server(s) => Pin::new(s).poll_flush(cx),
            Stream::Client(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Server(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Client(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
