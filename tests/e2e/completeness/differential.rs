//! The lexer differential: query strings where a SQL lexer may disagree with PostgreSQL's
//! (the corpus in tests/corpus/scanner.sql and a seeded generator) go through lockbox, and
//! the server itself says what they are.
//!
//! For each string, three views are compared:
//! - the reference: the same string sent straight to the server as the superuser inside
//!   `BEGIN … ROLLBACK`. Its replies (one CommandComplete per statement run, or the error
//!   that stopped it) are PostgreSQL's own statement split, counted and tagged;
//! - what lockbox recorded for the string (its statement records) and what came back
//!   through lockbox;
//! - each recorded statement run alone, straight to the server (again rolled back).
//!
//! They must agree: the recorded statements make up the string (nothing between them but
//! blanks, comments and semicolons, as the server's scanner reads them), there are as many
//! as the server ran, each run alone does exactly what the server did at that place (same
//! command tag, same row count), and the audit kind matches the tag. Under an admin grant
//! (run inside `BEGIN … ROLLBACK` through lockbox too, so every string sees the same
//! table) the replies through lockbox equal the server's. Under a read grant, no write
//! runs, a string the server can run in a read-only transaction is not refused, and the
//! test table is unchanged at the end. In both, the session's server log and audit are
//! then compared by `compare`, like the completeness test's.
//!
//! `LOCKBOX_DIFF_SEED` and `LOCKBOX_DIFF_COUNT` change the generated strings; the full
//! list of disagreements is written to `lockbox-differential-<grant>.txt` in the temporary
//! directory, and the first ones are in the failure message.

mod verdict;

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use serde_json::Value;

use lockbox::policy::AccessLevel;
use lockbox::sandbox::SUPERUSER;

use super::compare::compare;
use super::generator::{self, Subject};
use super::wire::{Conn, Reply};
use super::{audit_sessions, logging_cluster, marker, server_sessions, settled_audit};
use crate::harness::{Env, Options};
use verdict::{describe, judge, Observed};

/// The table the strings read and write, beside the shared `items`.
const PROBE: &str = "SET ROLE lockbox_svc;
     CREATE TABLE probe (id int, note text);
     INSERT INTO probe SELECT g, 'note ' || g FROM generate_series(1, 20) g;
     GRANT SELECT ON probe TO lockbox_read;
     GRANT ALL ON probe TO lockbox_write;";

/// Row count and checksum of a table, read as the superuser.
const CHECKSUM: &str =
    "SELECT (SELECT count(*) || ':' || md5(string_agg(t::text, ',' ORDER BY id)) FROM probe t) \
     || ' ' || (SELECT count(*) || ':' || md5(string_agg(t::text, ',' ORDER BY id)) FROM items t)";

#[tokio::test(flavor = "multi_thread")]
async fn lexer_differential_under_admin() {
    let mut run = Run::start("diff_admin", AccessLevel::Admin).await;
    let subjects = subjects();
    for (i, subject) in subjects.iter().enumerate() {
        run.simple(subject).await;
        // The extended protocol for single statements: every corpus one, half the others.
        if !subject.generated || i % 2 == 0 {
            run.extended(subject).await;
        }
    }
    let report = run.finish().await;
    assert!(report.is_empty(), "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn lexer_differential_under_read() {
    let mut run = Run::start("diff_read", AccessLevel::Read).await;
    let before = run.env.superuser_sql(CHECKSUM);
    let subjects = subjects();
    for (i, subject) in subjects.iter().enumerate() {
        run.simple(subject).await;
        if !subject.generated || i % 3 == 0 {
            run.extended(subject).await;
        }
    }
    assert!(
        run.writes_tried > 20,
        "the strings tried too few writes to mean anything: {}",
        run.writes_tried
    );
    let after = run.env.superuser_sql(CHECKSUM);
    let report = run.finish().await;
    assert_eq!(before, after, "a read grant changed the tables\n{report}");
    assert!(report.is_empty(), "{report}");
}

fn subjects() -> Vec<Subject> {
    let mut all = generator::corpus();
    all.extend(generator::generated(generator::seed(), generator::count()));
    all
}

#[derive(Clone, Copy, PartialEq)]
enum Protocol {
    Simple,
    Extended,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Simple => "simple",
            Protocol::Extended => "extended",
        }
    }
}

/// One grant's run: lockbox's session, the superuser's direct session, the audit so far.
struct Run {
    env: Env,
    grant: AccessLevel,
    request: String,
    token: String,
    proxy: Conn,
    server: Conn,
    tail: AuditTail,
    sessions: usize,
    /// Disagreements, one block per string and protocol.
    problems: Vec<String>,
    /// Strings whose reference ran a write (or failed in a read-only transaction).
    writes_tried: usize,
    /// Strings (and protocols) checked.
    checked: usize,
    /// Extra records that came with an extended-protocol string: (string, record).
    skipped: Vec<(String, Value)>,
}

