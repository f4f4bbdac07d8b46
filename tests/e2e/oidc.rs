//! Identity tokens from an external OIDC provider: validated against a JWKS file, the user
//! taken from `[[users]]`, and MFA from the `amr` claim — which the JIT rules then use.

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use lockbox::policy::{AccessLevel, NewRequest};

use crate::harness::{Env, Options};

pub(crate) const ISSUER: &str = "https://idp.example.test";
const AUDIENCE: &str = "lockbox";

pub(crate) struct Provider {
    key: EncodingKey,
    kid: String,
}

impl Provider {
    /// A provider with a fresh Ed25519 key, its JWKS written to `path`.
    fn new(path: &std::path::Path) -> Provider {
        let pem = lockbox::keys::generate_signing_key_pem().expect("key");
        let key = EncodingKey::from_ed_pem(pem.as_bytes()).expect("encoding key");
        use base64::Engine;
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        let public = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem)
            .expect("signing key")
            .verifying_key()
            .to_bytes();
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(public);
        let jwks = serde_json::json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k1", "alg": "EdDSA", "use": "sig"}
        ]});
        // The file must be a JWKS the library itself reads.
        let _: JwkSet = serde_json::from_value(jwks.clone()).expect("a valid JWKS");
        std::fs::write(path, jwks.to_string()).expect("write");
        Provider {
            key,
            kid: "k1".into(),
        }
    }

    pub(crate) fn token(&self, user: &str, amr: &[&str], issuer: &str, expires_in: i64) -> String {
        let now = chrono::Utc::now().timestamp();
        let claims = serde_json::json!({
            "iss": issuer, "aud": AUDIENCE, "sub": format!("id-{user}"),
            "preferred_username": user, "amr": amr, "iat": now, "exp": now + expires_in,
        });
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.key).expect("sign")
    }
}

/// A lockbox whose `[oidc]` trusts a fresh provider; the folder holds its JWKS file.
pub(crate) async fn with_provider(name: &str) -> (Env, Provider, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let jwks = dir.path().join("jwks.json");
    let idp = Provider::new(&jwks);
    let settings = format!(
        "\n[oidc]\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\njwks_file = \"{}\"\nusername_claim = \"preferred_username\"\n",
        jwks.display()
    );
    let env = Env::with(
        name,
        Options {
            policy: Box::leak(settings.into_boxed_str()),
            ..Options::default()
        },
    )
    .await;
    (env, idp, dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn identity_tokens_sign_in_and_amr_decides_mfa() {
    let (env, idp, dir) = with_provider("oidc").await;
    let base = env.deployment.server_url();
    let as_token = |t: &str| lockbox::client::ApiClient::new(&base, t);
    let ask = NewRequest {
        database: env.db.clone(),
        ticket: "SUP-5".into(),
        reason: "look".into(),
        access: AccessLevel::Read,
        duration: Some("1h".into()),
        ..NewRequest::default()
    };

    // bob's config says mfa = true, but his token says password only: the token decides.
    let password_only = as_token(&idp.token("bob", &["pwd"], ISSUER, 300));
    let me = password_only.whoami().await.expect("signed in");
    assert_eq!((me.name.as_str(), me.mfa), ("bob", false));
    let denied = password_only
        .create_request(&ask)
        .await
        .expect_err("no MFA");
    assert!(denied.to_string().contains("require-mfa"), "{denied}");

    let with_otp = as_token(&idp.token("bob", &["pwd", "otp"], ISSUER, 300));
    assert!(with_otp.whoami().await.expect("signed in").mfa);
    let request = with_otp.create_request(&ask).await.expect("filed");
    assert_eq!(request.engineer, "bob");
    assert!(request.requester_mfa);

    // API keys keep working beside identity tokens.
    assert_eq!(
        env.client("carol").whoami().await.expect("key").name,
        "carol"
    );

    for (what, token) in [
        (
            "another issuer",
            idp.token("bob", &["mfa"], "https://evil.example", 300),
        ),
        ("expired", idp.token("bob", &["mfa"], ISSUER, -600)),
        ("unknown user", idp.token("mallory", &["mfa"], ISSUER, 300)),
    ] {
        let err = as_token(&token).whoami().await.expect_err(what);
        assert_eq!(err.code(), Some("unauthorized"), "{what}");
    }
    // Signed by someone else's key (same kid): refused.
    let other = Provider::new(&dir.path().join("other.json"));
    let forged = other.token("bob", &["mfa"], ISSUER, 300);
    assert_eq!(
        as_token(&forged).whoami().await.expect_err("forged").code(),
        Some("unauthorized")
    );
}

/// The admin center's sign-in takes an identity token too, through the same check as the
/// API; a token the API refuses does not sign in.
#[tokio::test(flavor = "multi_thread")]
async fn identity_tokens_sign_in_to_the_admin_center() {
    let (env, idp, _dir) = with_provider("oidc_web").await;
    let base = env.deployment.server_url();
    let http = crate::web::http::client();
    let form = http
        .get(format!("{base}/login"))
        .send()
        .await
        .expect("form");
    let body = form.text().await.expect("body");
    assert!(
        body.contains("name=\"id_token\""),
        "the form offers identity tokens"
    );
    let sign_in = |token: String| {
        let (http, base) = (http.clone(), base.clone());
        async move { crate::web::http::login(&http, &base, "id_token", &token).await }
    };
    let signed = sign_in(idp.token("carol", &["pwd", "otp"], ISSUER, 300)).await;
    let session = crate::web::http::session_cookie(&signed);
    let page = crate::web::http::get(&base, &session, "/requests").await;
    assert_eq!(page.status(), 200);
    assert!(page.text().await.expect("page").contains("carol"));
    let refused = sign_in(idp.token("carol", &["pwd"], "https://evil.example", 300)).await;
    assert_eq!(refused.status(), 401);
}
