//! Client messages: what each one carries, whether the grant allows it, and the record the
//! audit keeps of it. Every decision is the guard's; this file gathers its inputs (the
//! session's prepared statements and portals, what is still running upstream) and turns a
//! refusal into a stand-in the server fails at.

use std::sync::Arc;

use smallvec::SmallVec;

use super::names::unknown_name_refusal;
use super::{unexpected_message, Pending, Relay};
use crate::audit::redact;
use crate::audit::{AuditEvent, Protocol, StatementNames, StatementRecord};
use crate::guard::{self, NameChange, Refusal};
use crate::policy::AccessLevel;
use crate::proxy::statements::{MessageId, Portal, Prepared, SqlChange};
use crate::proxy::tracker::Step;
use crate::sql::StatementKind;
use crate::wire::{self, ParamValue};

impl Relay {
    /// Looks at one client message; statements it carries are added to `pending`. Returns
    /// the stand-in to send instead when a guardrail refuses the message.
    pub(super) fn inspect(
        &mut self,
        tag: u8,
        body: &[u8],
        pending: &mut Vec<Pending>,
    ) -> Result<Option<Vec<u8>>, String> {
        bodiless(tag, body)?;
        self.bind_covered_by(Some((tag, body)), pending);
        match tag {
            b'Q' => {
                let text = wire::decode_query(body).map_err(|e| e.to_string())?;
                let statements = guard::analyze_query_cached(&text);
                let uncertain = self.lexer_uncertain(&text, &statements, pending);
                // One refused statement refuses the string: PostgreSQL runs it as one
                // transaction. The first refused statement carries the refusal. (Kept on the
                // stack for the usual string of one statement.)
                let mut checked: SmallVec<[_; 1]> = SmallVec::with_capacity(statements.len());
                // What the string's earlier statements may shadow, the later ones find.
                let mut shadowed = self.catalog_shadowed;
                for (i, s) in statements.iter().enumerate() {
                    let piece = text.get(s.range.clone()).unwrap_or(&text);
                    let (record, recorded) = self.statement_record(
                        Protocol::Simple,
                        piece,
                        self.kind_of(&s.analysis),
                        self.params_by_name(s.analysis.facts.names.as_ref()),
                        self.mentions(piece, &s.analysis.facts),
                    );
                    let verdict = match (i, &uncertain) {
                        (0, Some(refusal)) => Err(refusal.clone()),
                        _ => recorded
                            .and_then(|()| self.check(&s.analysis))
                            .and_then(|()| {
                                guard::check_setting_from_catalog_row(&s.analysis.facts, shadowed)
                            })
                            .and_then(|()| self.check_names(&s.analysis)),
                    };
                    shadowed |= s.analysis.facts.may_shadow_catalog;
                    // Later statements of the string see what this one will create; it
                    // takes effect only once the server confirms it.
                    let change = match verdict {
                        Ok(()) => self.note_names(piece, &s.analysis, None, None)?,
                        Err(_) => None,
                    };
                    checked.push((record, verdict, change));
                }
                let refused_at = checked.iter().position(|(_, verdict, _)| verdict.is_err());
                let refusal = refused_at
                    .and_then(|at| std::mem::replace(&mut checked[at].1, Ok(())).err())
                    .map(Arc::new);
                let each = checked
                    .into_iter()
                    .map(|(record, _, change)| (record, change))
                    .zip(statements.iter());
                for (i, ((record, change), s)) in each.enumerate() {
                    self.note_catalog_changes(&s.analysis);
                    if refusal.is_none()
                        && (s.analysis.facts.plan_only
                            || self.reads_catalog_only(
                                self.catalog_only(&s.analysis.facts),
                                s.analysis.facts.catalog_unqualified,
                            ))
                    {
                        pending.push(Pending::RowsUncounted);
                    }
                    if refusal.is_none() && s.analysis.facts.copy_in {
                        pending.push(Pending::CopyFromStdin);
                        self.batch.copies_sent += 1;
                    }
                    pending.push(match (&refusal, refused_at) {
                        (Some(r), Some(at)) if at == i => Pending::Refused(record, r.clone(), None),
                        (Some(_), _) => Pending::NotRun(record),
                        _ => Pending::Statement {
                            record,
                            change,
                            portal: match &s.analysis.facts.names {
                                Some(NameChange::Fetch(cursor)) => Some(cursor.clone()),
                                _ => None,
                            },
                        },
                    });
                }
                // The server drops its unnamed statement as it starts the string (the
                // stand-in's too), and its unnamed portal as it runs a statement.
                let runs_statement = refusal.is_none()
                    && statements
                        .iter()
                        .any(|s| s.analysis.kind != StatementKind::Empty);
                let end = if self.discarded_past_backlog() {
                    self.statements.end_group()
                } else {
                    self.statements
                        .end_query(runs_statement)
                        .map_err(|e| e.to_string())?
                };
                pending.push(Pending::QueryEnd(end));
                return Ok(refusal.map(|_| stand_in_query()));
            }
            b'P' => {
                let (name, text, types) = wire::decode_parse(body).map_err(|e| e.to_string())?;
                self.protocol_name(&name)?;
                let analyses = guard::analyze_query_cached(&text);
                let analysis = match &analyses[..] {
                    [one] => one.analysis.clone(),
                    _ => Arc::new(guard::Analysis::rejected()),
                };
                self.note_catalog_changes(&analysis);
                let kind = self.kind_of(&analysis);
                let mentions = self.mentions(&text, &analysis.facts);
                // One copy of the text, shared by the record (built in case it is refused)
                // and the statement the session keeps.
                let shared: Arc<str> = Arc::from(&*text);
                let (record, recorded) = self.statement_record(
                    Protocol::Extended,
                    shared.clone(),
                    kind,
                    None,
                    mentions.clone(),
                );
                let stable = match self.lexer_uncertain(&text, &analyses, pending) {
                    Some(refusal) => Err(refusal),
                    None => Ok(()),
                };
                let typed = || {
                    guard::check_parameter_types(
                        &self.grant.rules,
                        &types,
                        &self.grant.database_functions,
                    )
                };
                // Prepared, it may run after the session shadowed the catalog (a prepared
                // statement's names are looked up again when the search path changes).
                let checked = recorded
                    .and(stable)
                    .and_then(|()| self.check(&analysis))
                    .and_then(|()| guard::check_setting_from_catalog_row(&analysis.facts, true));
                if let Err(refusal) = checked.and_then(|()| typed()) {
                    // The stand-in, a Parse of the same name, leaves no unnamed statement.
                    let change = if self.discarded_past_backlog() {
                        None
                    } else {
                        self.statements
                            .refused_parse(&name)
                            .map_err(|e| e.to_string())?
                    };
                    pending.push(Pending::Refused(record, Arc::new(refusal), change));
                    return Ok(Some(stand_in_parse(&name)));
                }
                let statement = Prepared {
                    text: shared,
                    kind,
                    names: analysis.facts.names.clone(),
                    catalog_only: self.catalog_only(&analysis.facts),
                    catalog_unqualified: analysis.facts.catalog_unqualified,
                    plan_only: analysis.facts.plan_only,
                    copy_in: analysis.facts.copy_in,
                    recorded: false,
                    mentions,
                    code_epoch: self.grant.code_epoch,
                };
                let id = if self.discarded_past_backlog() {
                    self.statements.message()
                } else {
                    self.statements
                        .parse(name, statement)
                        .map_err(|e| e.to_string())?
                };
                pending.push(Pending::Step(Step::Parse, id));
            }
            b'B' => {
                let bind = wire::decode_bind(body).map_err(|e| e.to_string())?;
                self.protocol_name(&bind.portal)?;
                self.protocol_name(bind.statement)?;
                // Collected once, into the list the portal and its Executes' records share.
                let params: Arc<[serde_json::Value]> =
                    bind.params.into_iter().map(param_json).collect();
                // What a Bind runs is covered by a record (see `planning.rs`), unless the
                // server discards it (it skips to a Sync).
                if self.discarded_past_backlog() {
                    self.bind_alone = false;
                    pending.push(Pending::Step(Step::Bind, self.statements.message()));
                    return Ok(None);
                }
                let known = self.statements.knows_statement(bind.statement);
                if !known && self.statements.refused_in_group(bind.statement) {
                    // The server skips it: the refused Parse before it is what failed.
                    self.bind_alone = false;
                    pending.push(Pending::Step(Step::Bind, self.statements.message()));
                    return Ok(None);
                }
                if self.grant.access != AccessLevel::Admin && !known {
                    self.bind_alone = false;
                    return Ok(Some(self.refuse_unknown_bind(
                        &bind.portal,
                        bind.statement,
                        params,
                        pending,
                    )));
                }
                // Planned again by the server under the catalog as it is now (one compare
                // while the session's read is the login's).
                if self.grant.code_epoch != 0 {
                    if let Some(statement) = self.statements.statement(bind.statement) {
                        if let Err(refusal) = self.recheck_prepared(&statement) {
                            self.bind_alone = false;
                            return Ok(Some(self.refuse_rechecked_bind(
                                &bind.portal,
                                &statement,
                                params,
                                refusal,
                                pending,
                            )));
                        }
                    }
                }
                let portal = bind.portal.clone();
                let id = self
                    .statements
                    .bind(bind.portal, bind.statement, params)
                    .map_err(|e| e.to_string())?;
                // The statement's name is kept only for the record of one lockbox did not see
                // prepared (a name allocated per Bind would cost every extended statement).
                let unknown = (!known).then(|| bind.statement.to_owned());
                self.bind_step(portal, unknown, id, pending);
            }
            b'E' => {
                let portal = wire::decode_execute(body).map_err(|e| e.to_string())?;
                self.protocol_name(&portal)?;
                let modelled = self.statements.portal(&portal);
                // Only a Bind makes the unnamed portal for an Execute: one no Bind lockbox
                // saw made is a query string's leftover, which runs nothing or, failed in a
                // transaction block, crashes PostgreSQL 15 — refused to admin too.
                let leftover = portal.is_empty() && modelled.is_none();
                let Some(found) = modelled.filter(|p| {
                    !p.statement.text.is_empty() || p.statement.kind != StatementKind::Unknown
                }) else {
                    // A portal (or the statement it was bound to) that lockbox never saw
                    // created — server-side code can PREPARE and OPEN cursors: what it
                    // runs cannot be recorded, so below admin it does not run.
                    let text = format!("-- Execute of portal \"{portal}\", whose statement lockbox did not see prepared");
                    let (record, _) = self.statement_record(
                        Protocol::Extended,
                        text.as_str(),
                        StatementKind::Unknown,
                        None,
                        None,
                    );
                    if self.grant.access != AccessLevel::Admin || leftover {
                        pending.push(Pending::Refused(
                            record,
                            Arc::new(unknown_name_refusal("unknown_statement", &portal)),
                            None,
                        ));
                        return Ok(Some(stand_in_execute(&self.stand_in_portal)));
                    }
                    pending.push(Pending::Statement {
                        record,
                        change: None,
                        portal: None,
                    });
                    return Ok(None);
                };
                if found.statement.plan_only
                    || self.reads_catalog_only(
                        found.statement.catalog_only,
                        found.statement.catalog_unqualified,
                    )
                {
                    pending.push(Pending::RowsUncounted);
                }
                let (text, kind, params, names, mentions) = (
                    found.statement.text.clone(),
                    found.statement.kind,
                    Some(found.params),
                    found.statement.names,
                    found.statement.mentions,
                );
                // A Parse of `FETCH … FROM c` or `EXECUTE s` names its cursor or statement
                // only when it runs: what runs must be one lockbox saw created, as for the
                // same text in a query string.
                // The text was checked when it was parsed; what is recorded is the text of
                // the statement the server holds under that name.
                // What it runs by name decides its kind and values as it runs (the name's
                // statement or portal may have changed since the Parse).
                let (kind, params) = match &names {
                    Some(by_name) => {
                        let own = guard::analyze_cached(&text).kind;
                        (
                            self.kind_by_name(Some(by_name), own),
                            self.params_by_name(Some(by_name)).or(params),
                        )
                    }
                    None => (kind, params),
                };
                // A DECLARE's Bind values go with its cursor (kept only where a name changes).
                let declared_with = names.as_ref().and_then(|_| params.clone());
                let (record, _) =
                    self.statement_record(Protocol::Extended, text.clone(), kind, params, mentions);
                if let Err(refusal) = self.check_name_use(names.as_ref()) {
                    pending.push(Pending::Refused(record, Arc::new(refusal), None));
                    return Ok(Some(stand_in_execute(&self.stand_in_portal)));
                }
                let change = match &names {
                    // A Parse of `PREPARE …`, `DECLARE …`, `DEALLOCATE …` changes the
                    // namespaces each time its portal runs.
                    Some(change) => {
                        let analysis = guard::analyze_cached(&text);
                        self.note_names(&text, &analysis, Some(change), declared_with.as_ref())?
                    }
                    None => None,
                };
                // A FETCH takes its rows from the cursor it names, not from the portal
                // that runs it.
                let drawn_from = match names {
                    Some(NameChange::Fetch(cursor)) => cursor,
                    _ => portal,
                };
                if found.statement.copy_in {
                    pending.push(Pending::CopyFromStdin);
                    self.batch.copies_sent += 1;
                }
                pending.push(Pending::Statement {
                    record,
                    change,
                    portal: Some(drawn_from),
                });
            }
            b'C' => {
                let (kind, name) = wire::decode_close(body).map_err(|e| e.to_string())?;
                self.protocol_name(&name)?;
                let id = match kind {
                    _ if self.discarded_past_backlog() => Ok(self.statements.message()),
                    b'S' => self.statements.close_statement(name),
                    _ => self.statements.close_portal(name),
                }
                .map_err(|e| e.to_string())?;
                pending.push(Pending::Step(Step::Close, id));
            }
            b'D' => {
                wire::decode_describe(body).map_err(|e| e.to_string())?;
                pending.push(Pending::Step(Step::Describe, self.statements.message()));
            }
            b'S' => {
                self.batch.synced = true;
                pending.push(Pending::Sync(self.statements.end_group()))
            }
            b'c' | b'f' => {
                // Where no COPY reads or may start to, the server ignores them and answers
                // nothing: they are forwarded, but nothing is kept for them (a review sent
                // 100,000, each kept and each costing a walk of what was), nor do they end
                // a COPY the client sends after them.
                if self.copy_may_read() {
                    pending.push(Pending::CopyEnd);
                    self.batch.copies_ended += 1;
                }
                self.copy_open = false;
            }
            b'F' => {
                let call = wire::decode_function_call(body).map_err(|e| e.to_string())?;
                // A FunctionCall names a function by OID. The large-object functions libpq's
                // API calls are known and judged like their SQL forms; any other OID could be
                // anything (lo_import, set_config, …), so only an admin grant may call it, and
                // not where the database has rules.
                let (known, analysis) = guard::function_call_analysis(call.oid, &call.args);
                let text = match known {
                    Some(name) => format!("-- FunctionCall of {name} (oid {})", call.oid),
                    None => format!("-- FunctionCall of function oid {}", call.oid),
                };
                // The arguments say what the call does (a file name for lo_import, …).
                let args: Arc<[serde_json::Value]> =
                    call.args.into_iter().map(param_json).collect();
                let (record, _) = self.statement_record(
                    Protocol::FunctionCall,
                    text.as_str(),
                    StatementKind::Other,
                    Some(args),
                    None,
                );
                if let Err(refusal) = self.check(&analysis) {
                    pending.push(Pending::Refused(record, Arc::new(refusal), None));
                    pending.push(Pending::QueryEnd(self.statements.end_group()));
                    return Ok(Some(stand_in_function_call()));
                }
                pending.push(Pending::Statement {
                    record,
                    change: None,
                    portal: None,
                });
                pending.push(Pending::QueryEnd(self.statements.end_group()));
            }
            b'd' => {
                // Data for a COPY the server runs or is about to start; after the COPY
                // failed the server drops it, and it opens nothing (libpq goes on sending
                // what it had before it reads the error, then sends no CopyDone).
                // Asked once per COPY, not once per CopyData: the answer walks the
                // messages waiting for the server.
                if !self.copy_open {
                    self.copy_open = self.copy_may_read();
                }
                self.copy_bytes += body.len() as u64;
            }
            b'H' | b'X' => {}
            other => return Err(unexpected_message(other)),
        }
        Ok(None)
    }

