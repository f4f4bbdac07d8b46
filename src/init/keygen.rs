//! `lockbox keygen`: a token-signing key, a CA, a proxy certificate (self-signed or signed
//! by a CA), an API key. Every file is written by `files::write_all`: all or nothing, keys
//! 0600, no overwrite without `--force`.

use crate::cli::out::{out, outln};
use std::path::Path;

use anyhow::{anyhow, Context, Result};

use super::files::{write_all, NewFile};
use crate::cli::KeygenCommand;

pub(crate) fn run(command: &KeygenCommand) -> Result<()> {
    match command {
        KeygenCommand::SigningKey { out, force } => {
            let pem = crate::keys::generate_signing_key_pem()?;
            let authority =
                crate::token::TokenAuthority::from_pem(&pem, "lockbox", "lockbox-proxy")
                    .map_err(|e| anyhow!(e))?;
            write_all(&[NewFile::private(out, pem)], *force)?;
            eprintln!("wrote {}; its public key:", out.display());
            out!("{}", authority.public_key_pem());
        }
        KeygenCommand::Ca { cert, key, force } => {
            let (ca_pem, ca_key_pem) = crate::tls::generate_ca()?;
            write_all(
                &[
                    NewFile::public(cert, ca_pem),
                    NewFile::private(key, ca_key_pem),
                ],
                *force,
            )?;
            outln!(
                "wrote CA certificate {} and its key {} (keep the key offline; clients trust the certificate: sslrootcert={})",
                cert.display(),
                key.display(),
                cert.display()
            );
        }
        KeygenCommand::TlsCert {
            cert,
            key,
            hosts,
            ca_cert,
            ca_key,
            force,
        } => {
            let (cert_pem, key_pem) = match (ca_cert, ca_key) {
                (Some(ca_cert), Some(ca_key)) => signed_by(hosts, ca_cert, ca_key)?,
                (None, None) => crate::tls::generate_self_signed(hosts)?,
                _ => return Err(anyhow!("--ca-cert and --ca-key go together")),
            };
            write_all(
                &[
                    NewFile::public(cert, cert_pem),
                    NewFile::private(key, key_pem),
                ],
                *force,
            )?;
            outln!("wrote {} and {}", cert.display(), key.display());
        }
        KeygenCommand::ApiKey => {
            let key = crate::keys::generate_api_key();
            outln!("api key (give to the user): {key}");
            outln!(
                "api_key_hash = \"{}\"",
                crate::keys::api_key_hash_string(&key)
            );
        }
    }
    Ok(())
}

fn signed_by(hosts: &[String], ca_cert: &Path, ca_key: &Path) -> Result<(String, String)> {
    let ca_pem = std::fs::read_to_string(ca_cert)
        .with_context(|| format!("reading the CA certificate {}", ca_cert.display()))?;
    let ca_key_pem = std::fs::read_to_string(ca_key)
        .with_context(|| format!("reading the CA key {}", ca_key.display()))?;
    Ok(crate::tls::generate_signed_by(hosts, &ca_pem, &ca_key_pem)?)
}
