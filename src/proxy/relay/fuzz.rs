//! The relay's batch inspection on arbitrary client bytes, for the fuzz targets and the
//! seeded random tests (`crate::fuzzing`): a relay over in-memory streams that never run,
//! handed what a client might send after login, batch after batch as the loop would.

use std::sync::{Arc, OnceLock};

use bytes::BytesMut;

use super::{Grant, Limits, Relay};
use crate::audit::{AuditLog, SessionFields};
use crate::policy::AccessLevel;
use crate::proxy::registry::Control;

/// What the loop needs around the relay: a runtime for its timers and an audit log it is
/// never asked to write to (inspection only gathers records).
pub(super) struct Fixture {
    pub(super) runtime: tokio::runtime::Runtime,
    audit: AuditLog,
    _dir: tempfile::TempDir,
}

pub(super) fn fixture() -> Result<&'static Fixture, String> {
    static FIXTURE: OnceLock<Result<Fixture, String>> = OnceLock::new();
    FIXTURE
        .get_or_init(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let (audit, _syncer) =
                AuditLog::open(&dir.path().join("audit.jsonl"), None).map_err(|e| e.to_string())?;
            Ok(Fixture {
                runtime,
                audit,
                _dir: dir,
            })
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Inspects `data` as the client's bytes under `access`, batch by batch, and checks what
/// the loop relies on: a batch consumes only what it was given, its stand-ins replace
/// whole messages inside what it consumed, in order, and inspection never panics.
/// Returns how many messages were inspected (so a generator can show it gets that far).
pub(crate) fn inspect_client_bytes(
    data: &[u8],
    access: AccessLevel,
    max_message: usize,
) -> Result<usize, String> {
    let fixture = fixture()?;
    let _entered = fixture.runtime.enter();
    let mut relay = relay(fixture, access, max_message);
    let mut offset = 0;
    let mut inspected = 0;
    while offset < data.len() {
        let rest = &data[offset..];
        let Ok(batch) = relay.inspect_batch(rest) else {
            // The loop ends the session here; nothing after it is looked at.
            return Ok(inspected);
        };
        if batch.consumed > rest.len() {
            return Err(format!(
                "a batch consumed {} of {} bytes",
                batch.consumed,
                rest.len()
            ));
        }
        let mut end = 0;
        for (range, _) in &batch.replacements {
            if range.start < end || range.end > batch.consumed || range.is_empty() {
                return Err(format!(
                    "stand-in for {range:?} outside or out of order (consumed {}, after {end})",
                    batch.consumed
                ));
            }
            end = range.end;
        }
        if batch.consumed == 0 || batch.terminate {
            // An incomplete message waits for more bytes, which never come here.
            return Ok(inspected + batch.pending.len());
        }
        inspected += batch.pending.len();
        offset += batch.consumed;
    }
    Ok(inspected)
}

pub(super) fn relay(fixture: &Fixture, access: AccessLevel, max_message: usize) -> Relay {
    let (client, _) = tokio::io::duplex(64);
    let (upstream, _) = tokio::io::duplex(64);
    let (_kill, control) = tokio::sync::watch::channel(Control::Run);
    let ends_at = chrono::Utc::now() + chrono::Duration::hours(1);
    let session = Arc::new(SessionFields::new(
        "fuzz".into(),
        "req-fuzz".into(),
        "T-0".into(),
        "fuzz".into(),
        "fuzz".into(),
        "127.0.0.1:1".into(),
        false,
    ));
    let grant = Grant {
        access,
        rules: crate::config::Guardrails {
            deny_drop: true,
            deny_truncate: true,
            deny_delete_without_where: true,
            deny_update_without_where: true,
            off_limits: vec!["secrets".into(), "hr.*".into()],
        },
        limits: Limits {
            max_rows: Some(10),
            ..Limits::default()
        },
        warn_before: vec![std::time::Duration::from_secs(60)],
        ..Grant::plain_read(ends_at)
    };
    Relay::new(
        Box::new(client),
        Box::new(upstream),
        BytesMut::new(),
        session,
        fixture.audit.clone(),
        max_message,
        control,
        super::monotonic_deadline(ends_at),
        grant,
    )
}

/// One frontend message: its type byte, its length, its body (for the relay's tests).
#[cfg(test)]
pub(super) fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(
        &i32::try_from(body.len() + 4)
            .unwrap_or(i32::MAX)
            .to_be_bytes(),
    );
    m.extend_from_slice(body);
    m
}