    /// A query text that must not be forwarded yet: something sent before it is still
    /// running and could have changed a lexer setting (the server says so only at its
    /// ReadyForQuery), and the text would read differently if it had.
    pub(super) fn lexer_uncertain(
        &self,
        text: &str,
        analyses: &[guard::StatementAnalysis],
        pending: &[Pending],
    ) -> Option<Refusal> {
        let in_flight = !self.tracker.is_idle()
            || pending
                .iter()
                .any(|p| matches!(p, Pending::Statement { .. } | Pending::Refused(..)));
        (in_flight && !guard::lexing_is_stable(text, analyses)).then(guard::lexer_uncertain)
    }

    /// The grant, the database's rules and the grant's limits, for one statement.
    pub(super) fn check(&self, analysis: &guard::Analysis) -> Result<(), Refusal> {
        guard::check_analysis(self.grant.access, &self.grant.rules, analysis)?;
        guard::check_database_functions(
            &self.grant.rules,
            &analysis.facts,
            &self.grant.database_functions,
        )?;
        guard::check_reach(&self.grant.catalog_reach, analysis)?;
        // Setting statement_timeout is fine (the proxy enforces the grant's own); a setting
        // whose name is computed could be anything and is not.
        if self.grant.limits.statement_timeout.is_some()
            && analysis.facts.settings.iter().any(|s| s == "*")
        {
            return Err(Refusal {
                rule: "statement_timeout",
                message: "lockbox: this grant has a statement timeout; changing it is not allowed (rule statement_timeout)"
                    .into(),
            });
        }
        Ok(())
    }

