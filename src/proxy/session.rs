//! One client connection, from accept to close: negotiation, the token login, admission,
//! the upstream login, then the relay.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::aftermath::Aftermath;
use super::early_dial::EarlyDial;
use super::negotiate::{self, NegotiationError, Opened};
use super::preauth;
use super::reaper::Reaper;
use super::registry::{CancelTarget, DropReason};
use super::relay::{CancelKey, End, Grant, Limits, Relay, RelayEnd};
use super::stream::BoxStream;
use super::upstream;
use super::Proxy;
use crate::audit::SessionFields;
use crate::ids::SessionId;

mod end;
mod login;
mod place_wait;
mod search_path;
mod upstream_login;
pub(super) use end::session_record;
use end::{audit_auth_failure, ended_by_proxy, finish, record_connected};
use login::{admit_token, pre_auth_timed_out, read_token};
use search_path::{login_search_path_clear, search_path_shadows_catalog};
use upstream_login::{connect_upstream, SpareSlots};

/// Ends a session's registration when dropped.
struct Registration(Arc<super::registry::Registry>, SessionId);

impl Drop for Registration {
    fn drop(&mut self) {
        self.0.unregister(&self.1);
    }
}

/// Fires when the proxy must end the session.
type KillSwitch = tokio::sync::watch::Receiver<super::registry::Control>;
use crate::policy::Admission;
use crate::wire::{self, sqlstate, Severity, Startup};

/// How long admission of a presented token may take (the state store's answer); the client's
/// own part, up to its token, is bounded by `preauth::PREAUTH_TIMEOUT`.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest the grant's upstream role may take to prepare (or the database's functions to
/// read) at admission; the service login alone is bounded at 10 s.
pub(super) const PROVISION_TIMEOUT: Duration = Duration::from_secs(20);

/// Startup parameters passed upstream. Anything that could change role, privileges or
/// protocol behaviour is left out; `options` and `replication` are refused outright.
const PASSED_PARAMETERS: &[&str] = &[
    "application_name",
    "DateStyle",
    "TimeZone",
    "IntervalStyle",
    "extra_float_digits",
];

/// A login failure: what the client is told, and what the audit says.
struct LoginError {
    sqlstate: &'static str,
    message: String,
    /// Audited as `authentication_failed` (a refused credential) rather than only logged.
    audited: bool,
}

fn login_error(sqlstate: &'static str, message: impl Into<String>) -> LoginError {
    LoginError {
        sqlstate,
        message: message.into(),
        audited: true,
    }
}

/// The identity a client claimed at startup.
struct Claimed {
    user: String,
    database: String,
}

