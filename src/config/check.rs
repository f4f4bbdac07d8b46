//! `lockbox config check`: every problem `lockbox serve` would stop at, not only the first.
//! `Config::load` stops at the first mistake, which suits `serve`; an operator fixing a
//! file wants the whole list, and wants what `serve` loads besides the file (the signing
//! key, the proxy's certificate and key) checked too.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::{
    audit_sink, invalid, notify, parse_addr, parse_duration, parse_size, validate_databases,
    validate_users, Config, ConfigError, ConfigFile,
};

/// The validated configuration at `path`, or every problem found in it, each naming its
/// key. Nothing is connected to: an unreachable database is not found here.
pub(crate) fn check(path: &Path) -> Result<Config, Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|source| {
        vec![ConfigError::Read {
            path: path.to_owned(),
            source,
        }
        .to_string()]
    })?;
    let parse = || -> Result<ConfigFile, Vec<String>> {
        toml::from_str(&text).map_err(|e| {
            vec![ConfigError::Syntax {
                path: path.to_owned(),
                message: e.to_string(),
            }
            .to_string()]
        })
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let mut problems = Problems::default();
    each_part(parse()?, base, &mut problems);
    // The whole file as `serve` reads it, for what spans parts (rules naming databases and
    // roles, users listed twice); its first problem is usually one found above already.
    match Config::validate(parse()?, base) {
        Ok(mut config) if problems.0.is_empty() => {
            config.source = Some(path.to_owned());
            Ok(config)
        }
        Ok(_) => Err(problems.0),
        Err(e) => {
            problems.add::<()>(Err(e));
            Err(problems.0)
        }
    }
}

/// What `serve` would find wrong with a PostgreSQL state store (`[state] url`): it cannot
/// be reached, or its schema is newer than this binary knows. The one check that connects,
/// on a thread of its own so it runs from sync and async callers alike.
pub(crate) fn state_store_problem(config: &Config) -> Option<String> {
    let pg = config.state_postgres.clone()?;
    let probe = move || -> Result<(), crate::store::StoreError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| crate::store::StoreError::Worker(e.to_string()))?;
        runtime.block_on(async {
            let client = crate::store::pg::pool::connect(&pg).await?;
            let found = crate::store::pg::current_version(&client).await?;
            let known = crate::store::pg::known_version();
            if found > known {
                return Err(crate::store::StoreError::NewerSchema { found, known });
            }
            Ok(())
        })
    };
    let result = std::thread::spawn(probe)
        .join()
        .unwrap_or_else(|_| Err(crate::store::StoreError::Worker("the probe failed".into())));
    result
        .err()
        .map(|e| invalid("state.url", e.to_string()).to_string())
}

/// Problems in the order found, each once.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn add<T>(&mut self, result: Result<T, ConfigError>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(e) => {
                let text = e.to_string();
                if !self.0.contains(&text) {
                    self.0.push(text);
                }
                None
            }
        }
    }
}

/// Checks each part of the file on its own, so one problem does not hide the next.
fn each_part(file: ConfigFile, base: &Path, problems: &mut Problems) {
    let resolve = |p: &Path| -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            base.join(p)
        }
    };
    problems.add(parse_addr("proxy.listen", &file.proxy.listen));
    let api_listen = problems.add(parse_addr("api.listen", &file.api.listen));
    if let (Some(cert), Some(key)) = (&file.proxy.tls_cert, &file.proxy.tls_key) {
        problems.add(
            crate::tls::server_config(&resolve(cert), &resolve(key))
                .map_err(|e| invalid("proxy.tls_cert", e.to_string())),
        );
    }
    problems.add(
        crate::token::TokenAuthority::load(
            &resolve(&file.token.signing_key),
            &file.token.issuer,
            &file.token.audience,
        )
        .map_err(|e| invalid("token.signing_key", e.to_string())),
    );
    if let Some((path, None)) = problems.add(super::state::validate_file(&file.state, &resolve)) {
        problems.add(location("state.sqlite_path", &path));
    }
    problems.add(location("audit.path", &resolve(&file.audit.path)));
    let timings = &file.timings;
    for (key, text) in [
        ("timings.request_ttl", &timings.request_ttl),
        ("timings.default_access", &timings.default_access),
        ("timings.max_access", &timings.max_access),
        ("timings.terminate_after", &timings.terminate_after),
        ("timings.catalog_refresh", &timings.catalog_refresh),
        ("audit.sync_interval", &file.audit.sync_interval),
        ("api.web_session_ttl", &file.api.web_session_ttl),
    ] {
        problems.add(parse_duration(key, text));
    }
    if let Some(interval) = &file.audit.rotate_interval {
        problems.add(parse_duration("audit.rotate_interval", interval));
    }
    problems.add(parse_size("audit.rotate_size", &file.audit.rotate_size));
    if let Some(sink) = file.audit.postgres {
        problems.add(audit_sink::validate(sink, &resolve));
    }
    for (i, db) in file.databases.into_iter().enumerate() {
        problems
            .add(validate_databases(vec![db], &resolve).map_err(|e| reindex(e, "databases", i)));
    }
    let oidc = file.oidc.is_some();
    for (i, user) in file.users.into_iter().enumerate() {
        problems.add(validate_users(vec![user], oidc).map_err(|e| reindex(e, "users", i)));
    }
    if let Some(o) = &file.oidc {
        problems.add(
            crate::oidc::OidcVerifier::load(
                &resolve(&o.jwks_file),
                &o.issuer,
                &o.audience,
                &o.username_claim,
            )
            .map_err(|e| invalid("oidc.jwks_file", e.to_string())),
        );
    }
    let api_listen = api_listen.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8432)));
    let api_https = problems
        .add(super::api_tls::validate(&file.api, api_listen, &resolve))
        .flatten()
        .is_some();
    problems.add(notify::validate(
        file.notifications,
        api_listen,
        api_https,
        &resolve,
    ));
}

