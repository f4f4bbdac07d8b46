//! SQL text as PostgreSQL reads it: one parse by PostgreSQL's own grammar (libpg_query,
//! through the `pg_query` crate) splits a query string into statements, keeping each one's
//! original text, and hands each parse tree to `guard` for classification.
//!
//! No other SQL parser decides anything: a string PostgreSQL's grammar rejects is one
//! statement of kind `unknown` (the server will reject it whole, and runs none of it), and
//! a string with no statement (empty, or only comments) is one statement of kind `empty`,
//! so every query string the server receives has a record.

pub(crate) mod normalize;
pub(crate) mod skeleton;

use std::ops::Range;

use pg_query::protobuf::RawStmt;
use serde::{Deserialize, Serialize};

/// What a statement does, as the audit reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatementKind {
    Select,
    Insert,
    Update,
    Delete,
    /// MERGE: inserts, updates or deletes, by its actions.
    Merge,
    Ddl,
    Other,
    Unknown,
    /// A query string with no statement in it: empty, or only comments and semicolons.
    Empty,
}

/// One query string, split the way the server's parser splits it.
#[derive(Debug)]
pub enum Parsed {
    /// Each statement's byte range in the original text and its parse tree.
    Statements(Vec<(Range<usize>, RawStmt)>),
    /// Nothing but whitespace, comments and semicolons.
    Empty,
    /// The grammar rejects the string (the server will too, before running any of it).
    Rejected(String),
}

/// Runs `work` on `sql`'s parse tree where its nesting cannot exhaust the stack: on this
/// thread when the text cannot nest deeply, otherwise on a thread with a large stack of its
/// own. Decoding, walking and dropping a tree recurse once per level, and PostgreSQL's
/// grammar allows thousands of levels (its own stack-depth check measures from the thread's
/// start, so the stack cannot be swapped under it in place). `None` if no thread could run
/// it: the caller then decides nothing on a guess.
pub fn with_tree_stack<T: Send>(sql: &str, work: impl FnOnce() -> T + Send) -> Option<T> {
    if !may_nest_deeply(sql) {
        return Some(work());
    }
    // Waiting for it, a session thread hands its other sessions on (`runtime::blocking`).
    crate::runtime::blocking(|| {
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("lockbox-parse".into())
                .stack_size(TREE_STACK)
                .spawn_scoped(scope, work)
                .ok()
                .and_then(|worker| worker.join().ok())
        })
    })
}

/// The stack deep trees are handled on (reserved; pages are committed only as used).
const TREE_STACK: usize = 64 * 1024 * 1024;

/// Whether a text could have a deep tree. Every level of nesting takes at least one token
/// (a bracket, an operator, `::`, NOT, IS, COLLATE, a keyword…), so a text of few tokens
/// cannot nest deeply, whatever it nests with; counting tokens needs no list of what nests,
/// which could never be complete. Most statements an application sends are short, and the
/// analysis cache spares repeats the parse altogether.
fn may_nest_deeply(sql: &str) -> bool {
    /// A tree of this many tokens stays far inside a worker thread's 2 MiB stack, even in a
    /// debug build (where one level of `[` costs about 4 KiB across parse, decode and walk).
    const MAX_INLINE_TOKENS: usize = 48;
    if sql.len() > 4096 {
        return true;
    }
    let mut tokens = 0;
    let mut in_word = false;
    for b in sql.bytes() {
        let word = b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80;
        if word {
            tokens += usize::from(!in_word);
        } else if !b.is_ascii_whitespace() {
            tokens += 1;
        }
        in_word = word;
    }
    tokens > MAX_INLINE_TOKENS
}

/// Parses `sql` with PostgreSQL's grammar, as the server reads it with the settings lockbox
/// pins (standard_conforming_strings on).
pub fn parse(sql: &str) -> Parsed {
    parse_with(sql, pg_query::ParserOptions::DEFAULT)
}

