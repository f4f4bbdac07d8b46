//! How a grant's role ends, asked of the provisioner itself against a real server: an end
//! for good (revoked, cancelled, completed) is never undone, not by a later end of a window
//! (an expired session's, which reads the store first and may finish after a revocation)
//! nor by an extension; an end of a window is undone by an extension past it, so a grant
//! extended as its window ended takes new logins.

use lockbox::config::{Config, Database};
use lockbox::ids::RequestId;
use lockbox::policy::Request;
use lockbox::provision::Provisioner;

use crate::harness::Env;

struct Grant {
    env: Env,
    db: Database,
    request: Request,
    id: RequestId,
    role: String,
    provisioner: Provisioner,
}

/// An approved grant of an hour, logged in once (its role made).
async fn logged_in(name: &str) -> Grant {
    let env = Env::provisioned(name).await;
    let (id, _token) = env.approved_token("eve", "1h").await;
    let request = env.client("eve").show_request(&id).await.expect("show");
    let config = Config::load(&env.config_path).expect("config");
    let db = config
        .databases
        .get(&request.database)
        .expect("the grant's database")
        .clone();
    let provisioner = Provisioner::default();
    provisioner
        .login(&db, &request, None)
        .await
        .expect("first login");
    let grant = Grant {
        role: format!("lockbox_{id}"),
        id: RequestId(id),
        env,
        db,
        request,
        provisioner,
    };
    assert!(grant.role_exists());
    grant
}

impl Grant {
    fn role_exists(&self) -> bool {
        self.env.superuser_sql(&format!(
            "SELECT count(*) FROM pg_roles WHERE rolname = '{}'",
            self.role
        )) == "1"
    }

    fn window_end(&self) -> chrono::DateTime<chrono::Utc> {
        self.request.access_expires_at.expect("a window")
    }

    /// The grant as an extension by `more` leaves it.
    fn extended(&self, more: chrono::TimeDelta) -> Request {
        let mut later = self.request.clone();
        later.access_expires_at = Some(self.window_end() + more);
        later
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_late_end_of_an_older_window_does_not_undo_a_revocation() {
    let g = logged_in("role_ends_revoked_first").await;
    g.provisioner
        .end(&g.db, &g.id)
        .await
        .expect("the revocation");
    assert!(!g.role_exists());
    let older = g.window_end() - chrono::TimeDelta::minutes(30);
    g.provisioner
        .end_window(&g.db, &g.id, older)
        .await
        .expect("an expired session's end");
    let again = g.provisioner.login(&g.db, &g.request, None).await;
    assert!(again.is_err(), "a revoked grant's login");
    assert!(!g.role_exists(), "a revoked grant's role made again");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_extension_after_a_revocation_and_a_window_end_does_not_bring_the_role_back() {
    let g = logged_in("role_ends_revoked_extended").await;
    let hour = chrono::TimeDelta::hours(1);
    g.provisioner
        .end(&g.db, &g.id)
        .await
        .expect("the revocation");
    g.provisioner
        .end_window(&g.db, &g.id, g.window_end())
        .await
        .expect("an expired session's end");
    g.provisioner
        .extend(&g.db, &g.id, g.window_end() + hour)
        .await
        .expect("a late extension");
    let again = g.provisioner.login(&g.db, &g.extended(hour), None).await;
    assert!(again.is_err(), "a revoked grant's login");
    assert!(!g.role_exists(), "a revoked grant's role made again");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_window_ended_then_extended_past_takes_a_new_login() {
    let g = logged_in("role_ends_window_extended").await;
    let hour = chrono::TimeDelta::hours(1);
    g.provisioner
        .end_window(&g.db, &g.id, g.window_end())
        .await
        .expect("an expired session's end");
    assert!(!g.role_exists());
    let same = g.provisioner.login(&g.db, &g.request, None).await;
    assert!(same.is_err(), "a login in the window that ended");
    g.provisioner
        .login(&g.db, &g.extended(hour), None)
        .await
        .expect("a login in the extended window");
    assert!(g.role_exists(), "the role made again");
}
