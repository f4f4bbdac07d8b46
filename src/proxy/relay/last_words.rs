//! What a client is told when its session ends, and how patiently: the FATAL for each way a
//! relay ends, kept apart from the loop that finds the end so that every end's words can be
//! read (and tested) in one place.

use super::End;
use crate::proxy::registry::DropReason;
use crate::wire::sqlstate;

/// The SQLSTATE and message of the FATAL that tells the client why its session ended, or
/// `None` when it is told nothing: it left itself, or the server said why (its own FATAL was
/// relayed, `upstream_said_why`).
pub(crate) fn fatal_for(
    end: &End,
    request_id: &str,
    upstream_said_why: bool,
) -> Option<(&'static str, String)> {
    let told = match end {
        End::Dropped(DropReason::Expired) => (
            sqlstate::ADMIN_SHUTDOWN,
            format!("lockbox access for request {request_id} has expired"),
        ),
        End::Dropped(DropReason::Revoked) => (
            sqlstate::ADMIN_SHUTDOWN,
            format!("lockbox access for request {request_id} was revoked"),
        ),
        End::Dropped(DropReason::Shutdown) => (
            sqlstate::ADMIN_SHUTDOWN,
            "lockbox proxy is shutting down".to_owned(),
        ),
        End::Dropped(DropReason::Killed {
            why,
            by_its_engineer: false,
        }) => (
            sqlstate::ADMIN_SHUTDOWN,
            format!("lockbox session was ended by an operator: {why}"),
        ),
        End::Dropped(DropReason::Killed {
            why,
            by_its_engineer: true,
        }) => (
            sqlstate::ADMIN_SHUTDOWN,
            format!("lockbox session was ended at its engineer's request: {why}"),
        ),
        End::ProtocolError(m) => (sqlstate::PROTOCOL_VIOLATION, m.clone()),
        End::MessageTooLarge(o) => (sqlstate::PROTOCOL_VIOLATION, o.fatal_message()),
        End::NoRoomForMessage(n) => (sqlstate::OUT_OF_MEMORY, n.fatal_message()),
        End::AuditFailed => (
            sqlstate::IO_ERROR,
            "lockbox could not write the audit record; the statement was not executed".to_owned(),
        ),
        End::UnsafeSetting(m) => (sqlstate::INSUFFICIENT_PRIVILEGE, m.clone()),
        End::LostTrack(m) => (
            sqlstate::INTERNAL_ERROR,
            format!(
                "lockbox lost track of the server's replies ({m}); the session is ended so \
                 that no statement runs under another's record"
            ),
        ),
        End::CodeUnreadable(why) => (
            sqlstate::CONNECTION_FAILURE,
            format!(
                "lockbox can no longer read this database's functions to enforce its rules \
                 ({why}); the session is ended"
            ),
        ),
        End::RowLimit(n) => (
            sqlstate::PROGRAM_LIMIT_EXCEEDED,
            format!(
                "lockbox: a statement returned more than {n} rows, the max_rows of request \
                 {request_id}; the session is ended"
            ),
        ),
        End::UpstreamGone if !upstream_said_why => (
            sqlstate::CONNECTION_FAILURE,
            "lockbox lost the connection to the upstream database: the server closed it \
             (stopped, restarted or crashed); the session is ended"
                .to_owned(),
        ),
        End::ClientGone
        | End::ClientLeftMidStatement
        | End::ClientLeftThenServerClosed
        | End::UpstreamGone => return None,
    };
    Some(told)
}

/// Whether the farewell may wait on a slow reader. A client that broke the protocol (a bad
/// or oversized message) is told why but not waited on, so such clients cannot use up the
/// patience kept for those whose access ended under them.
pub(super) fn may_be_patient(end: &End) -> bool {
    !matches!(
        end,
        End::ProtocolError(_)
            | End::MessageTooLarge(_)
            | End::NoRoomForMessage(_)
            | End::LostTrack(_)
    )
}