/// `serve` makes the folders of the state and audit files as needed; it cannot use a path
/// that is a folder or lies under a file.
fn location(key: &str, path: &Path) -> Result<(), ConfigError> {
    if path.is_dir() {
        return Err(invalid(key, format!("{} is a folder", path.display())));
    }
    let mut ancestor = path.parent();
    while let Some(dir) = ancestor.filter(|d| !d.as_os_str().is_empty()) {
        match std::fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => return Ok(()),
            Ok(_) => return Err(invalid(key, format!("{} is not a folder", dir.display()))),
            Err(_) => ancestor = dir.parent(),
        }
    }
    Ok(())
}

/// A part validated alone is element 0 of its list: name it by its place in the file.
fn reindex(e: ConfigError, list: &str, i: usize) -> ConfigError {
    match e {
        ConfigError::Invalid { key, message } => {
            let alone = format!("{list}[0]");
            let key = match key.strip_prefix(&alone) {
                Some(rest) => format!("{list}[{i}]{rest}"),
                None => key,
            };
            ConfigError::Invalid { key, message }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(toml: &str) -> Vec<String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lockbox.toml");
        std::fs::write(&path, toml).expect("write");
        std::fs::write(dir.path().join("bad-key.pem"), "not a key").expect("write");
        std::fs::write(dir.path().join("bad-cert.pem"), "not a cert").expect("write");
        check(&path).expect_err("problems")
    }

    #[test]
    fn lists_every_problem_with_its_key() {
        let hash = format!("sha256:{}", "0".repeat(64));
        let found = problems(&format!(
            "[proxy]\nlisten = \"nowhere\"\ntls_cert = \"bad-cert.pem\"\ntls_key = \"bad-key.pem\"\n\
             [state]\nsqlite_path = \"bad-key.pem/state.db\"\n\
             [token]\nsigning_key = \"bad-key.pem\"\n\
             [api]\nlisten = \"127.0.0.1:8432\"\nweb_session_ttl = \"soon\"\n\
             [timings]\nrequest_ttl = \"soon\"\n\
             [[databases]]\nname = \"a\"\nhost = \"h\"\nuser = \"u\"\n[databases.access.read]\nuser = \"r\"\n\
             [[databases]]\nname = \"b\"\nhost = \"h\"\nuser = \"u\"\npassword_file = \"missing.password\"\n\
             [[users]]\nname = \"x\"\nroles = [\"engineer\"]\napi_key_hash = \"{hash}\"\n\
             [[users]]\nname = \"y\"\nroles = [\"engineer\"]\napi_key_hash = \"abc\"\n"
        ));
        let text = found.join("\n");
        for key in [
            "proxy.listen",
            "proxy.tls_cert",
            "token.signing_key",
            "state.sqlite_path",
            "timings.request_ttl",
            "api.web_session_ttl",
            "databases[1].password_file",
            "users[1].api_key_hash",
        ] {
            assert!(text.contains(&format!("`{key}`")), "{key} not in:\n{text}");
        }
        let unique: std::collections::BTreeSet<&String> = found.iter().collect();
        assert_eq!(unique.len(), found.len(), "listed twice:\n{text}");
    }

    #[test]
    fn a_file_that_does_not_parse_is_one_problem() {
        let found = problems("[proxy\n");
        assert_eq!(found.len(), 1, "{found:?}");
    }
}
