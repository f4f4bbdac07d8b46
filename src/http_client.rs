//! HTTP clients (reqwest over rustls, no OpenSSL) for the CLI's API calls and for webhooks,
//! and the words for what went wrong when a request never got an answer.
//!
//! Trust: the public CAs of the Mozilla root program, compiled in (webpki-roots), rather
//! than the machine's store: the same trust on every host and in a container image
//! without a CA bundle, and nothing read from disk that a local user could add to. A
//! server signed by a private CA is reached by naming that CA (`--ca-cert`,
//! `LOCKBOX_CA_CERT`, a webhook's `ca_cert`): it then replaces the public roots for that
//! client, as libpq's `sslrootcert` does, so only that CA's certificates are accepted.

use std::error::Error as _;
use std::path::Path;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// A CA file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot read CA certificate {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("CA certificate {path}: {message}")]
    Invalid { path: String, message: String },
}

/// A PEM CA bundle, checked to hold certificates and nothing else.
pub(crate) fn read_ca(path: &Path) -> Result<Vec<u8>, CaError> {
    let pem = std::fs::read(path).map_err(|source| CaError::Read {
        path: path.display().to_string(),
        source,
    })?;
    check_ca(&pem).map_err(|message| CaError::Invalid {
        path: path.display().to_string(),
        message,
    })?;
    Ok(pem)
}

/// At least one certificate, and nothing that is not one.
fn check_ca(pem: &[u8]) -> Result<(), String> {
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(pem) {
        cert.map_err(|e| format!("not a PEM certificate ({e})"))?;
        count += 1;
    }
    if count == 0 {
        return Err("no certificate in the file".into());
    }
    Ok(())
}

/// A server that does not accept a connection within this long is reported, rather than
/// left to the system's TCP timeout (minutes, for a host that drops packets).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A client trusting the public roots, or (with `ca_pem`) only the CAs in that bundle.
pub(crate) fn client(ca_pem: Option<&[u8]>) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        // Never follow a redirect: reqwest keeps `Authorization` when only the scheme
        // changes (https -> http on the same host and port, an API key in clear), and a
        // webhook receiver could point the notifier at internal addresses. The API never
        // redirects; a 3xx is reported as an error by the caller.
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT);
    if let Some(pem) = ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| e.to_string())?;
        builder = builder.tls_built_in_root_certs(false);
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|e| e.to_string())
}

/// Whether `host` (a URL's or a config's host: a name, an IP address, or an IPv6
/// address in brackets) is this machine's loopback, where plain text crosses no network.
/// Only `localhost` counts among names: another name may resolve anywhere.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => bare.eq_ignore_ascii_case("localhost"),
    }
}

/// Whether `url` points at this machine's loopback.
pub(crate) fn is_loopback_url(url: &reqwest::Url) -> bool {
    url.host_str().is_some_and(is_loopback_host)
}

/// What a URL may show where it is displayed or logged: scheme, host and port. The path
/// and query of a webhook URL are often its secret (Slack's `/services/T…/B…/<secret>`),
/// and user info is a password.
pub(crate) fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(parsed) => match (parsed.host_str(), parsed.port()) {
            (Some(host), Some(port)) => format!("{}://{host}:{port}", parsed.scheme()),
            (Some(host), None) => format!("{}://{host}", parsed.scheme()),
            (None, _) => format!("{}:", parsed.scheme()),
        },
        Err(_) => "<unparsable URL>".into(),
    }
}

/// What to suggest, per kind of server.
#[derive(Clone, Copy)]
pub(crate) struct Hints {
    /// After "connection refused — ".
    pub refused: &'static str,
    /// How to name the CA of a server with an untrusted certificate.
    pub ca: &'static str,
}

/// The CLI talking to the lockbox API.
pub(crate) const API: Hints = Hints {
    refused: "is `lockbox serve` running? is LOCKBOX_SERVER (--server) right?",
    ca: "pass the CA that signed it with --ca-cert or LOCKBOX_CA_CERT",
};

/// The notifier posting to a webhook receiver.
pub(crate) const WEBHOOK: Hints = Hints {
    refused: "is the receiver running, and the webhook's url right?",
    ca: "set the webhook's ca_cert to the CA that signed it",
};

/// Why a request got no answer, in words that say what to try. reqwest's own message
/// ("error sending request for url …") hides the cause several sources down.
pub(crate) fn describe(error: &reqwest::Error, hints: Hints) -> String {
    if error.is_timeout() {
        return "no answer in time — is the server overloaded, or a firewall dropping packets?"
            .into();
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = error.source();
    let mut deepest = error.to_string();
    while let Some(e) = cause {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return describe_tls(tls, hints);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(said) = describe_io(io, hints) {
                return said;
            }
        }
        deepest = e.to_string();
        cause = e.source();
    }
    if deepest.contains("dns error") || deepest.contains("failed to lookup address") {
        return format!("{deepest} — is the host name right?");
    }
    if deepest.contains("connection closed before message completed") {
        return "the server closed the connection without an answer — if it serves HTTPS, \
                use an https:// URL"
            .into();
    }
    if deepest.contains("invalid HTTP version") {
        return "the server did not answer HTTP — is it serving HTTPS? then use an https:// URL"
            .into();
    }
    deepest
}

