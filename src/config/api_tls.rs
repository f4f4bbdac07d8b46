//! `[api] tls_cert` / `tls_key`: whether the control-plane API serves HTTPS.
//!
//! The API hands out database credentials (`lockbox token`) and takes API keys, so plain
//! HTTP is accepted only where nothing but this machine can listen in: a loopback address.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{invalid, ApiFile, ConfigError, TlsFiles};
use crate::tls::TlsError;

/// The API's certificate files, checked to load (so `config check` catches what `serve`
/// would refuse), or `None` for plain HTTP on loopback.
pub(super) fn validate(
    file: &ApiFile,
    listen: SocketAddr,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<Option<TlsFiles>, ConfigError> {
    let files = match (&file.tls_cert, &file.tls_key) {
        (Some(cert), Some(key)) => TlsFiles {
            cert: resolve(cert),
            key: resolve(key),
        },
        (None, None) if listen.ip().is_loopback() => return Ok(None),
        (None, None) => {
            return Err(invalid(
                "api.tls_cert",
                format!(
                    "api.listen `{listen}` is not a loopback address, so the API must serve \
                     HTTPS (it hands out database credentials): set tls_cert and tls_key \
                     (`lockbox keygen tls-cert`), or listen on 127.0.0.1"
                ),
            ))
        }
        (Some(_), None) => {
            return Err(invalid(
                "api.tls_key",
                "tls_cert is set but tls_key is missing",
            ))
        }
        (None, Some(_)) => {
            return Err(invalid(
                "api.tls_cert",
                "tls_key is set but tls_cert is missing",
            ))
        }
    };
    server_config(&files)?;
    Ok(Some(files))
}

/// The rustls configuration the API listener serves with. Certificate files replaced in
/// place are picked up from the next handshake on (`tls::server_config` watches them).
pub(crate) fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    crate::tls::server_config(&files.cert, &files.key).map_err(|e| {
        let key = match e {
            TlsError::Key { .. } => "api.tls_key",
            _ => "api.tls_cert",
        };
        invalid(key, e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a certificate and key for 127.0.0.1 into `dir`: `(cert, key)` file names.
    fn write_pair(dir: &Path) -> (String, String) {
        let (_ca, cert, key) =
            crate::tls::generate_ca_signed(&["127.0.0.1".into()]).expect("generate");
        std::fs::write(dir.join("api-cert.pem"), cert).expect("write cert");
        std::fs::write(dir.join("api-key.pem"), key).expect("write key");
        ("api-cert.pem".into(), "api-key.pem".into())
    }

    fn check(dir: &Path, api: &str) -> Result<Option<TlsFiles>, String> {
        let text = format!(
            "[proxy]\nlisten = \"127.0.0.1:6432\"\nallow_plaintext_loopback = true\n\
             [token]\nsigning_key = \"signing.pem\"\n[api]\n{api}\n"
        );
        super::super::Config::from_toml(&text, dir)
            .map(|c| c.api_tls)
            .map_err(|e| e.to_string())
    }

    /// `Err` must name `key`.
    fn refused(dir: &Path, api: &str, key: &str) {
        match check(dir, api) {
            Err(e) => assert!(e.contains(&format!("`{key}`")), "{api}: {e}"),
            Ok(tls) => panic!("{api}: accepted ({tls:?})"),
        }
    }

    #[test]
    fn plain_http_only_on_loopback() {
        let dir = tempfile::tempdir().expect("tempdir");
        for loopback in ["127.0.0.1:8432", "[::1]:8432", "127.0.0.2:0"] {
            let tls = check(dir.path(), &format!("listen = \"{loopback}\""));
            assert_eq!(tls, Ok(None), "{loopback}");
        }
        for open in ["0.0.0.0:8432", "[::]:8432", "10.1.2.3:8432"] {
            refused(dir.path(), &format!("listen = \"{open}\""), "api.tls_cert");
        }
    }

    #[test]
    fn a_certificate_makes_any_address_https() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = write_pair(dir.path());
        let tls = check(
            dir.path(),
            &format!("listen = \"0.0.0.0:8432\"\ntls_cert = \"{cert}\"\ntls_key = \"{key}\""),
        )
        .expect("valid");
        let files = tls.expect("HTTPS");
        assert_eq!(files.cert, dir.path().join(cert));
        assert_eq!(files.key, dir.path().join(key));
    }

    #[test]
    fn files_that_do_not_load_name_their_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = write_pair(dir.path());
        std::fs::write(dir.path().join("garbage.pem"), "not a PEM file").expect("write");
        let listen = "listen = \"0.0.0.0:8432\"";
        refused(
            dir.path(),
            &format!("{listen}\ntls_cert = \"{cert}\""),
            "api.tls_key",
        );
        refused(
            dir.path(),
            &format!("{listen}\ntls_key = \"{key}\""),
            "api.tls_cert",
        );
        refused(
            dir.path(),
            &format!("{listen}\ntls_cert = \"missing.pem\"\ntls_key = \"{key}\""),
            "api.tls_cert",
        );
        refused(
            dir.path(),
            &format!("{listen}\ntls_cert = \"garbage.pem\"\ntls_key = \"{key}\""),
            "api.tls_cert",
        );
        refused(
            dir.path(),
            &format!("{listen}\ntls_cert = \"{cert}\"\ntls_key = \"garbage.pem\""),
            "api.tls_key",
        );
        // PEM armour around bytes that are no certificate: only parsed with the key.
        std::fs::write(
            dir.path().join("bad-der.pem"),
            "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        refused(
            dir.path(),
            &format!("{listen}\ntls_cert = \"bad-der.pem\"\ntls_key = \"{key}\""),
            "api.tls_cert",
        );
        // A key of another certificate: the pair does not match.
        let (_ca, _other_cert, other_key) =
            crate::tls::generate_ca_signed(&["127.0.0.1".into()]).expect("generate");
        std::fs::write(dir.path().join("other-key.pem"), other_key).expect("write");
        refused(
            dir.path(),
            &format!("{listen}\ntls_cert = \"{cert}\"\ntls_key = \"other-key.pem\""),
            "api.tls_key",
        );
    }
}