    /// The statement record of `statement`, redacted as the database asks. A statement
    /// whose literals cannot be found when they must be masked is recorded as unreadable
    /// and refused (`Err`): it is never hidden and never runs.
    pub(super) fn statement_record(
        &self,
        protocol: Protocol,
        statement: impl AsRef<str> + Into<Arc<str>>,
        kind: StatementKind,
        params: Option<Arc<[serde_json::Value]>>,
        mentions: Option<StatementNames>,
    ) -> (AuditEvent, Result<(), Refusal>) {
        let redaction = self.grant.redaction;
        let (statement, recorded): (Arc<str>, _) = if redaction.literals {
            match redact::mask_literals(statement.as_ref()) {
                Ok(masked) => (masked.into(), Ok(())),
                Err(e) => (
                    redact::UNREADABLE.into(),
                    Err(Refusal {
                        rule: "unscannable",
                        message: format!(
                            "lockbox: {e}; this database's audit masks literals, so it cannot run (rule unscannable)"
                        ),
                    }),
                ),
            }
        } else {
            // A text the caller shares already (a prepared statement's) is not copied.
            (statement.into(), Ok(()))
        };
        let params = match params {
            Some(p) if redaction.parameters => Some(redact::mask_parameters(&p)),
            other => other,
        };
        let mentions = mentions.filter(|_| self.audit.may_clip(&statement));
        // A record that cannot say what its statement touches is as good as none.
        let recorded = match &mentions {
            Some(names) if !self.audit.names_fit(names) => Err(Refusal {
                rule: "audit_record",
                message: "lockbox: this statement names more relations, functions and fields than its audit record can hold (audit.max_record_bytes), so it cannot run (rule audit_record)".into(),
            }),
            // Its skeleton (what it does) would be cut: the record would hold a prefix of
            // what may be padding.
            Some(names) if !self.audit.skeleton_fits(names) => Err(Refusal {
                rule: "audit_record",
                message: "lockbox: this statement is too long for its audit record to hold whole, and what it does (its text without comments, whitespace and long tokens) is too: it cannot run (rule audit_record)".into(),
            }),
            // Too long to be recorded whole, and read by neither the parser nor the scanner
            // (over 1 MiB): its record would hold nothing of what it does (an attack review
            // dropped a table so as admin).
            Some(names) if kind == StatementKind::Unknown && names.skeleton.is_none() => {
                Err(Refusal {
                    rule: "audit_record",
                    message: "lockbox: this statement is too long for its audit record to hold whole, and too long (over 1 MiB) or malformed for lockbox to read what it does, so its record could not say; it cannot run (rule audit_record)".into(),
                })
            }
            _ => recorded,
        };
        let record = AuditEvent::Statement(StatementRecord {
            session: self.session.clone(),
            protocol,
            statement,
            params,
            mentions,
            kind,
            redacted: redaction.names(),
        });
        (record, recorded)
    }