/// Parses `sql` as a server with other lexer settings would.
pub fn parse_with(sql: &str, options: pg_query::ParserOptions) -> Parsed {
    if longest_operator_run(sql) > MAX_OPERATOR_RUN {
        // PostgreSQL's lexer takes time quadratic in a run of operator characters (`/*/*/*…`
        // is matched to its end at every comment start); no statement has such a run.
        return Parsed::Rejected("a run of operator characters too long to lex".into());
    }
    let result = match pg_query::parse(sql, options) {
        Ok(result) => result,
        Err(e) => return Parsed::Rejected(e.to_string()),
    };
    let raw = result.protobuf.stmts;
    if raw.is_empty() {
        return Parsed::Empty;
    }
    match statement_ranges(sql, &raw) {
        Some(ranges) => Parsed::Statements(ranges.into_iter().zip(raw).collect()),
        // Cannot happen for UTF-8 text; if it did, nothing would be decided on a guess.
        None => Parsed::Rejected("statement boundaries inside a character".into()),
    }
}

/// Longest run of operator characters no SQL needs.
pub(crate) const MAX_OPERATOR_RUN: usize = 1024;

pub(crate) fn longest_operator_run(sql: &str) -> usize {
    let (mut longest, mut run) = (0, 0);
    for b in sql.bytes() {
        if b"+-*/<>=~!@#%^&|`?".contains(&b) {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    longest
}

/// The text of each statement. A statement's text runs from just after the previous
/// statement's semicolon to its own end, so comments written before it stay with it;
/// whitespace and stray semicolons around it are dropped. The parser's locations are byte
/// offsets; `None` if one would not fall on a character boundary.
fn statement_ranges(sql: &str, raw: &[RawStmt]) -> Option<Vec<Range<usize>>> {
    let mut out = Vec::with_capacity(raw.len());
    let mut previous_end = 0usize;
    for stmt in raw {
        let start = usize::try_from(stmt.stmt_location).unwrap_or(0);
        let end = match usize::try_from(stmt.stmt_len) {
            // 0 means "to the end of the string".
            Ok(0) | Err(_) => sql.len(),
            Ok(len) => start.saturating_add(len).min(sql.len()),
        };
        let from = previous_end.min(start);
        let range = trim_range(sql, from..end);
        sql.get(range.clone())?;
        out.push(range);
        previous_end = end;
    }
    Some(out)
}

/// `range` without leading whitespace and semicolons and without trailing whitespace.
fn trim_range(sql: &str, range: Range<usize>) -> Range<usize> {
    let bytes = sql.as_bytes();
    let (mut start, mut end) = (range.start, range.end.min(bytes.len()));
    while start < end && (bytes[start].is_ascii_whitespace() || bytes[start] == b';') {
        start += 1;
    }
    while end > start && bytes[end - 1].is_ascii_whitespace() {
        end -= 1;
    }
    start..end
}

/// The statements of `sql` as slices of the original text: what the audit records one by
/// one. A rejected string is one piece (the whole string); an empty one is one piece too.
pub fn split_statements(sql: &str) -> Vec<&str> {
    let ranges = with_tree_stack(sql, || match parse(sql) {
        Parsed::Statements(list) => list.into_iter().map(|(range, _)| range).collect(),
        Parsed::Empty | Parsed::Rejected(_) => Vec::new(),
    })
    .unwrap_or_default();
    match ranges.is_empty() {
        true => vec![sql],
        false => ranges.into_iter().filter_map(|r| sql.get(r)).collect(),
    }
}

/// The invariant that keeps statements from hiding: every token PostgreSQL's scanner finds
/// in `sql` lies inside a statement the audit records, except semicolons and comments
/// between statements; ranges are in order, disjoint and on character boundaries; a string
/// the grammar rejects is recorded whole. Used by the seeded generator test and the fuzz
/// target (`fuzz/`). `Err` says what broke.
pub fn check_split_invariants(sql: &str) -> Result<(), String> {
    with_tree_stack(sql, || split_invariants(sql)).unwrap_or_else(|| Err("no thread".into()))
}

fn split_invariants(sql: &str) -> Result<(), String> {
    let analyses = crate::guard::analyze_query(sql);
    let ranges: Vec<Range<usize>> = analyses.iter().map(|a| a.range.clone()).collect();
    if ranges.is_empty() {
        return Err("no statement at all".into());
    }
    let mut previous_end = 0;
    for range in &ranges {
        if range.start < previous_end || range.end < range.start || sql.get(range.clone()).is_none()
        {
            return Err(format!("bad range {range:?} after {previous_end}"));
        }
        previous_end = range.end;
    }
    match parse(sql) {
        Parsed::Statements(_) => {}
        Parsed::Empty | Parsed::Rejected(_) => {
            return match ranges.as_slice() {
                [only] if *only == (0..sql.len()) => Ok(()),
                _ => Err(format!("a rejected or empty string split into {ranges:?}")),
            };
        }
    }
    let tokens = pg_query::scan(sql)
        .map_err(|e| format!("parsed but not scanned: {e}"))?
        .tokens;
    for token in tokens {
        let (start, end) = (token.start as usize, token.end as usize);
        let inside = ranges.iter().any(|r| r.start <= start && end <= r.end);
        let between = matches!(
            pg_query::protobuf::Token::try_from(token.token),
            Ok(pg_query::protobuf::Token::Ascii59
                | pg_query::protobuf::Token::SqlComment
                | pg_query::protobuf::Token::CComment)
        );
        if !inside && !between {
            return Err(format!(
                "token {:?} at {start}..{end} is in no statement",
                sql.get(start..end)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deep_tree_is_worked_on_off_the_session_threads_way_and_a_short_text_inline() {
        let before = crate::runtime::blocking_calls();
        assert_eq!(with_tree_stack("SELECT 1", || 1), Some(1));
        assert_eq!(crate::runtime::blocking_calls(), before);
        let deep = format!("SELECT {}1{}", "(".repeat(200), ")".repeat(200));
        assert_eq!(with_tree_stack(&deep, || 2), Some(2));
        assert_eq!(crate::runtime::blocking_calls(), before + 1);
    }

    fn check_split(sql: &str, expected: &[&str]) {
        assert_eq!(split_statements(sql), expected, "splitting {sql:?}");
    }

    #[test]
    fn splits_where_postgresql_splits() {
        check_split("select 1", &["select 1"]);
        check_split("select 1; select 2;", &["select 1", "select 2"]);
        check_split("select ';'; select 2", &["select ';'", "select 2"]);
        check_split("select $$a;b$$; select 2", &["select $$a;b$$", "select 2"]);
        check_split(
            "select $a$;$$;$a$; select 2",
            &["select $a$;$$;$a$", "select 2"],
        );
        check_split("select 'é;'; select 'ü'", &["select 'é;'", "select 'ü'"]);
        check_split(
            "select 1;\n  -- note; here\n select 2",
            &["select 1", "-- note; here\n select 2"],
        );
        // PostgreSQL's C comments nest; a lexer that does not nest them sees `select 2`
        // as code.
        check_split(
            "select 1 /* a /* b */ ; */ ; select 2",
            &["select 1 /* a /* b */ ; */", "select 2"],
        );
        // `*/*` is an operator followed by a comment start, not a comment end.
        check_split(
            "select 2 */* x; */ 3; select 4",
            &["select 2 */* x; */ 3", "select 4"],
        );
        // A SQL-standard function body holds semicolons of its own.
        check_split(
            "create function f() returns int language sql begin atomic select 1; end; select 2",
            &[
                "create function f() returns int language sql begin atomic select 1; end",
                "select 2",
            ],
        );
    }

    #[test]
    fn strings_with_no_statement_are_one_piece() {
        check_split("", &[""]);
        check_split(" ; ;", &[" ; ;"]);
        check_split("/* only; a comment */", &["/* only; a comment */"]);
        assert!(matches!(parse("-- nothing"), Parsed::Empty));
    }

    #[test]
    fn a_rejected_string_is_kept_whole() {
        let sql = "select 1; frobnicate the database; delete from t";
        assert_eq!(split_statements(sql), [sql]);
        assert!(matches!(parse(sql), Parsed::Rejected(_)));
        // An unterminated quote swallows the rest for the server as for us.
        assert!(matches!(
            parse("select 'a; delete from t"),
            Parsed::Rejected(_)
        ));
    }

    /// Texts under the 4 KiB bound that nest deeply with constructs no operator count sees
    /// (`[`, `::`, NOT, IS, COLLATE, …): analysed on a thread with a tokio worker's 2 MiB
    /// stack, they must come back (as statements or rejected), not overflow it.
    #[test]
    fn deep_nesting_of_any_kind_stays_off_a_worker_sized_stack() {
        let texts = [
            format!("select array{}1{}", "[".repeat(1000), "]".repeat(1000)),
            format!("select 1{}", "::int".repeat(700)),
            format!("select {}true", "not ".repeat(900)),
            format!("select 1{}", " is null".repeat(450)),
            format!("select 'a'{}", " collate \"C\"".repeat(300)),
            format!("select {}1{}", "(".repeat(1500), ")".repeat(1500)),
            format!("select {}1", "- ".repeat(1500)),
            format!("select {}1", "+".repeat(1000)),
        ];
        for text in texts {
            assert!(text.len() <= 4096, "{}", text.len());
            let worker = std::thread::Builder::new()
                .stack_size(2 * 1024 * 1024)
                .spawn(move || crate::guard::analyze_query(&text).len())
                .expect("spawn");
            assert_eq!(worker.join().expect("no overflow"), 1);
        }
    }

    #[test]
    fn runs_of_operator_characters_are_not_lexed() {
        // The lexer would take quadratic time; such a string is rejected (recorded whole,
        // refused below admin) without lexing it.
        let hostile = "/*".repeat(60_000);
        assert!(matches!(parse(&hostile), Parsed::Rejected(_)));
        assert!(matches!(
            parse("select 1 /*/*/* nested */*/*/ + 2"),
            Parsed::Statements(_)
        ));
    }

    #[test]
    fn splitting_is_linear_in_the_input() {
        // 20k statements in one string would take minutes with a per-statement rescan.
        let sql = "select 1;".repeat(20_000);
        assert_eq!(split_statements(&sql).len(), 20_000);
    }

    /// xorshift64*: reproducible picks for the generators.
    struct Rng(u64);

    impl Rng {
        fn from_env(var: &str, default: u64) -> (u64, Rng) {
            let seed = std::env::var(var)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(default);
            (seed, Rng(seed | 1))
        }

        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
    }

    fn cases() -> usize {
        std::env::var("LOCKBOX_SPLIT_CASES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3_000)
    }

    /// Text that lexers disagree about, for inside literals and comments.
    const TRICKY: &[&str] = &[
        "",
        ";",
        "'",
        "''",
        "\"",
        "\\",
        "$$",
        "$a$",
        "--",
        "/*",
        "*/",
        "é",
        "日本",
        "🦀",
        "\n",
        "delete from t;",
        "\\'",
    ];

    fn literal(rng: &mut Rng) -> String {
        let inner: String = (0..rng.below(3)).map(|_| rng.pick(TRICKY)).collect();
        let plain = inner.replace('\'', "''");
        match rng.below(9) {
            0 => format!("'{plain}'"),
            1 => format!("E'{}'", plain.replace('\\', "\\\\")),
            2 => format!("$q${}$q$", inner.replace("$q$", "")),
            3 => format!("$${}$$", inner.replace('$', "")),
            4 => format!("U&'{}'", plain.replace('\\', "\\\\")),
            5 => "U&'d!0061t!+000061' UESCAPE '!'".to_owned(),
            6 => format!("{}", rng.next() % 1000),
            7 => "b'0101'".to_owned(),
            _ => format!("\"{}\"", inner.replace('"', "\"\"").replace('\0', "")),
        }
    }

    fn gap(rng: &mut Rng) -> String {
        let inner: String = (0..rng.below(3)).map(|_| rng.pick(TRICKY)).collect();
        match rng.below(6) {
            0 => format!("--{}\n", inner.replace('\n', " ")),
            1 => format!("/*{}*/", inner.replace("*/", "").replace("/*", "")),
            2 => format!("/* /* {} */ */", inner.replace("*/", "").replace("/*", "")),
            3 => "\n\t".to_owned(),
            _ => " ".to_owned(),
        }
    }

    fn expression(rng: &mut Rng, depth: usize) -> String {
        const OPERATORS: &[&str] = &[
            "+",
            "-",
            "*",
            "/",
            "<>",
            "||",
            "*/*x*/",
            "-/**/",
            "+--x\n",
            "<=",
            "!=",
            "~",
            "@-@",
            "::text ||",
            "OPERATOR(pg_catalog.+)",
        ];
        let mut out = if depth < 2 && rng.below(4) == 0 {
            format!("({})", expression(rng, depth + 1))
        } else {
            literal(rng)
        };
        for _ in 0..rng.below(3) {
            out.push_str(&gap(rng));
            out.push_str(rng.pick(OPERATORS));
            out.push_str(&gap(rng));
            out.push_str(&literal(rng));
        }
        out
    }

    fn statement(rng: &mut Rng) -> String {
        let e = expression(rng, 0);
        match rng.below(6) {
            0 => format!("select {e}"),
            1 => format!("select {e} from t"),
            2 => format!("delete from t where a = {e}"),
            3 => format!("insert into t values ({e})"),
            4 => format!("update t set a = {e}"),
            _ => format!("select{}{e}", gap(rng)),
        }
    }

    /// Query strings built from statements whose literals, comments and operators hold the
    /// pieces lexers disagree about: every quoting form, Unicode escapes, dollar-quote tags,
    /// operator characters next to comment starts, nested comments, multi-byte text.
    /// `LOCKBOX_SPLIT_SEED` and `LOCKBOX_SPLIT_CASES` change the run.
    #[test]
    fn generated_statements_stay_in_sight() {
        let (seed, mut rng) = Rng::from_env("LOCKBOX_SPLIT_SEED", 0x5eed_1ab0);
        let mut parsed = 0;
        for case in 0..cases() {
            let sql: Vec<String> = (0..1 + rng.below(4))
                .map(|_| format!("{}{}", gap(&mut rng), statement(&mut rng)))
                .collect();
            let sql = sql.join(";");
            if let Err(broken) = check_split_invariants(&sql) {
                panic!("case {case} (seed {seed}): {sql:?}: {broken}");
            }
            parsed += usize::from(matches!(parse(&sql), Parsed::Statements(_)));
        }
        // The generator must reach the grammar, not only its error path.
        assert!(parsed * 2 > cases(), "only {parsed} strings parsed");
    }

    /// Arbitrary concatenations of the same pieces: mostly rejected strings, which must
    /// stay whole.
    #[test]
    fn generated_fragments_keep_every_statement_in_sight() {
        const PIECES: &[&str] = &[
            "select",
            " ",
            "\n",
            ";",
            "1",
            "a",
            "\"q\"",
            "'s'",
            "''",
            "'",
            "\"",
            "$$",
            "$a$",
            "$_$",
            "$1",
            "E'",
            "\\",
            "U&'",
            "U&\"",
            " UESCAPE '!'",
            "!",
            "b'01'",
            "x'1f'",
            "/*",
            "*/",
            "--",
            "-",
            "+",
            "*",
            "/",
            "<",
            ">",
            "=",
            "~",
            "@",
            "#",
            "%",
            "^",
            "&",
            "|",
            "`",
            "?",
            "::",
            "(",
            ")",
            ",",
            ".",
            "delete from t",
            "é",
            "日本",
            "🦀",
            "\t",
            "begin atomic",
            "end",
            "$$;$$",
            "/* /* */ */",
            "0x1F",
            "1e3",
            "1.5",
            "_",
        ];
        let (seed, mut rng) = Rng::from_env("LOCKBOX_SPLIT_SEED", 0xf4a9_0001);
        for case in 0..cases() {
            let sql: String = (0..1 + rng.below(24)).map(|_| rng.pick(PIECES)).collect();
            if let Err(broken) = check_split_invariants(&sql) {
                panic!("case {case} (seed {seed}): {sql:?}: {broken}");
            }
        }
    }
}
