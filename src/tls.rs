//! TLS material: loading the proxy's certificate, generating a self-signed one or a CA
//! and a certificate it signs, and the client configurations used to reach TLS servers.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read TLS certificate {path}: {message}")]
    Cert { path: String, message: String },
    #[error("cannot read TLS key {path}: {message}")]
    Key { path: String, message: String },
    #[error("TLS configuration rejected: {0}")]
    Config(String),
    #[error("cannot generate certificate: {0}")]
    Generate(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Server configuration for the proxy's client-facing listener. The certificate files
/// are watched: a replaced certificate is served from the next handshake on, without a
/// restart (a broken replacement is logged and the previous one kept).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let resolver = ReloadingCert::new(cert, key)?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    Ok(Arc::new(config))
}

fn load_certified_key(
    cert: &Path,
    key: &Path,
) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| TlsError::Cert {
            path: cert.display().to_string(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Cert {
            path: cert.display().to_string(),
            message: "no certificate in file".into(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        message: e.to_string(),
    })?;
    let certified =
        rustls::sign::CertifiedKey::from_der(certs, key_der, &provider()).map_err(|e| {
            // The certificate is only parsed here (PEM that holds no valid certificate).
            if let rustls::Error::InvalidCertificate(_) = e {
                return TlsError::Cert {
                    path: cert.display().to_string(),
                    message: e.to_string(),
                };
            }
            TlsError::Key {
                path: key.display().to_string(),
                message: e.to_string(),
            }
        })?;
    Ok(Arc::new(certified))
}

/// How often the certificate files are looked at.
const RELOAD_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug)]
struct ReloadingCert {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    state: std::sync::Mutex<ReloadState>,
}

#[derive(Debug)]
struct ReloadState {
    current: Arc<rustls::sign::CertifiedKey>,
    stamps: (Option<std::time::SystemTime>, Option<std::time::SystemTime>),
    checked: std::time::Instant,
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl ReloadingCert {
    fn new(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let current = load_certified_key(cert, key)?;
        Ok(ReloadingCert {
            cert: cert.to_owned(),
            key: key.to_owned(),
            state: std::sync::Mutex::new(ReloadState {
                current,
                stamps: (modified(cert), modified(key)),
                checked: std::time::Instant::now(),
            }),
        })
    }

    fn current(&self) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let mut state = self.state.lock().ok()?;
        if state.checked.elapsed() >= RELOAD_CHECK {
            state.checked = std::time::Instant::now();
            let stamps = (modified(&self.cert), modified(&self.key));
            if stamps != state.stamps {
                match load_certified_key(&self.cert, &self.key) {
                    Ok(fresh) => {
                        state.current = fresh;
                        state.stamps = stamps;
                        tracing::info!(cert = %self.cert.display(), "proxy TLS certificate reloaded");
                    }
                    // Half-written files are common mid-rotation: keep serving the old one.
                    Err(e) => tracing::warn!(error = %e, "new TLS certificate not loaded yet"),
                }
            }
        }
        Some(state.current.clone())
    }
}

impl rustls::server::ResolvesServerCert for ReloadingCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.current()
    }
}

/// A self-signed certificate and key (PEM) for `hosts` (names or IP addresses).
pub fn generate_self_signed(hosts: &[String]) -> Result<(String, String), TlsError> {
    let certified = rcgen::generate_simple_self_signed(hosts.to_vec())
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    Ok((certified.cert.pem(), certified.signing_key.serialize_pem()))
}

/// A CA and a server certificate it signed for `hosts`: `(ca_pem, cert_pem, key_pem)`.
pub fn generate_ca_signed(hosts: &[String]) -> Result<(String, String, String), TlsError> {
    let (ca_pem, ca_key_pem) = generate_ca()?;
    let (cert_pem, key_pem) = generate_signed_by(hosts, &ca_pem, &ca_key_pem)?;
    Ok((ca_pem, cert_pem, key_pem))
}

