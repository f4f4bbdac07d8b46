//! `[notifications]`: where lockbox tells approvers and requesters what happened.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{invalid, parse_duration, ConfigError};

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationsFile {
    pub smtp: Option<SmtpFile>,
    #[serde(default)]
    pub webhooks: Vec<WebhookFile>,
    /// First retry after this long; each later one waits twice as long (capped at 5 min).
    pub retry_base: Option<String>,
    /// Give up after this many attempts.
    pub max_attempts: Option<u32>,
    /// Base URL of the API as approvers reach it, for the links in messages.
    pub public_url: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpFile {
    pub host: String,
    #[serde(default = "default_smtp_port")]
    pub port: u16,
    pub from: String,
    /// `none` (plain, for a local relay), `starttls` or `tls`.
    #[serde(default)]
    pub security: SmtpSecurity,
    pub username: Option<String>,
    pub password: Option<String>,
}

fn default_smtp_port() -> u16 {
    25
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    #[default]
    None,
    Starttls,
    Tls,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookFile {
    pub url: String,
    /// `json` (lockbox's own payload), `slack` or `teams` (a `text` message they render).
    #[serde(default)]
    pub format: WebhookFormat,
    /// PEM file of the CA that signed an https:// receiver's certificate (a private CA):
    /// trusted instead of the public CAs for this webhook.
    pub ca_cert: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    #[default]
    Json,
    Slack,
    Teams,
}

#[derive(Clone, PartialEq, Eq)]
pub struct Smtp {
    pub host: String,
    pub port: u16,
    pub from: String,
    pub security: SmtpSecurity,
    pub credentials: Option<(String, String)>,
}

impl std::fmt::Debug for Smtp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Smtp")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("from", &self.from)
            .field("security", &self.security)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub url: String,
    pub format: WebhookFormat,
    /// The PEM CA bundle of `ca_cert`, read when the configuration is loaded.
    pub ca_pem: Option<Vec<u8>>,
}

/// Validated notification settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notifications {
    pub smtp: Option<Smtp>,
    pub webhooks: Vec<Webhook>,
    pub retry_base: Duration,
    pub max_attempts: u32,
    pub public_url: String,
}

