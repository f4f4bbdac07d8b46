//! attack-11: what `lockbox connect` takes from the API's answer.

use super::conninfo;
use crate::api::TokenResponse;

fn answer(sslmode: &str, host: &str) -> TokenResponse {
    TokenResponse {
        token: "t".into(),
        request_id: "req-1".into(),
        database: "sales".into(),
        user: "eve".into(),
        expires_at: None,
        host: host.into(),
        port: 6432,
        sslmode: sslmode.into(),
        ca_cert: Some("/etc/lockbox/ca.pem".into()),
    }
}

/// The API's answer chooses psql's sslmode: an answer with `disable` (or `prefer`,
/// `allow`, `require`: no certificate check) makes psql send the token, in
/// PGPASSWORD, in clear text or to whoever answers at `host`, though the CLI was given a
/// CA (`--ca-cert`) to verify against. The CLI should insist on verify-full.
#[test]
fn attack_11_connect_takes_a_downgraded_sslmode_from_the_api() {
    for weak in ["disable", "allow", "prefer", "require", "verify-ca"] {
        let info = conninfo(&answer(weak, "proxy.example.com"));
        assert!(
            info.contains("sslmode='verify-full'"),
            "psql is told: {info}"
        );
    }
}
