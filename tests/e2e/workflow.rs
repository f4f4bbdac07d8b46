//! The lockbox workflow: JIT rules, staged and quorum approvals, every state and refusal,
//! the protection policy, extension, break-glass and configuration reload.

use lockbox::policy::{AccessLevel, NewRequest, RequestStatus};

use crate::harness::{db_error, Env, Options};

fn ask(env: &Env, access: AccessLevel, duration: &str) -> NewRequest {
    NewRequest {
        database: env.db.clone(),
        ticket: "SUP-9".into(),
        reason: "customer reports slow checkout".into(),
        access,
        duration: Some(duration.into()),
        ..NewRequest::default()
    }
}

async fn status(env: &Env, id: &str) -> RequestStatus {
    env.client("dave")
        .show_request(id)
        .await
        .expect("show")
        .status
}

fn events_of(env: &Env, id: &str) -> Vec<String> {
    env.audit_of("request", id)
        .iter()
        .filter_map(|r| r["event"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn write_access_goes_through_a_support_lead_then_the_customer() {
    let env = Env::start("wf_stages").await;
    let id = env
        .client("eve")
        .create_request(&ask(&env, AccessLevel::Write, "1h"))
        .await
        .expect("create")
        .id
        .0;
    assert_eq!(status(&env, &id).await, RequestStatus::PendingInternal);
    // The customer cannot act before the provider's own stage is done.
    let early = env
        .client("carol")
        .approve(&id, "fine")
        .await
        .expect_err("too early");
    assert_eq!(early.code(), Some("forbidden"), "{early}");
    env.client("lena")
        .approve(&id, "lead: justified")
        .await
        .expect("lead");
    assert_eq!(status(&env, &id).await, RequestStatus::PendingCustomer);
    env.client("carol")
        .approve(&id, "customer: ok")
        .await
        .expect("carol");
    let shown = env.client("eve").show_request(&id).await.expect("show");
    assert_eq!(shown.status, RequestStatus::Active);
    assert_eq!(shown.approvers(), vec!["lena", "carol"]);
    let path: Vec<RequestStatus> = shown.history.iter().map(|t| t.to).collect();
    assert_eq!(
        path,
        [
            RequestStatus::PendingInternal,
            RequestStatus::PendingCustomer,
            RequestStatus::Approved
        ]
    );
    assert!(shown.history.iter().all(|t| !t.by.is_empty()));
    assert_eq!(
        events_of(&env, &id),
        ["created", "customer_notified", "approved"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn nobody_approves_their_own_request_and_one_person_counts_once() {
    let env = Env::with(
        "wf_quorum",
        Options {
            policy: "\n[[rules]]\nname = \"two-customers\"\ncustomer_approvals = 2\n",
            ..Options::default()
        },
    )
    .await;
    let own = env
        .client("selma")
        .create_request(&ask(&env, AccessLevel::Read, "1h"))
        .await
        .expect("create")
        .id
        .0;
    let refused = env
        .client("selma")
        .approve(&own, "me")
        .await
        .expect_err("self");
    assert_eq!(refused.code(), Some("forbidden"));

    let id = env.request_for("eve", "1h", AccessLevel::Read).await;
    env.client("carol")
        .approve(&id, "one")
        .await
        .expect("carol");
    assert_eq!(
        status(&env, &id).await,
        RequestStatus::PendingCustomer,
        "1 of 2"
    );
    let twice = env
        .client("carol")
        .approve(&id, "again")
        .await
        .expect_err("twice");
    assert_eq!(twice.code(), Some("conflict"), "{twice}");
    assert_eq!(status(&env, &id).await, RequestStatus::PendingCustomer);
    env.client("cleo").approve(&id, "two").await.expect("cleo");
    assert_eq!(status(&env, &id).await, RequestStatus::Active, "2 of 2");
    assert_eq!(
        events_of(&env, &id),
        ["created", "approval_recorded", "approved"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deny_by_any_required_approver_ends_the_request() {
    let env = Env::with(
        "wf_deny",
        Options {
            policy: "\n[[rules]]\nname = \"two-customers\"\ncustomer_approvals = 2\n",
            ..Options::default()
        },
    )
    .await;
    let id = env.request_for("eve", "1h", AccessLevel::Read).await;
    env.client("carol")
        .approve(&id, "yes")
        .await
        .expect("carol");
    env.client("cleo")
        .deny(&id, "not during the sale")
        .await
        .expect("deny");
    assert_eq!(status(&env, &id).await, RequestStatus::Denied);
    let late = env
        .client("selma")
        .approve(&id, "late")
        .await
        .expect_err("ended");
    assert_eq!(late.code(), Some("conflict"));
    let token = env.client("eve").token(&id).await.expect_err("no token");
    assert_eq!(token.code(), Some("conflict"));
}

#[tokio::test(flavor = "multi_thread")]
async fn rules_deny_without_mfa_and_cap_durations() {
    let env = Env::with(
        "wf_rules",
        Options {
            policy: "\n[[rules]]\nname = \"mfa\"\nmfa = false\ndeny = \"sign in with MFA first\"\n\
                     \n[[rules]]\nname = \"short-writes\"\naccess = [\"write\"]\nmax_duration = \"30m\"\ninternal_approvals = 1\n",
            ..Options::default()
        },
    )
    .await;
    let err = env
        .client("nomfa")
        .create_request(&ask(&env, AccessLevel::Read, "1h"))
        .await
        .expect_err("no MFA");
    assert_eq!(err.code(), Some("forbidden"));
    assert!(
        err.to_string().contains("sign in with MFA first") && err.to_string().contains("`mfa`"),
        "{err}"
    );
    let rejected = env.audit();
    assert!(
        rejected
            .iter()
            .any(|r| r["event"] == "rejected" && r["engineer"] == "nomfa"),
        "the refused attempt is on the record"
    );
    let capped = env
        .client("eve")
        .create_request(&ask(&env, AccessLevel::Write, "4h"))
        .await
        .expect("create");
    assert_eq!(capped.duration_secs, 1800);
    assert_eq!(capped.requested_duration_secs, Some(4 * 3600));
    assert_eq!(capped.rules_applied, vec!["short-writes"]);
    assert_eq!(capped.status, RequestStatus::PendingInternal);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_default_rules_are_safe() {
    let env = Env::start("wf_defaults").await;
    let err = env
        .client("nomfa")
        .create_request(&ask(&env, AccessLevel::Read, "1h"))
        .await
        .expect_err("no MFA");
    assert!(err.to_string().contains("require-mfa"), "{err}");
    for access in [AccessLevel::Write, AccessLevel::Admin] {
        let r = env
            .client("eve")
            .create_request(&ask(&env, access, "1h"))
            .await
            .expect("create");
        assert_eq!(
            (r.status, r.internal_required),
            (RequestStatus::PendingInternal, 1)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_changes_are_audited_and_unprotected_databases_skip_the_customer() {
    let env = Env::start("wf_policy").await;
    let view = env.client("alice").policy().await.expect("show");
    assert_eq!(view.protect, "all");
    let refused = env
        .client("carol")
        .set_policy("none")
        .await
        .expect_err("not admin");
    assert_eq!(refused.code(), Some("forbidden"));
    let unknown = env
        .client("alice")
        .set_policy("nosuchdb")
        .await
        .expect_err("unknown");
    assert_eq!(unknown.code(), Some("invalid"));

    let view = env.client("alice").set_policy("other").await.expect("set");
    assert_eq!(view.protected_databases, vec!["other"]);
    assert!(view.unprotected_databases.contains(&env.db));
    assert_eq!(view.changed_by, "alice");
    let audited = env.audit();
    let change = audited
        .iter()
        .find(|r| r["type"] == "admin" && r["event"] == "policy_changed")
        .expect("the change is audited");
    assert_eq!(change["actor"], "alice");
    assert_eq!(change["detail"]["protect_before"], "all");

    // Takes effect for new requests at once: only the provider's stage remains.
    let id = env.request_for("eve", "1h", AccessLevel::Read).await;
    assert_eq!(status(&env, &id).await, RequestStatus::PendingInternal);
    env.client("lena")
        .approve(&id, "lead ok")
        .await
        .expect("lead");
    assert_eq!(status(&env, &id).await, RequestStatus::Active);
}

#[tokio::test(flavor = "multi_thread")]
async fn approvers_may_shorten_and_requesters_may_cancel() {
    let env = Env::start("wf_shorten").await;
    let id = env.request_for("eve", "4h", AccessLevel::Read).await;
    let approved = env
        .client("carol")
        .approve_for(&id, "an hour is enough", Some("1h"))
        .await
        .expect("approve");
    assert_eq!(approved.duration_secs, 3600);
    let window =
        approved.access_expires_at.expect("end") - approved.access_starts_at.expect("start");
    assert_eq!(window.num_seconds(), 3600);
    assert_eq!(approved.approvals[0].shortened_to_secs, Some(3600));

    let mistaken = env.request_for("eve", "1h", AccessLevel::Read).await;
    let not_yours = env
        .client("bob")
        .cancel(&mistaken, "")
        .await
        .expect_err("bob");
    assert_eq!(not_yours.code(), Some("not_found"));
    let cancelled = env
        .client("eve")
        .cancel(&mistaken, "wrong database")
        .await
        .expect("cancel");
    assert_eq!(cancelled.status, RequestStatus::Cancelled);
    let after = env
        .client("carol")
        .approve(&mistaken, "x")
        .await
        .expect_err("cancelled");
    assert_eq!(after.code(), Some("conflict"));
    let active = env.client("eve").cancel(&id, "").await.expect_err("active");
    assert!(active.to_string().contains("revoke"), "{active}");
    assert!(events_of(&env, &mistaken).contains(&"cancelled".to_owned()));
}

#[tokio::test(flavor = "multi_thread")]
async fn per_database_approvers_and_request_expiry_by_rule() {
    let env = Env::with(
        "wf_approvers",
        Options {
            policy: "\n[[rules]]\nname = \"quick\"\nrequest_ttl = \"2s\"\nrequesters = [\"bob\"]\n",
            // Keys of the database's own table: only cleo approves for it.
            upstream_tls: "approvers = [\"cleo\"]",
            ..Options::default()
        },
    )
    .await;
    let named = env.request_for("eve", "1h", AccessLevel::Read).await;
    let carol = env
        .client("carol")
        .approve(&named, "ok")
        .await
        .expect_err("not listed");
    assert!(
        carol.to_string().contains("not an approver of database"),
        "{carol}"
    );
    env.client("cleo")
        .approve(&named, "ok")
        .await
        .expect("cleo is listed");
    assert_eq!(status(&env, &named).await, RequestStatus::Active);
    // An approver of other databases neither sees nor ends its sessions, nor revokes it.
    let token = env.client("eve").token(&named).await.expect("token").token;
    let (_client, _conn) = env.connect("eve", &token).await.expect("login");
    let live = env
        .client("cleo")
        .list_sessions()
        .await
        .expect("cleo lists");
    assert_eq!(live.len(), 1, "cleo sees the session of her database");
    let carols = env
        .client("carol")
        .list_sessions()
        .await
        .expect("carol lists");
    assert!(carols.is_empty(), "carol sees no session of hr: {carols:?}");
    let kill = env
        .client("carol")
        .kill_session(&live[0].session_id, "not mine to end")
        .await
        .expect_err("carol may not end it");
    // Nor learn it exists: not live to her, as an unknown session is.
    assert_eq!(kill.code(), Some("not_found"), "{kill}");
    let revoke = env
        .client("carol")
        .revoke(&named, "not mine to revoke")
        .await
        .expect_err("carol may not revoke it");
    assert_eq!(revoke.code(), Some("forbidden"), "{revoke}");
    assert_eq!(status(&env, &named).await, RequestStatus::Active);
    env.client("cleo")
        .kill_session(&live[0].session_id, "cleo ends it")
        .await
        .expect("cleo ends the session of her database");
    let id = env.request_for("bob", "1h", AccessLevel::Read).await;
    assert_eq!(status(&env, &id).await, RequestStatus::PendingCustomer);
    env.wait_for_audit("the request to expire", |records| {
        records
            .iter()
            .any(|r| r["request_id"] == id.as_str() && r["event"] == "expired")
    })
    .await;
    assert_eq!(status(&env, &id).await, RequestStatus::Expired);
    let late = env
        .client("carol")
        .approve(&id, "late")
        .await
        .expect_err("expired");
    assert_eq!(late.code(), Some("conflict"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_extension_goes_through_approvals_and_keeps_the_session_alive() {
    let env = Env::start("wf_extend").await;
    // The window must outlast the login and the five calls before the extension's approval,
    // on a busy machine too.
    let (id, token) = env.approved_token("eve", "8s").await;
    let first_end = env.window_end(&id).await;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    let extension = env
        .client("eve")
        .extend(&id, "1h", "the fix needs longer")
        .await
        .expect("extend");
    assert_eq!(
        extension.extends.as_ref().map(|e| e.0.as_str()),
        Some(id.as_str())
    );
    let chained = env
        .client("eve")
        .extend(&extension.id.0, "1h", "more")
        .await
        .expect_err("an extension is not extended");
    assert_eq!(chained.code(), Some("conflict"));
    assert_eq!(extension.status, RequestStatus::PendingCustomer);
    let not_engineer = env
        .client("bob")
        .extend(&id, "1h", "me too")
        .await
        .expect_err("bob");
    assert_eq!(not_engineer.code(), Some("not_found"));
    env.client("carol")
        .approve(&extension.id.0, "ok, one more hour")
        .await
        .expect("approve extension");
    let original = env.client("eve").show_request(&id).await.expect("show");
    let end = original.access_expires_at.expect("end");
    assert!(end - original.access_starts_at.expect("start") > chrono::Duration::minutes(59));
    // Past the original window's end the session still works.
    Env::sleep_past(first_end).await;
    client
        .simple_query("SELECT 'still here'")
        .await
        .expect("session survived");
    assert!(events_of(&env, &id).contains(&"extended".to_owned()));
    // A fresh token covers the extended window.
    let fresh = env.client("eve").token(&id).await.expect("token");
    assert_eq!(fresh.expires_at, Some(end));
    // The extension is part of the grant's window now: revoking it alone would leave the
    // time in place, so it is refused, naming the grant to revoke.
    let alone = env
        .client("carol")
        .revoke(&extension.id.0, "no more time")
        .await
        .expect_err("an extension in effect");
    assert_eq!(alone.code(), Some("conflict"), "{alone}");
    assert!(alone.to_string().contains(&id), "{alone}");
    let original = env.client("eve").show_request(&id).await.expect("show");
    assert_eq!(original.access_expires_at, Some(end));
}

#[tokio::test(flavor = "multi_thread")]
async fn break_glass_is_immediate_flagged_capped_and_reviewed() {
    let env = Env::start("wf_glass").await;
    let mut new = ask(&env, AccessLevel::Write, "8h");
    new.break_glass = true;
    let refused = env
        .client("eve")
        .create_request(&new)
        .await
        .expect_err("not oncall");
    assert_eq!(refused.code(), Some("forbidden"));
    assert!(
        env.audit().iter().any(|r| r["event"] == "rejected"
            && r["engineer"] == "eve"
            && r["break_glass"] == true),
        "a refused break-glass attempt is on the record"
    );
    let granted = env
        .client("oncall")
        .create_request(&new)
        .await
        .expect("break glass");
    assert_eq!(granted.status, RequestStatus::Approved);
    assert!(granted.break_glass);
    assert_eq!(
        granted.duration_secs, 1800,
        "capped by policy.break_glass.max_duration"
    );
    let id = granted.id.0.clone();
    let token = env.client("oncall").token(&id).await.expect("token").token;
    let (client, _conn) = env.connect("oncall", &token).await.expect("login");
    client
        .simple_query("SELECT 'outage fix'")
        .await
        .expect("query");
    let records = env
        .wait_for_audit("the outcome", |records| {
            records
                .iter()
                .any(|r| r["type"] == "outcome" && r["request_id"] == id.as_str())
        })
        .await;
    let of_request: Vec<_> = records
        .iter()
        .filter(|r| r["request_id"] == id.as_str())
        .collect();
    assert!(of_request.len() >= 4);
    for r in &of_request {
        assert_eq!(r["break_glass"], true, "every record is flagged: {r}");
    }
    assert!(events_of(&env, &id).contains(&"break_glass_granted".to_owned()));

    let review = env
        .client("carol")
        .list_requests_where(None, true, true)
        .await
        .expect("review list");
    assert_eq!(
        review.iter().map(|r| r.id.0.as_str()).collect::<Vec<_>>(),
        vec![id.as_str()]
    );
    let own = env
        .client("oncall")
        .acknowledge(&id, "me")
        .await
        .expect_err("not approver");
    assert_eq!(own.code(), Some("forbidden"));
    env.client("carol")
        .acknowledge(&id, "reviewed: justified")
        .await
        .expect("ack");
    let review = env
        .client("carol")
        .list_requests_where(None, true, true)
        .await
        .expect("list");
    assert!(review.is_empty());
    let extend = env
        .client("oncall")
        .extend(&id, "1h", "more")
        .await
        .expect_err("no extension");
    assert_eq!(extend.code(), Some("conflict"));
}

#[tokio::test(flavor = "multi_thread")]
async fn reloading_the_configuration_keeps_live_sessions_and_refuses_bad_files() {
    let env = Env::start("wf_reload").await;
    let (_, token) = env.approved_token("eve", "1h").await;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    let original = std::fs::read_to_string(&env.config_path).expect("config");

    // An invalid file: refused with the key named, the running configuration stays.
    std::fs::write(
        &env.config_path,
        format!("{original}\n[timings]\nbogus = 1\n"),
    )
    .expect("write");
    let err = env.client("alice").reload().await.expect_err("invalid");
    assert_eq!(err.code(), Some("invalid_config"));
    assert!(
        err.to_string().contains("bogus") || err.to_string().contains("timings"),
        "{err}"
    );
    let refused = env.client("carol").reload().await.expect_err("admins only");
    assert_eq!(refused.code(), Some("forbidden"));

    // A valid change (a rule) applies to new requests; the live session goes on.
    std::fs::write(
        &env.config_path,
        format!("{original}\n[[rules]]\nname = \"reads-need-a-lead\"\naccess = [\"read\"]\ninternal_approvals = 1\n"),
    )
    .expect("write");
    let report = env.client("alice").reload().await.expect("reload");
    assert_eq!(report.rules, 1);
    client
        .simple_query("SELECT 'after reload'")
        .await
        .expect("live session kept");
    let id = env.request_for("bob", "1h", AccessLevel::Read).await;
    assert_eq!(status(&env, &id).await, RequestStatus::PendingInternal);
    let events: Vec<_> = env
        .audit()
        .into_iter()
        .filter(|r| r["type"] == "admin")
        .filter_map(|r| r["event"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(events, ["config_reload_rejected", "config_reloaded"]);

    // A changed `[policy] protect` in the file is adopted, as an audited policy change.
    std::fs::write(
        &env.config_path,
        format!("{original}\n[policy]\nprotect = [\"other\"]\n"),
    )
    .expect("write");
    env.client("alice").reload().await.expect("reload");
    let view = env.client("alice").policy().await.expect("policy");
    assert_eq!(view.protected_databases, vec!["other"]);
    assert!(env
        .audit()
        .iter()
        .any(|r| r["event"] == "policy_changed" && r["actor"] == "alice"));
    let (_code, _) = db_error(
        &client
            .simple_query("SELECT 1/0")
            .await
            .expect_err("still relays errors"),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_a_served_configuration() {
    let mut env = Env::start("wf_sighup").await;
    env.stop().await;
    let serve = crate::audit_durability::ServeProcess::start(&env).await;
    let pid = serve.0.id().to_string();
    let original = std::fs::read_to_string(&env.config_path).expect("config");
    let hangup = || {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .expect("kill");
        assert!(status.success());
    };
    std::fs::write(
        &env.config_path,
        format!("{original}\nnot toml at all [[[\n"),
    )
    .expect("write");
    hangup();
    env.wait_for_audit("the rejected reload", |r| {
        r.iter()
            .any(|r| r["event"] == "config_reload_rejected" && r["actor"] == "SIGHUP")
    })
    .await;
    let before = env.request_for("eve", "1h", AccessLevel::Read).await;
    assert_eq!(
        status(&env, &before).await,
        RequestStatus::PendingCustomer,
        "old rules stay"
    );

    std::fs::write(
        &env.config_path,
        format!("{original}\n[[rules]]\nname = \"reads-need-a-lead\"\naccess = [\"read\"]\ninternal_approvals = 1\n"),
    )
    .expect("write");
    hangup();
    env.wait_for_audit("the reload", |r| {
        r.iter()
            .any(|r| r["event"] == "config_reloaded" && r["actor"] == "SIGHUP")
    })
    .await;
    let after = env.request_for("eve", "1h", AccessLevel::Read).await;
    assert_eq!(status(&env, &after).await, RequestStatus::PendingInternal);
    drop(serve);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_later_start_is_approved_but_not_active_until_it_opens() {
    let env = Env::start("wf_start").await;
    let mut later = ask(&env, AccessLevel::Read, "1h");
    later.starts_at = Some(chrono::Utc::now() + chrono::Duration::hours(2));
    let id = env
        .client("eve")
        .create_request(&later)
        .await
        .expect("create")
        .id
        .0;
    env.client("carol")
        .approve(&id, "ok for tonight")
        .await
        .expect("approve");
    assert_eq!(
        status(&env, &id).await,
        RequestStatus::Approved,
        "not active yet"
    );
    let token = env.client("eve").token(&id).await.expect("token").token;
    let refused = env
        .connect("eve", &token)
        .await
        .expect_err("window not open");
    let (code, message) = db_error(&refused);
    assert_eq!(code, "28P01");
    assert!(message.contains("has not opened yet"), "{message}");
    // Not yet active: no extension; cancelling is still possible.
    let extend = env
        .client("eve")
        .extend(&id, "1h", "more")
        .await
        .expect_err("not active");
    assert_eq!(extend.code(), Some("conflict"));
    env.client("eve")
        .cancel(&id, "not needed")
        .await
        .expect("cancel");

    let mut far = ask(&env, AccessLevel::Read, "1h");
    far.starts_at = Some(chrono::Utc::now() + chrono::Duration::days(40));
    let err = env
        .client("eve")
        .create_request(&far)
        .await
        .expect_err("too far ahead");
    assert_eq!(err.code(), Some("invalid"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_with_invisible_characters_or_an_endless_reason_is_refused() {
    let env = Env::start("wf_text").await;
    let mut reversed = ask(&env, AccessLevel::Read, "1h");
    // Shown as "SUP-9 (sales)" with the database name reversed by the override.
    reversed.ticket = "SUP-9\u{202e}".into();
    let mut hidden = ask(&env, AccessLevel::Read, "1h");
    hidden.ticket = "SUP-\u{200b}9".into();
    let mut endless = ask(&env, AccessLevel::Read, "1h");
    endless.reason = "x".repeat(1_000_000);
    for (what, new) in [
        ("bidi override", reversed),
        ("zero-width space", hidden),
        ("a megabyte of reason", endless),
    ] {
        let refused = env
            .client("eve")
            .create_request(&new)
            .await
            .expect_err(what);
        assert_eq!(refused.code(), Some("invalid"), "{what}: {refused}");
    }
    let id = env.request_for("eve", "1h", AccessLevel::Read).await;
    let long = env
        .client("carol")
        .approve(&id, &"y".repeat(5_000))
        .await
        .expect_err("a justification past 4,000 characters");
    assert_eq!(long.code(), Some("invalid"), "{long}");
    let filed = env.client("dave").list_requests(None).await.expect("list");
    let ids: Vec<&str> = filed.iter().map(|r| r.id.0.as_str()).collect();
    assert_eq!(ids, [id.as_str()], "only the plain request was filed");
    assert!(
        filed[0].approvals.is_empty(),
        "the long justification counted"
    );
}

/// A reload that takes the engineer role away (or the user) refuses new sessions on tokens
/// issued before it, as it refuses the user's API key; the live session keeps its grant,
/// and the role given back admits the token again. (An attack review logged in on the
/// token of an engineer removed from the configuration.)
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_takes_the_engineer_role_away_refuses_new_sessions() {
    let env = Env::start("wf_reload_engineer").await;
    let (_, token) = env.approved_token("eve", "1h").await;
    let (live, _conn) = env.connect("eve", &token).await.expect("login");
    let original = std::fs::read_to_string(&env.config_path).expect("config");
    let (eve_block, roles) = crate::harness::user_block(&original, "eve");
    for changed in [
        original.replace(
            eve_block,
            &eve_block.replace(roles, "roles = [\"approver\"]"),
        ),
        original.replace(&format!("[[users]]{eve_block}"), ""),
    ] {
        assert_ne!(changed, original);
        std::fs::write(&env.config_path, &changed).expect("write");
        env.client("alice").reload().await.expect("reload");
        let refused = env
            .connect("eve", &token)
            .await
            .expect_err("no longer an engineer");
        let (code, message) = db_error(&refused);
        assert_eq!(code, "28P01", "{message}");
        assert!(message.contains("no longer an engineer"), "{message}");
        live.simple_query("SELECT 'kept'")
            .await
            .expect("the live session goes on");
    }
    std::fs::write(&env.config_path, &original).expect("write");
    env.client("alice").reload().await.expect("reload");
    env.connect("eve", &token).await.expect("an engineer again");
}
