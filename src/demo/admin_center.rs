//! What the demo tells about the admin center: its URL (the API's, same origin) and the
//! demo users' API keys to sign in with. The keys are the sandbox's own, made for this
//! run and gone with it.

use super::deployment::Deployment;
use super::DEMO_USERS;

/// The lines the demo prints, one per user after the URL.
pub(super) fn lines(deployment: &Deployment) -> Vec<String> {
    let mut out = vec![format!(
        "    Admin center: {}/ (sign in with an API key; the browser must trust the demo's CA, ca.pem beside the config)",
        deployment.server_url()
    )];
    for (user, role, _) in DEMO_USERS {
        if let Some(key) = deployment.api_keys.get(*user) {
            out.push(format!("      {user:<6} ({role}): {key}"));
        }
    }
    out
}