    /// What `text` names, kept only if its record may clip it (masked literals can make
    /// the recorded text longer than `text`).
    pub(super) fn mentions(&self, text: &str, facts: &guard::Facts) -> Option<StatementNames> {
        let may_clip = self.audit.may_clip(text);
        (self.grant.redaction.literals || may_clip).then(|| StatementNames {
            relations: facts.written_relations.clone(),
            functions: facts.functions.clone(),
            fields: facts.fields.clone(),
            // Only for a text that may be clipped: one scan of it, not one per statement.
            skeleton: may_clip
                .then(|| crate::sql::skeleton::skeleton(text, self.grant.redaction.literals))
                .flatten()
                .map(Arc::from),
        })
    }

    /// Queues what a statement about to run does to the prepared statements and cursors;
    /// it takes effect when the server confirms it. `params`: the Bind values it runs with
    /// (a Parse'd `DECLARE … $1`), which a later `FETCH` of its cursor records too.
    pub(super) fn note_names(
        &mut self,
        text: &str,
        analysis: &guard::Analysis,
        change: Option<&NameChange>,
        params: Option<&Arc<[serde_json::Value]>>,
    ) -> Result<Option<MessageId>, String> {
        let Some(change) = change.or(analysis.facts.names.as_ref()) else {
            return Ok(None);
        };
        let own = |kind| Prepared {
            text: text.into(),
            kind,
            names: None,
            catalog_only: false,
            catalog_unqualified: false,
            plan_only: false,
            copy_in: false,
            recorded: true,
            mentions: self.mentions(text, &analysis.facts),
            code_epoch: self.grant.code_epoch,
        };
        let sql_change = match change {
            NameChange::Prepare(name) => {
                let kind = crate::guard::prepared_kind(text);
                SqlChange::Prepare(name.clone(), own(kind))
            }
            NameChange::Declare(name) => SqlChange::Declare(
                name.clone(),
                Portal {
                    statement: own(StatementKind::Select),
                    params: params.cloned().unwrap_or_else(|| Arc::from([])),
                    held: crate::guard::declares_held_cursor(text),
                    rows: 0,
                    opened_in: None,
                },
            ),
            NameChange::Deallocate(name) => SqlChange::Deallocate(name.clone()),
            NameChange::Close(name) => SqlChange::Close(name.clone()),
            NameChange::DiscardAll => SqlChange::DiscardAll,
            NameChange::EndTransaction => SqlChange::EndTransaction,
            NameChange::Savepoint(name) => SqlChange::Savepoint(name.clone()),
            NameChange::Release(name) => SqlChange::Release(name.clone()),
            NameChange::RollbackTo(name) => SqlChange::RollbackTo(name.clone()),
            NameChange::Execute(_) | NameChange::Fetch(_) => return Ok(None),
        };
        self.statements
            .sql(sql_change)
            .map(Some)
            .map_err(|e| e.to_string())
    }
}

