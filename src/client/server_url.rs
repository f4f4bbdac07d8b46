//! Which API URLs the client will send an API key to.
//!
//! The server refuses to serve plain HTTP off loopback because requests carry API keys
//! and answers carry database tokens; the client holds itself to the same rule, so a
//! mistyped `http://` to a remote host fails before the key leaves the machine.

use super::ClientError;

/// Checks `base` before any request: `https://` anywhere, `http://` only to a loopback
/// address (or `localhost`). A CA bundle (`--ca-cert`) with `http://` is refused off
/// loopback, where it would suggest a verification that cannot happen; on loopback it is
/// the deployment's CA that `lockbox connect` hands to psql, and nothing crosses a network.
pub(super) fn check(base: &str, with_ca: bool) -> Result<(), ClientError> {
    let refuse = |reason: &str| ClientError::InsecureServer {
        url: base.to_owned(),
        reason: reason.to_owned(),
    };
    let url = reqwest::Url::parse(base).map_err(|e| refuse(&format!("not a URL ({e})")))?;
    match url.scheme() {
        "https" => Ok(()),
        "http" if crate::http_client::is_loopback_url(&url) => Ok(()),
        "http" if with_ca => Err(refuse(
            "--ca-cert / LOCKBOX_CA_CERT is for an https:// server; with http:// it would \
             be ignored and nothing would be encrypted — use the server's https:// URL",
        )),
        "http" => Err(refuse(
            "plain http:// is only for a server on this machine (127.0.0.1, ::1, \
             localhost); the API key would cross the network in clear — use https://",
        )),
        _ => Err(refuse(
            "the server URL must start with https:// (or http:// on loopback)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_case(base: &str, with_ca: bool, ok: bool) {
        let got = check(base, with_ca);
        assert_eq!(got.is_ok(), ok, "{base} (ca: {with_ca}): {got:?}");
    }

    #[test]
    fn the_api_key_goes_in_clear_only_to_loopback() {
        check_case("https://lockbox.example.com", false, true);
        check_case("https://10.0.0.5:8432", true, true);
        check_case("http://127.0.0.1:8432", false, true);
        check_case("http://127.1.2.3:8432", false, true);
        check_case("http://[::1]:8432", false, true);
        check_case("http://localhost:8432", false, true);
        check_case("http://LOCALHOST:8432", false, true);
        check_case("http://10.0.0.5:8432", false, false);
        check_case("http://lockbox.example.com", false, false);
        check_case("http://localhost.example.com", false, false);
        check_case("http://127.0.0.1:8432", true, true);
        check_case("http://10.0.0.5:8432", true, false);
        check_case("ftp://127.0.0.1", false, false);
        check_case("127.0.0.1:8432", false, false);
    }
}