impl Run {
    async fn start(name: &str, grant: AccessLevel) -> Run {
        let env = Env::with(
            name,
            Options {
                cluster: Some(logging_cluster()),
                ..Default::default()
            },
        )
        .await;
        env.superuser_sql(PROBE);
        let (request, token) = env.approved_token_for("eve", "1h", grant).await;
        let server = Conn::connect(env.pg.port, SUPERUSER, &env.db, None)
            .await
            .expect("the superuser reaches the server directly");
        let tail = AuditTail {
            path: env.audit_path.clone(),
            offset: 0,
            request: request.clone(),
        };
        let proxy = login(&env, &token, 0).await;
        let mut run = Run {
            env,
            grant,
            request,
            token,
            proxy,
            server,
            tail,
            sessions: 1,
            problems: Vec::new(),
            writes_tried: 0,
            checked: 0,
            skipped: Vec::new(),
        };
        run.tail.statements();
        run
    }

    /// A new session through lockbox in place of one that ended.
    async fn reopen(&mut self) {
        self.proxy = login(&self.env, &self.token, self.sessions).await;
        self.sessions += 1;
        self.tail.statements();
    }

    /// Sends through lockbox; a session that ends is reported and replaced.
    async fn through_lockbox(&mut self, protocol: Protocol, sql: &str) -> Vec<Reply> {
        let result = match protocol {
            Protocol::Simple => self.proxy.simple(sql).await,
            Protocol::Extended => self.proxy.extended(sql).await,
        };
        match result {
            Ok(replies) => replies,
            Err(e) => {
                self.reopen().await;
                vec![Reply::Failed {
                    code: "session ended".into(),
                    message: e,
                }]
            }
        }
    }

    /// The server's own answer: `sql` straight to it, rolled back. `read_only` runs it in
    /// a read-only transaction, which tells whether it writes.
    async fn reference(&mut self, protocol: Protocol, sql: &str, read_only: bool) -> Vec<Reply> {
        let begin = if read_only {
            "BEGIN READ ONLY"
        } else {
            "BEGIN"
        };
        self.direct(begin).await;
        let replies = match protocol {
            Protocol::Simple => self.server.simple(sql).await,
            Protocol::Extended => self.server.extended(sql).await,
        }
        .expect("the server answers");
        self.direct("ROLLBACK").await;
        replies
    }

    /// Each of `texts` run alone, in order, in one rolled-back transaction.
    /// Whether each recorded statement, sent alone, writes: PostgreSQL refuses it in a
    /// read-only transaction (25006). Asked only where its tag does not say so already.
    async fn alone_writes(&mut self, texts: &[String], alone: &[Vec<Reply>]) -> Vec<bool> {
        let mut out = Vec::new();
        for (text, replies) in texts.iter().zip(alone) {
            let hides = replies
                .iter()
                .filter_map(Reply::tag)
                .any(verdict::tag_may_hide_a_write);
            if !hides {
                out.push(false);
                continue;
            }
            self.direct("BEGIN READ ONLY").await;
            let read_only = self.server.simple(text).await.expect("the server answers");
            self.direct("ROLLBACK").await;
            out.push(
                read_only
                    .iter()
                    .any(|r| matches!(r, Reply::Failed { code, .. } if code == "25006")),
            );
        }
        out
    }

    async fn alone(&mut self, texts: &[String]) -> Vec<Vec<Reply>> {
        self.direct("BEGIN").await;
        let mut out = Vec::new();
        for text in texts {
            let replies = self.server.simple(text).await.expect("the server answers");
            // The strings hold no transaction control: a piece that ended the transaction
            // would let the next ones commit.
            let ended = replies.iter().filter_map(Reply::tag).find(|t| {
                [
                    "BEGIN",
                    "START",
                    "COMMIT",
                    "ROLLBACK",
                    "END",
                    "PREPARE TRANSACTION",
                ]
                .iter()
                .any(|c| t.starts_with(c))
            });
            assert!(
                ended.is_none(),
                "{text:?} controls the transaction: {ended:?}"
            );
            out.push(replies);
        }
        self.direct("ROLLBACK").await;
        out
    }

    async fn direct(&mut self, sql: &str) {
        let replies = self.server.simple(sql).await.expect("the server answers");
        assert!(!replies.iter().any(Reply::is_error), "{sql}: {replies:?}");
    }

    /// Under an admin grant, `sql` through lockbox runs inside BEGIN … ROLLBACK.
    async fn bracket(&mut self, sql: &str) {
        if self.grant == AccessLevel::Admin {
            let replies = self.through_lockbox(Protocol::Simple, sql).await;
            if replies.iter().any(Reply::is_error) {
                self.problems
                    .push(format!("{sql} through lockbox failed: {replies:?}"));
            }
            self.tail.statements();
        }
    }

    async fn simple(&mut self, subject: &Subject) {
        self.check(subject, Protocol::Simple).await;
    }

    /// Single statements only: the server refuses a Parse of several.
    async fn extended(&mut self, subject: &Subject) {
        let single = self.reference(Protocol::Simple, &subject.sql, false).await;
        if matches!(single.as_slice(), [Reply::Done(_)]) {
            self.check(subject, Protocol::Extended).await;
        }
    }