/// The stand-in sent upstream for a refused statement: it fails at parse time on every
/// server (a column reference with no FROM), in order with the rest of the pipeline, so
/// the server's transaction state matches what the client is told. Its error is replaced
/// by the refusal before the client sees it.
const STAND_IN: &str = "SELECT \"lockbox refused this statement\"";

pub(super) fn stand_in_query() -> Vec<u8> {
    tagged(b'Q', &[STAND_IN.as_bytes(), b"\0"].concat())
}

/// An Execute of a portal that does not exist, so it fails like the stand-in query. Its
/// name is the session's own, random (`new_stand_in_portal`): a client that could name it
/// could Bind a portal of its own under it, which a refused Execute would then run.
/// Sync, Flush, Terminate and CopyDone have no body, and the server reads one that has as
/// an error of its own: a Flush's makes it skip everything up to the next Sync, replies to
/// no message the tracker could know of. No client sends one; the session ends (08P01).
fn bodiless(tag: u8, body: &[u8]) -> Result<(), String> {
    let name = match tag {
        b'S' => "Sync",
        b'H' => "Flush",
        b'X' => "Terminate",
        b'c' => "CopyDone",
        _ => return Ok(()),
    };
    if body.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{name} message with a body of {} bytes (it has none)",
        body.len()
    ))
}