/// Serves one connection. A session the proxy ended hands back the `Reaper` that makes
/// sure its upstream backend is gone, and a client still to be told why its session ended
/// its `Farewell`, for the proxy to run as a task of their own.
pub async fn serve(
    proxy: Arc<Proxy>,
    tcp: TcpStream,
    peer: SocketAddr,
    id: SessionId,
    pending: preauth::Pending,
) -> Option<Aftermath> {
    let client_fd = std::os::fd::AsRawFd::as_raw_fd(&tcp);
    // However the session's task ends, a panic included, its registration (its place under
    // its grant's session limit) ends with it.
    let _registration = Registration(proxy.registry.clone(), id.clone());
    // Until it sends its token a connection proves nothing: it is bounded in time and
    // shed when its source opens too many, or the proxy is full (`pending`, see `preauth`).
    let deadline = tokio::time::Instant::now() + preauth::PREAUTH_TIMEOUT;
    let shed = pending.shed.clone();
    let negotiated = tokio::select! {
        opened = tokio::time::timeout_at(deadline, negotiate::negotiate(tcp, proxy.tls.as_ref(), &pending.progress)) => opened,
        () = shed.notified() => {
            tracing::debug!("unauthenticated connection shed for a newer one");
            return None;
        }
    };
    let Ok(opened) = negotiated else {
        tracing::debug!("startup timed out");
        pre_auth_timed_out(&proxy, &id, peer, &Startup::default());
        return None;
    };
    let (mut stream, tls, startup, mut cbuf) = match opened {
        Ok(Opened::Session {
            stream,
            tls,
            startup,
            leftover,
        }) => (stream, tls, startup, leftover),
        Ok(Opened::Cancel {
            pid,
            secret,
            stream,
        }) => {
            drop(pending);
            forward_cancel(&proxy, pid, secret).await;
            negotiate::close_after_cancel(stream).await;
            return None;
        }
        Err((NegotiationError::Protocol { sqlstate, message }, Some(mut stream))) => {
            tracing::debug!(%message, "startup refused");
            send_fatal(&mut stream, sqlstate, &message).await;
            return None;
        }
        Err((e, _)) => {
            tracing::debug!(error = %e, "connection ended during negotiation");
            return None;
        }
    };
    if login::takes_tokens_over(&proxy, tls, peer) {
        pending.progress.reached(preauth::Stage::Started);
    }
    let mut early = None;
    let presented = tokio::select! {
        token = tokio::time::timeout_at(
            deadline,
            read_token(&proxy, &mut stream, tls, peer, &startup, &mut cbuf, &mut early),
        ) => token,
        () = shed.notified() => {
            tracing::debug!("unauthenticated connection shed for a newer one");
            return None;
        }
    };
    drop(pending);
    let login = match presented {
        Ok(Ok((claimed, token))) => tokio::time::timeout(
            LOGIN_TIMEOUT,
            admit_token(&proxy, (&id, client_fd), peer, claimed, &token, &mut early),
        )
        .await
        .unwrap_or_else(|_| {
            Err(LoginError {
                sqlstate: sqlstate::PROTOCOL_VIOLATION,
                message: "login timed out".into(),
                audited: false,
            })
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => {
            pre_auth_timed_out(&proxy, &id, peer, &startup);
            send_fatal(&mut stream, sqlstate::PROTOCOL_VIOLATION, "login timed out").await;
            return None;
        }
    };
    let (admission, claimed, kill) = match login {
        Ok(done) => done,
        Err(e) => {
            // Closed before the client is told: nothing of a login went up on it.
            drop(early);
            proxy.registry.trusted.lose(peer.ip());
            proxy.registry.unregister(&id);
            if e.audited && proxy.failed_login(peer.ip()) {
                audit_auth_failure(&proxy, &id, peer, &startup, &e.message);
            }
            tracing::info!(reason = %e.message, "login refused");
            send_fatal(&mut stream, e.sqlstate, &e.message).await;
            return None;
        }
    };
    let span = tracing::Span::current();
    span.record("user", claimed.user.as_str());
    span.record("database", claimed.database.as_str());
    span.record("request_id", admission.request.id.0.as_str());
    cbuf.reserve(8192);
    let registry = proxy.registry.clone();
    let after = run_admitted(
        proxy,
        (stream, client_fd),
        peer,
        id.clone(),
        admission,
        claimed,
        &startup,
        cbuf,
        kill,
        early,
    )
    .await;
    // Every way out of a session, early ones included, ends its registration.
    registry.unregister(&id);
    after.into_work()
}

#[allow(clippy::too_many_arguments)]
async fn run_admitted(
    proxy: Arc<Proxy>,
    (mut stream, client_fd): (BoxStream, std::os::fd::RawFd),
    peer: SocketAddr,
    id: SessionId,
    admission: Admission,
    claimed: Claimed,
    startup: &Startup,
    cbuf: BytesMut,
    kill: KillSwitch,
    early: Option<EarlyDial>,
) -> Aftermath {
    let lockbox = &proxy.lockbox;
    let config = lockbox.config();
    let Some(db) = config.databases.get(&claimed.database) else {
        send_fatal(
            &mut stream,
            sqlstate::INVALID_AUTHORIZATION,
            "database is not served here",
        )
        .await;
        return Aftermath::default();
    };
    let mut passed: Vec<(String, String)> = startup
        .params
        .iter()
        .filter(|(k, _)| PASSED_PARAMETERS.iter().any(|p| p.eq_ignore_ascii_case(k)))
        .cloned()
        .collect();
    // As a startup parameter it is the session's default, so RESET cannot lift it.
    if let Some(ms) = admission.request.statement_timeout_ms {
        passed.push(("statement_timeout".into(), ms.to_string()));
    }
    let slots = SpareSlots {
        spares: &proxy.registry.spares,
        enabled: config.spare_backends,
        ends_at: deadline_for(&admission),
    };
    let (mut upstream, login) =
        match connect_upstream(lockbox, slots, db, &admission.request, &passed, early).await {
            Ok(connected) => connected,
            Err(refused) => {
                if refused.at_grant_limit {
                    let request = &admission.request;
                    login::refused_session(&proxy, &id, peer, request, refused.message);
                }
                send_fatal(&mut stream, refused.code, refused.message).await;
                return Aftermath::default();
            }
        };
    // With statement rules in force, the guard must know the database's own functions
    // (fail closed: without them no statement could be checked); under a row limit, so
    // must the exemption of catalog reads, which a function of the database could feed.
    let row_limit = admission.request.max_rows.is_some();
    let code_generation = lockbox.provisioner.code_generation(&db.name);
    let needs_code = crate::guard::has_guardrails(&db.guardrails) || row_limit;
    let (code, code_updates) = if needs_code {
        let refresh = config.catalog_refresh;
        let read = tokio::time::timeout(
            PROVISION_TIMEOUT,
            lockbox.provisioner.database_code(db, refresh),
        )
        .await
        .unwrap_or_else(|_| {
            Err(crate::provision::ProvisionError::Timeout {
                database: db.name.clone(),
                secs: PROVISION_TIMEOUT.as_secs(),
            })
        });
        match read {
            Ok((read, updates)) => (read, Some(updates)),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the database's functions");
                send_fatal(
                    &mut stream,
                    sqlstate::CONNECTION_FAILURE,
                    "lockbox cannot read this database's functions to enforce its rules",
                )
                .await;
                return Aftermath::default();
            }
        }
    } else {
        let now = code_generation.load(std::sync::atomic::Ordering::SeqCst);
        (Arc::new(crate::provision::CodeRead::none(now)), None)
    };
    let code_generation_at_login = code.generation;
    let database_code = code.code.clone();
    let catalog_reach = database_code.reach(&db.guardrails);
    // What the login's search path shadows matters to catalog reads under a row limit, and,
    // where tables are off limits, to pg_dump's `set_config(name, …) FROM pg_settings`,
    // classed by the setting its row names only while that finds the catalog (a third
    // review put an off-limits schema on the search path through `ALTER DATABASE … SET
    // search_path = shadow, pg_catalog`). Elsewhere a setting so changed is the search path,
    // which no other rule reads, one the server reports (`default_transaction_read_only`,
    // the lexer's: the session ends) or refuses once a query runs (`transaction_read_only`).
    let shadow_matters = row_limit || !db.guardrails.off_limits.is_empty();
    let search_path_shadows_catalog =
        shadow_matters && search_path_shadows_catalog(&mut upstream).await;
    if let Err(message) = login_search_path_clear(&mut upstream, &db.guardrails).await {
        send_fatal(&mut stream, sqlstate::INSUFFICIENT_PRIVILEGE, &message).await;
        return Aftermath::default();
    }
    let request = &admission.request;
    let fields = Arc::new(SessionFields::new(
        id.0.clone(),
        request.id.0.clone(),
        request.ticket.clone(),
        request.engineer.clone(),
        request.database.clone(),
        peer.to_string(),
        request.break_glass,
    ));
    if let Err(e) = record_connected(&lockbox.audit, &fields).await {
        tracing::error!(error = %e, "audit unavailable; refusing session");
        send_fatal(
            &mut stream,
            sqlstate::IO_ERROR,
            "lockbox cannot write its audit log; no session is allowed",
        )
        .await;
        return Aftermath::default();
    }
    proxy.registry.admitted(&id, fields.clone());
    proxy.registry.trusted.earn(peer.ip());
    let cancel_key = proxy.registry.issue_cancel_key(CancelTarget {
        host: db.host.clone(),
        port: db.port,
        backend_pid: upstream.backend_pid,
        backend_secret: upstream.backend_secret,
    });
    let mut hello = BytesMut::new();
    wire::authentication_ok(&mut hello);
    hello.extend_from_slice(&upstream.greeting);
    wire::backend_key_data(&mut hello, cancel_key.0, cancel_key.1);
    super::relay::login_notice(&mut hello, &request.id.0, admission.ends_at);
    wire::ready_for_query(&mut hello, upstream.ready_status);
    let deadline = deadline_for(&admission);
    tracing::info!(
        ends_in_secs = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .as_secs(),
        "session admitted"
    );

    let backend = (upstream.backend_pid, upstream.backend_secret);
    let server_utf8 = super::upstream::greeting_says_utf8(&upstream.greeting);
    let ended = if super::relay::write_flushed(&mut stream, &hello)
        .await
        .is_ok()
    {
        let relay = Relay::new(
            stream,
            upstream.stream,
            cbuf,
            fields.clone(),
            lockbox.audit.clone(),
            config.max_message_size,
            kill,
            deadline,
            Grant {
                access: request.access,
                rules: db.guardrails.clone(),
                limits: Limits {
                    statement_timeout: request
                        .statement_timeout_ms
                        .map(std::time::Duration::from_millis),
                    max_rows: request.max_rows,
                    cancel: Some(CancelKey {
                        host: db.host.clone(),
                        port: db.port,
                        pid: backend.0,
                        secret: backend.1,
                    }),
                    settle_within: config.terminate_after / 2,
                },
                redaction: db.redaction,
                database_functions: database_code.functions,
                database_links: database_code.links,
                code_epoch: 0,
                catalog_reach,
                search_path_shadows_catalog,
                code_generation,
                code_generation_at_login,
                code_updates,
                ends_at: admission.ends_at,
                warn_before: config.warn_before.clone(),
                server_utf8,
            },
        )
        .with_client_fd(client_fd)
        .with_message_memory(
            proxy.registry.message_memory.clone(),
            config.max_message_memory,
        );
        relay.run_to_farewell().await
    } else {
        RelayEnd {
            end: End::ClientGone,
            farewell: None,
            ended_at: tokio::time::Instant::now(),
            backend_may_run_on: false,
        }
    };
    let RelayEnd {
        end,
        farewell,
        ended_at: relay_ended,
        backend_may_run_on,
    } = ended;
    // The server closed: its backend needs neither a cancel nor a reaper, whoever ended it.
    // One whose connection just ended mid-statement may live on: it gets both.
    let backend_gone = end::the_server_ended(&end) && !backend_may_run_on;
    let make_sure = |end: &End| (ended_by_proxy(end) && !backend_gone) || backend_may_run_on;
    // The grant's place is free for its next session now (a client that closes and
    // connects again at once finds it free), unless the backend may outlive the session:
    // then the reaper gives it back once the backend is gone, so the grant's next session
    // cannot take the role's slot kept for the reaper first (an attack review's finding).
    let place = proxy.registry.relay_ended(&id).filter(|_| make_sure(&end));
    proxy.registry.forget_cancel_key(cancel_key);
    proxy.registry.spares.ended(&request.id);
    let end = end::whose_end(&lockbox.store, &request.id, end).await;
    let role_closes = match end {
        End::Dropped(DropReason::Revoked) if login.per_grant => Some(None),
        End::Dropped(DropReason::Expired) if login.per_grant => {
            end::role_end_of_expired(&lockbox.store, request).await
        }
        _ => None,
    };
    if let Some(window) = role_closes {
        // The grant is over: its role is dropped now rather than at the next sweep, which
        // also ends every backend of it, as the service role. That is the reaper's work: a
        // reaper could not log in as the role any more (past VALID UNTIL, or NOLOGIN).
        let provisioner = lockbox.provisioner.clone();
        let (db, id) = (db.clone(), request.id.clone());
        crate::runtime::spawn_control(async move {
            let dropped = match window {
                Some(window) => provisioner.end_window(&db, &id, window).await,
                None => provisioner.end(&db, &id).await,
            };
            if let Err(e) = dropped {
                tracing::error!(error = %e, "could not drop the role of an ended grant");
            }
        });
    }
    let role_closes = role_closes.is_some();
    let sessions = request.session_limit(config.max_sessions_per_grant);
    let reaper = (make_sure(&end) && !role_closes).then(|| Reaper {
        db: db.clone(),
        credentials: login.credentials.clone(),
        access: request.access,
        backend_pid: backend.0,
        relay_ended,
        // Counted from the relay's end, not from when the end is recorded.
        window_end: relay_ended + config.terminate_after,
        fields: fields.clone(),
        audit: lockbox.audit.clone(),
        span: tracing::Span::current(),
        turn: (login.per_grant && sessions.is_some())
            .then(|| proxy.registry.reaper_turn(&request.id)),
        retake: login.per_grant.then(|| super::reaper::Retake {
            provisioner: lockbox.provisioner.clone(),
            request: request.clone(),
            sessions,
        }),
    });
    finish(&lockbox.audit, &fields, &request.id, &end);
    // A query may be running: it is cancelled, so the backend notices the closed socket.
    let cancel = make_sure(&end).then(|| CancelKey {
        host: db.host.clone(),
        port: db.port,
        pid: backend.0,
        secret: backend.1,
    });
    // With no reaper (the grant's role is dropped instead), the place goes back now.
    let place = place.filter(|_| reaper.is_some());
    Aftermath::new(cancel, reaper, farewell).holding(place)
}

/// The session's monotonic deadline: wall-clock remaining, counted on the monotonic clock.
fn deadline_for(admission: &Admission) -> tokio::time::Instant {
    super::relay::monotonic_deadline(admission.ends_at)
}

/// Sends a FATAL ErrorResponse and closes, without waiting long on a stuck client.
pub(super) async fn send_fatal(stream: &mut BoxStream, code: &str, message: &str) {
    let mut out = BytesMut::new();
    wire::error_response(&mut out, Severity::Fatal, code, message);
    let send = async {
        stream.write_all(&out).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_millis(500), send).await;
}

pub(super) async fn forward_cancel(proxy: &Proxy, pid: i32, secret: i32) {
    // An unknown key is ignored silently, as PostgreSQL does: no oracle for guessing keys.
    let Some(target) = proxy.registry.cancel_target(pid, secret) else {
        tracing::debug!("cancel request with unknown key ignored");
        return;
    };
    if let Err(e) = upstream::send_cancel(
        &target.host,
        target.port,
        target.backend_pid,
        target.backend_secret,
    )
    .await
    {
        tracing::warn!(error = %e, "forwarding cancel request failed");
    }
}