    async fn check(&mut self, subject: &Subject, protocol: Protocol) {
        self.checked += 1;
        self.bracket("BEGIN").await;
        let via = self.through_lockbox(protocol, &subject.sql).await;
        let audited = self.tail.statements();
        self.bracket("ROLLBACK").await;
        let reference = self.reference(protocol, &subject.sql, false).await;
        // Asked under every grant: the audit's kind of a statement whose tag hides a write
        // (a writable CTE's SELECT) is judged by it.
        let writes = {
            let read_only = self.reference(protocol, &subject.sql, true).await;
            read_only.iter().any(Reply::is_error) && !reference.iter().any(Reply::is_error)
        };
        if writes && protocol == Protocol::Simple {
            self.writes_tried += 1;
        }
        let texts: Vec<String> = audited
            .iter()
            .map(|r| r["statement"].as_str().unwrap_or_default().to_owned())
            .collect();
        let alone = match protocol {
            Protocol::Simple => self.alone(&texts).await,
            Protocol::Extended => Vec::new(),
        };
        let alone_writes = match protocol {
            Protocol::Simple => self.alone_writes(&texts, &alone).await,
            Protocol::Extended => Vec::new(),
        };
        let observed = Observed {
            protocol,
            sql: &subject.sql,
            generated: subject.generated,
            grant: self.grant,
            reference: &reference,
            writes,
            via: &via,
            audited: &audited,
            alone: &alone,
            alone_writes: &alone_writes,
        };
        let issues = judge(&observed);
        if !issues.is_empty() {
            self.problems
                .push(describe(&subject.name, &observed, &issues));
        }
        if protocol == Protocol::Extended {
            for r in audited
                .iter()
                .filter(|r| r["statement"] != subject.sql.as_str())
            {
                self.skipped.push((subject.name.clone(), r.clone()));
            }
        }
    }

    /// Compares the server's log with the audit for the whole run; the report, empty when
    /// everything agreed.
    async fn finish(mut self) -> String {
        let end = marker(&format!("{}-end", self.env.db));
        let replies = self.proxy.simple(&end).await.expect("end marker");
        assert_eq!(replies, [Reply::Done("SELECT 1".into())]);
        self.proxy.close().await;
        self.server.close().await;
        let ids = [self.request.clone()];
        let audit = settled_audit(&self.env, &ids).await;
        let server = server_sessions(&self.env, &end).await;
        let logged = compare(&server, &audit_sessions(&audit, &ids));
        for (name, record) in &self.skipped {
            let status = audit
                .iter()
                .find(|o| o["type"] == "outcome" && o["statement_seq"] == record["seq"])
                .map(|o| o["status"].clone());
            if status != Some(Value::from("not_executed")) {
                self.problems.push(format!(
                    "[{name}] extended: a record of another statement came with it, outcome \
                     {status:?}: {record}"
                ));
            }
        }
        if self.problems.is_empty() && logged.is_empty() {
            return String::new();
        }
        let mut report = format!(
            "{} of {} checks (a string over one protocol) disagree with the server; the server \
             log and the audit disagree in {} places. Seed {:#x}, count {}.\n\n",
            self.problems.len(),
            self.checked,
            logged.len(),
            generator::seed(),
            generator::count(),
        );
        for p in &self.problems {
            report.push_str(p);
            report.push('\n');
        }
        report.push_str("\nThe server's log against the audit:\n");
        for p in &logged {
            report.push_str(p);
            report.push('\n');
        }
        let grant = self.grant.as_str();
        let path = std::env::temp_dir().join(format!("lockbox-differential-{grant}.txt"));
        std::fs::write(&path, &report).expect("write the report");
        let shown: String = report.chars().take(20_000).collect();
        format!(
            "{shown}\n… the full report ({} bytes) is in {}",
            report.len(),
            path.display()
        )
    }
}

/// Logs in through lockbox and sends the session's marker.
async fn login(env: &Env, token: &str, session: usize) -> Conn {
    let label = format!("{}-{session}", env.db);
    let mut conn = Conn::connect(env.proxy_port(), "eve", &env.db, Some(token))
        .await
        .expect("login through lockbox");
    let replies = conn.simple(&marker(&label)).await.expect("marker");
    assert_eq!(replies, [Reply::Done("SELECT 1".into())], "marker");
    conn
}

/// The statement records appended to the audit since the last call, for one request.
/// Lockbox writes them before it forwards the statements, so once the reply is in they
/// are too.
struct AuditTail {
    path: PathBuf,
    offset: u64,
    request: String,
}

impl AuditTail {
    fn statements(&mut self) -> Vec<Value> {
        let mut file = std::fs::File::open(&self.path).expect("audit file");
        file.seek(SeekFrom::Start(self.offset)).expect("seek");
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).expect("read audit");
        let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        self.offset += complete as u64;
        String::from_utf8_lossy(&bytes[..complete])
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("audit lines are JSON"))
            .filter(|r| r["type"] == "statement" && r["request_id"] == self.request.as_str())
            .collect()
    }
}