fn generate_error(e: rcgen::Error) -> TlsError {
    TlsError::Generate(e.to_string())
}

/// A new certificate authority: `(ca_pem, ca_key_pem)`. Clients that trust it
/// (`sslrootcert=`) can check the proxy's name (`sslmode=verify-full`).
pub fn generate_ca() -> Result<(String, String), TlsError> {
    let ca_key = rcgen::KeyPair::generate().map_err(generate_error)?;
    let mut ca_params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(generate_error)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    // A name of its own: a client trusting two lockbox CAs must not take one for the other.
    let mut id = [0u8; 8];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut id);
    ca_params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("lockbox CA {}", hex::encode(id)),
    );
    let ca = ca_params.self_signed(&ca_key).map_err(generate_error)?;
    Ok((ca.pem(), ca_key.serialize_pem()))
}

/// A server certificate for `hosts` signed by the CA in `ca_pem` / `ca_key_pem`:
/// `(cert_pem, key_pem)`. The CA may be one lockbox made or any other (its subject and key
/// identifier are read from the certificate).
pub fn generate_signed_by(
    hosts: &[String],
    ca_pem: &str,
    ca_key_pem: &str,
) -> Result<(String, String), TlsError> {
    let ca_key = rcgen::KeyPair::from_pem(ca_key_pem).map_err(|e| TlsError::Key {
        path: "<CA key>".into(),
        message: e.to_string(),
    })?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(ca_pem, ca_key).map_err(|e| TlsError::Cert {
        path: "<CA certificate>".into(),
        message: e.to_string(),
    })?;
    let key = rcgen::KeyPair::generate().map_err(generate_error)?;
    let mut params = rcgen::CertificateParams::new(hosts.to_vec()).map_err(generate_error)?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        hosts.first().map_or("lockbox", |h| h.as_str()),
    );
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer).map_err(generate_error)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Client configuration that verifies the server's chain against the CAs in `ca_file`,
/// and its name too when `verify_name` (libpq's `verify-ca` and `verify-full`).
pub fn client_config_verified(
    ca_file: &Path,
    verify_name: bool,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let cert_error = |message: String| TlsError::Cert {
        path: ca_file.display().to_string(),
        message,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).map_err(|e| cert_error(e.to_string()))? {
        let cert = cert.map_err(|e| cert_error(e.to_string()))?;
        roots.add(cert).map_err(|e| cert_error(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(cert_error("no CA certificate in file".into()));
    }
    let webpki =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
    let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> = if verify_name {
        webpki
    } else {
        Arc::new(ChainOnly { inner: webpki })
    };
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// `verify-ca`: the chain must lead to a trusted CA; the name is not checked.
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
}

impl rustls::client::danger::ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Client configuration that trusts exactly one pinned certificate (the demo's own).
pub fn client_config_pinned(cert_pem: &str) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| TlsError::Cert {
        path: "<pinned>".into(),
        message: e.to_string(),
    })?;
    client_config(Some(cert.into_owned()))
}

/// Client configuration that encrypts without verifying the server, libpq's
/// `sslmode=require`. Used towards upstream databases configured with `tls = "require"`.
pub fn client_config_encrypt_only() -> Result<Arc<rustls::ClientConfig>, TlsError> {
    client_config(None)
}

fn client_config(
    pinned: Option<CertificateDer<'static>>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let verifier = Arc::new(Verifier {
        pinned,
        provider: provider(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Accepts exactly the pinned certificate, or (unpinned) any certificate. Handshake
/// signatures are always checked, so the peer does hold the certificate's key.
#[derive(Debug)]
struct Verifier {
    pinned: Option<CertificateDer<'static>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match &self.pinned {
            Some(pinned) if pinned.as_ref() != end_entity.as_ref() => Err(
                rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
            ),
            _ => Ok(rustls::client::danger::ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