/// A FunctionCall of function OID 0, which names no function: the server fails it (42883)
/// in the refused call's place and, unlike a query string, leaves the unnamed statement and
/// portal as they were (an attack review saw a refused call's stand-in query drop them, so
/// the client's next Bind failed where PostgreSQL would have run it).
pub(super) fn stand_in_function_call() -> Vec<u8> {
    // Function OID, no argument formats, no arguments, a text result.
    tagged(b'F', &[0u8; 4 + 2 + 2 + 2])
}

pub(super) fn stand_in_execute(portal: &str) -> Vec<u8> {
    tagged(b'E', &[portal.as_bytes(), b"\0\0\0\0\0"].concat())
}

/// A portal name no client can know: 128 random bits, never shown (the stand-in's error
/// that would name it is replaced by the refusal).
pub(super) fn new_stand_in_portal() -> String {
    let mut bits = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bits);
    let hex: String = bits.iter().map(|b| format!("{b:02x}")).collect();
    format!("lockbox refused {hex}")
}

pub(super) fn stand_in_parse(name: &str) -> Vec<u8> {
    tagged(
        b'P',
        &[name.as_bytes(), b"\0", STAND_IN.as_bytes(), b"\0\0\0"].concat(),
    )
}

/// A Bind the server fails: of a statement no client can know (the stand-in portal's name,
/// which names no statement), so its error is the refusal's.
pub(super) fn stand_in_bind(portal: &str, unknown: &str) -> Vec<u8> {
    tagged(
        b'B',
        &[
            portal.as_bytes(),
            b"\0",
            unknown.as_bytes(),
            b"\0\0\0\0\0\0\0",
        ]
        .concat(),
    )
}

fn tagged(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(body.len() + 5);
    m.push(tag);
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn param_json(value: ParamValue) -> serde_json::Value {
    match value {
        ParamValue::Null => serde_json::Value::Null,
        ParamValue::Text(t) => serde_json::Value::String(t),
        ParamValue::Binary(b) => serde_json::json!({ "binary_hex": hex::encode(b) }),
    }
}