/// Whether the client could have brought this end about at will: its own statement (a row
/// limit, a setting refused), the server's end, which `SET idle_session_timeout` brings
/// on, or its engineer's own `session kill` (the API takes it from the same engineer who
/// holds the token). Such farewells may be patient only while passes are plentiful (see
/// `Aftermath::releasing`), so they never use up the patience kept for ends the client did
/// not choose (revoke, expiry, shutdown).
pub(super) fn is_provoked(end: &End) -> bool {
    matches!(
        end,
        End::UpstreamGone
            | End::RowLimit(_)
            | End::UnsafeSetting(_)
            | End::LostTrack(_)
            | End::Dropped(DropReason::Killed {
                by_its_engineer: true,
                ..
            })
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn killed(why: &str, by_its_engineer: bool) -> End {
        End::Dropped(DropReason::Killed {
            why: why.into(),
            by_its_engineer,
        })
    }

    fn every_end() -> Vec<End> {
        vec![
            End::ClientGone,
            End::ClientLeftMidStatement,
            End::ClientLeftThenServerClosed,
            End::UpstreamGone,
            End::Dropped(DropReason::Expired),
            End::Dropped(DropReason::Revoked),
            End::Dropped(DropReason::Shutdown),
            killed("incident 7", false),
            killed("not needed any more", true),
            End::ProtocolError("unexpected message type 0x01".to_owned()),
            End::AuditFailed,
            End::UnsafeSetting("a setting".to_owned()),
            End::RowLimit(10),
            End::LostTrack("a reply".to_owned()),
            End::CodeUnreadable("the database is down".into()),
        ]
    }

    #[test]
    fn each_end_the_proxy_chose_names_its_cause_with_postgres_codes() {
        let code = |end: End| fatal_for(&end, "req-1", false).map(|(code, _)| code);
        assert_eq!(code(End::Dropped(DropReason::Expired)), Some("57P01"));
        assert_eq!(code(End::Dropped(DropReason::Revoked)), Some("57P01"));
        assert_eq!(code(End::Dropped(DropReason::Shutdown)), Some("57P01"));
        assert_eq!(code(End::ProtocolError("x".into())), Some("08P01"));
        assert_eq!(code(End::AuditFailed), Some("58030"));
        assert_eq!(code(End::UnsafeSetting("x".into())), Some("42501"));
        assert_eq!(code(End::RowLimit(3)), Some("54000"));
        assert_eq!(code(End::UpstreamGone), Some("08006"));
        assert_eq!(code(End::LostTrack("x".into())), Some("XX000"));
        assert_eq!(code(End::CodeUnreadable("x".into())), Some("08006"));
        let (_, revoked) =
            fatal_for(&End::Dropped(DropReason::Revoked), "req-1", false).expect("told");
        assert!(
            revoked.contains("req-1") && revoked.contains("revoked"),
            "{revoked}"
        );
        let (_, by_operator) = fatal_for(&killed("incident 7", false), "r", false).expect("told");
        assert!(
            by_operator.contains("incident 7") && by_operator.contains("operator"),
            "{by_operator}"
        );
        let (_, by_engineer) = fatal_for(&killed("done", true), "r", false).expect("told");
        assert!(
            by_engineer.contains("done") && by_engineer.contains("its engineer's request"),
            "{by_engineer}"
        );
    }

    #[test]
    fn the_client_that_left_and_a_server_that_said_why_are_told_nothing_more() {
        assert!(fatal_for(&End::ClientGone, "r", false).is_none());
        assert!(fatal_for(&End::ClientLeftMidStatement, "r", false).is_none());
        assert!(fatal_for(&End::ClientLeftThenServerClosed, "r", false).is_none());
        assert!(fatal_for(&End::UpstreamGone, "r", true).is_none());
        // Whether the server said why matters only when the server is what went.
        for end in every_end() {
            if !matches!(end, End::UpstreamGone) {
                assert_eq!(
                    fatal_for(&end, "r", true),
                    fatal_for(&end, "r", false),
                    "{end:?}"
                );
            }
        }
    }

    #[test]
    fn protocol_breakers_are_not_waited_on_and_self_made_ends_draw_on_half_the_passes() {
        // (end, may be patient, provoked)
        let cases = [
            (End::Dropped(DropReason::Revoked), true, false),
            (End::Dropped(DropReason::Expired), true, false),
            (End::Dropped(DropReason::Shutdown), true, false),
            (End::AuditFailed, true, false),
            (End::ProtocolError("x".into()), false, false),
            (End::LostTrack("x".into()), false, true),
            (End::UpstreamGone, true, true),
            (End::RowLimit(1), true, true),
            (End::UnsafeSetting("x".into()), true, true),
            (End::CodeUnreadable("x".into()), true, false),
            // An admin's or approver's kill is not the client's doing; its engineer's own is.
            (killed("incident 7", false), true, false),
            (killed("done here", true), true, true),
        ];
        for (end, patient, provoked) in cases {
            assert_eq!(may_be_patient(&end), patient, "{end:?}");
            assert_eq!(is_provoked(&end), provoked, "{end:?}");
        }
    }
}