pub fn validate(
    file: NotificationsFile,
    api_listen: SocketAddr,
    api_https: bool,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<Notifications, ConfigError> {
    let smtp = match file.smtp {
        None => None,
        Some(s) => {
            if s.host.trim().is_empty() {
                return Err(invalid("notifications.smtp.host", "must not be empty"));
            }
            if !s.from.contains('@') {
                return Err(invalid(
                    "notifications.smtp.from",
                    "must be an email address",
                ));
            }
            let credentials = match (s.username, s.password) {
                (Some(u), Some(p)) => Some((u, p)),
                (None, None) => None,
                _ => {
                    return Err(invalid(
                        "notifications.smtp.username",
                        "give both username and password, or neither",
                    ))
                }
            };
            if credentials.is_some()
                && s.security == SmtpSecurity::None
                && !crate::http_client::is_loopback_host(&s.host)
            {
                // lettre would send AUTH PLAIN (the password, base64) in clear.
                return Err(invalid(
                    "notifications.smtp.security",
                    "with username and password, a relay off loopback needs \"starttls\" or \
                     \"tls\": the password would cross the network in clear",
                ));
            }
            Some(Smtp {
                host: s.host,
                port: s.port,
                from: s.from,
                security: s.security,
                credentials,
            })
        }
    };
    let mut webhooks = Vec::new();
    for (i, w) in file.webhooks.into_iter().enumerate() {
        check_url(&format!("notifications.webhooks[{i}].url"), &w.url)?;
        let ca_pem = match &w.ca_cert {
            None => None,
            Some(_) if !w.url.starts_with("https://") => {
                return Err(invalid(
                    format!("notifications.webhooks[{i}].ca_cert"),
                    "is only used for an https:// url",
                ))
            }
            Some(path) => Some(crate::http_client::read_ca(&resolve(path)).map_err(|e| {
                invalid(
                    format!("notifications.webhooks[{i}].ca_cert"),
                    e.to_string(),
                )
            })?),
        };
        webhooks.push(Webhook {
            url: w.url,
            format: w.format,
            ca_pem,
        });
    }
    let retry_base = match &file.retry_base {
        Some(t) => parse_duration("notifications.retry_base", t)?,
        None => Duration::from_secs(2),
    };
    let max_attempts = file.max_attempts.unwrap_or(10);
    if max_attempts == 0 {
        return Err(invalid("notifications.max_attempts", "must be at least 1"));
    }
    if let Some(url) = &file.public_url {
        check_url("notifications.public_url", url)?;
    }
    Ok(Notifications {
        smtp,
        webhooks,
        retry_base,
        max_attempts,
        public_url: file
            .public_url
            .unwrap_or_else(|| {
                let scheme = if api_https { "https" } else { "http" };
                format!("{scheme}://{api_listen}")
            })
            .trim_end_matches('/')
            .to_owned(),
    })
}

/// An https:// URL, or http:// to loopback. A webhook tells approvers what to approve and
/// `public_url` makes the links they follow with their API key: in clear on a network, an
/// on-path attacker rewrites either.
fn check_url(key: &str, url: &str) -> Result<(), ConfigError> {
    let parsed =
        reqwest::Url::parse(url).map_err(|_| invalid(key, "must be an http:// or https:// URL"))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if crate::http_client::is_loopback_url(&parsed) => Ok(()),
        "http" => Err(invalid(
            key,
            "must be https:// (plain http:// is allowed to loopback only)",
        )),
        _ => Err(invalid(key, "must be an http:// or https:// URL")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webhook(dir: &Path, url: &str, ca_cert: &str) -> Result<Notifications, String> {
        let file = NotificationsFile {
            webhooks: vec![WebhookFile {
                url: url.into(),
                format: WebhookFormat::Json,
                ca_cert: Some(ca_cert.into()),
            }],
            ..NotificationsFile::default()
        };
        let listen = "127.0.0.1:8432".parse().expect("addr");
        validate(file, listen, false, &|p: &Path| dir.join(p)).map_err(|e| e.to_string())
    }

    #[test]
    fn a_webhook_ca_is_read_at_load_and_named_when_wrong() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca, _cert, key) =
            crate::tls::generate_ca_signed(&["127.0.0.1".into()]).expect("generate");
        std::fs::write(dir.path().join("ca.pem"), &ca).expect("write");
        std::fs::write(dir.path().join("key.pem"), key).expect("write");
        let ok = webhook(dir.path(), "https://hooks.example/x", "ca.pem").expect("valid");
        assert_eq!(ok.webhooks[0].ca_pem.as_deref(), Some(ca.as_bytes()));
        for (url, file) in [
            ("https://hooks.example/x", "missing.pem"),
            ("https://hooks.example/x", "key.pem"),
            ("http://127.0.0.1:9000/x", "ca.pem"),
        ] {
            let err = webhook(dir.path(), url, file).expect_err(file);
            assert!(
                err.contains("`notifications.webhooks[0].ca_cert`"),
                "{url} {file}: {err}"
            );
        }
    }

    fn check(case: &str) -> Result<Notifications, String> {
        let file: NotificationsFile = toml::from_str(case).map_err(|e| e.to_string())?;
        let listen = "127.0.0.1:8432".parse().expect("addr");
        validate(file, listen, false, &|p: &Path| p.to_owned()).map_err(|e| e.to_string())
    }

    #[test]
    fn plain_text_leaves_the_machine_only_where_nothing_secret_or_trusted_goes() {
        let smtp = "[smtp]\nhost = \"HOST\"\nfrom = \"a@example.com\"\n";
        let creds = "username = \"u\"\npassword = \"p\"\n";
        for (case, refused_key) in [
            (
                format!("{smtp}{creds}"),
                Some("notifications.smtp.security"),
            ),
            (
                format!("{smtp}{creds}security = \"none\""),
                Some("notifications.smtp.security"),
            ),
            (format!("{smtp}{creds}security = \"starttls\""), None),
            (format!("{smtp}{creds}security = \"tls\""), None),
            (smtp.to_owned(), None),
            (format!("{smtp}{creds}").replace("HOST", "127.0.0.1"), None),
            (format!("{smtp}{creds}").replace("HOST", "localhost"), None),
            (
                "[[webhooks]]\nurl = \"http://hooks.example.com/x\"".into(),
                Some("notifications.webhooks[0].url"),
            ),
            (
                "[[webhooks]]\nurl = \"https://hooks.example.com/x\"".into(),
                None,
            ),
            (
                "[[webhooks]]\nurl = \"http://127.0.0.1:9000/x\"".into(),
                None,
            ),
            (
                "[[webhooks]]\nurl = \"hooks.example.com\"".into(),
                Some("notifications.webhooks[0].url"),
            ),
            (
                "public_url = \"http://lockbox.example.com\"".into(),
                Some("notifications.public_url"),
            ),
            ("public_url = \"https://lockbox.example.com\"".into(), None),
            ("public_url = \"http://[::1]:8432\"".into(), None),
        ] {
            let case = case.replace("HOST", "smtp.example.com");
            match (check(&case), refused_key) {
                (Ok(_), None) => {}
                (Err(e), Some(key)) => assert!(e.contains(&format!("`{key}`")), "{case}: {e}"),
                (got, _) => panic!("{case}: {:?}", got.map(|_| "accepted")),
            }
        }
    }

    #[test]
    fn links_follow_the_api_scheme() {
        let listen = "127.0.0.1:8432".parse().expect("addr");
        let none = &|p: &Path| p.to_owned();
        let https = validate(NotificationsFile::default(), listen, true, none).expect("valid");
        assert_eq!(https.public_url, "https://127.0.0.1:8432");
        let http = validate(NotificationsFile::default(), listen, false, none).expect("valid");
        assert_eq!(http.public_url, "http://127.0.0.1:8432");
    }
}