fn describe_io(io: &std::io::Error, hints: Hints) -> Option<String> {
    use std::io::ErrorKind;
    // hyper-rustls wraps the handshake's io::Error in another; rustls puts its own error
    // inside the innermost. `source()` skips the wrapped error itself, so walk `get_ref`.
    let mut layer = Some(io);
    while let Some(io) = layer {
        let inner = io.get_ref();
        if let Some(tls) = inner.and_then(|e| e.downcast_ref::<rustls::Error>()) {
            return Some(describe_tls(tls, hints));
        }
        let said = match io.kind() {
            ErrorKind::ConnectionRefused => {
                return Some(format!("connection refused — {}", hints.refused))
            }
            ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof => {
                "the server closed the connection — if it serves HTTPS, use an https:// URL; \
                 if plain HTTP, an http:// one"
            }
            ErrorKind::TimedOut => "connection timed out — is a firewall dropping packets?",
            _ => {
                layer = inner.and_then(|e| e.downcast_ref::<std::io::Error>());
                continue;
            }
        };
        return Some(said.into());
    }
    None
}

fn describe_tls(error: &rustls::Error, hints: Hints) -> String {
    use rustls::CertificateError as C;
    let hint = hints.ca;
    match error {
        // A CA of the same name that did not sign it fails the signature check instead.
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            format!("the server's TLS certificate is not signed by a trusted CA — {hint}")
        }
        rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        ) => "the server's TLS certificate is not valid for this host name — use the name \
             (or address) the certificate was made for"
            .into(),
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "the server's TLS certificate has expired".into()
        }
        rustls::Error::InvalidCertificate(other) => {
            format!("the server's TLS certificate was refused ({other:?}) — {hint}")
        }
        rustls::Error::InvalidMessage(_) => {
            "the server did not answer TLS — is it serving plain HTTP? then use an http:// URL"
                .into()
        }
        other => format!("TLS handshake failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_bundle_needs_a_certificate_and_nothing_else() {
        let (ca, cert, key) =
            crate::tls::generate_ca_signed(&["127.0.0.1".into()]).expect("generate");
        assert_eq!(check_ca(ca.as_bytes()), Ok(()));
        assert_eq!(check_ca(format!("{ca}{cert}").as_bytes()), Ok(()));
        assert!(check_ca(key.as_bytes()).is_err(), "a key is no CA");
        assert!(check_ca(b"").is_err());
        assert!(check_ca(b"-----BEGIN CERTIFICATE-----\n!!!\n").is_err());
    }

    #[test]
    fn a_client_with_a_private_ca_builds() {
        let (ca, _cert, _key) =
            crate::tls::generate_ca_signed(&["127.0.0.1".into()]).expect("generate");
        assert!(client(Some(ca.as_bytes())).is_ok());
        assert!(client(None).is_ok());
    }

    #[test]
    fn loopback_is_an_address_or_localhost() {
        for host in [
            "127.0.0.1",
            "127.9.9.9",
            "::1",
            "[::1]",
            "localhost",
            "LocalHost",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "10.0.0.1",
            "example.com",
            "localhost.example.com",
            "[::2]",
            "",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn a_redacted_url_keeps_scheme_host_and_port_only() {
        for (url, shown) in [
            (
                "https://hooks.slack.com/services/T0/B0/SECRET",
                "https://hooks.slack.com",
            ),
            (
                "http://127.0.0.1:9000/hook?token=SECRET",
                "http://127.0.0.1:9000",
            ),
            ("https://user:SECRET@[::1]:8443/x", "https://[::1]:8443"),
            ("not a url SECRET", "<unparsable URL>"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn tls_failures_say_what_to_try() {
        let unknown = describe_tls(
            &rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
            API,
        );
        assert!(unknown.contains("not signed by a trusted CA"), "{unknown}");
        assert!(unknown.contains("--ca-cert"), "{unknown}");
        let name = describe_tls(
            &rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName),
            API,
        );
        assert!(name.contains("not valid for this host name"), "{name}");
    }

    #[test]
    fn io_failures_say_what_to_try() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let said = describe_io(&refused, API).expect("described");
        assert!(said.starts_with("connection refused"), "{said}");
        assert!(said.contains("LOCKBOX_SERVER"), "{said}");
        let wrapped = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        // As hyper-rustls hands it over: an io::Error around rustls's io::Error.
        let wrapped = std::io::Error::other(wrapped);
        let said = describe_io(&wrapped, WEBHOOK).expect("described");
        assert!(said.contains("not signed by a trusted CA"), "{said}");
        assert!(said.contains("ca_cert"), "{said}");
        let other = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert_eq!(describe_io(&other, API), None);
    }
}
