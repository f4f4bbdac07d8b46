//! Query strings for the differential test: a hand-written corpus (tests/corpus/scanner.sql)
//! and a seeded generator. Both are written from PostgreSQL's lexical rules (the "Lexical
//! Structure" chapter and scan.l), not from lockbox's code:
//! - blanks are space, tab, newline, carriage return and form feed; a `--` comment ends at
//!   a newline *or* a carriage return; `/* */` comments nest;
//! - an operator stops before an embedded `/*` or `--` (`1 */*c*/ 2` is `1 * 2`), and `-`
//!   right before `--` starts the comment instead;
//! - strings: `'…'` with `''`, `E'…'` with backslash escapes, `U&'…'` with `\XXXX`,
//!   `\+XXXXXX` and `UESCAPE`, `N'…'`, `B'…'`, `X'…'`, and `$tag$…$tag$` whose tag is an
//!   identifier without `$` (letters, `_`, digits after the first, any non-ASCII);
//! - identifiers: unquoted ones may hold `$` and any non-ASCII character (`x$a$`, `café`,
//!   a no-break space); `"…"` doubles `"`; `U&"…"` escapes like `U&'…'`.
//!
//! Every generated string is valid SQL on its own (the test checks that the server agrees:
//! a generated string the server rejects is reported as a generator bug).

mod literals;

use literals::{identifier, text_literal};

/// The seed unless `LOCKBOX_DIFF_SEED` (decimal, or hex with `0x`) says otherwise.
pub const DEFAULT_SEED: u64 = 0x10C4_B0C5_2024;
/// Strings per run unless `LOCKBOX_DIFF_COUNT` says otherwise.
pub const DEFAULT_COUNT: usize = 300;

pub fn seed() -> u64 {
    match std::env::var("LOCKBOX_DIFF_SEED") {
        Ok(text) => {
            let text = text.trim();
            let parsed = match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            parsed.unwrap_or_else(|e| panic!("LOCKBOX_DIFF_SEED={text}: {e}"))
        }
        Err(_) => DEFAULT_SEED,
    }
}

pub fn count() -> usize {
    match std::env::var("LOCKBOX_DIFF_COUNT") {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("LOCKBOX_DIFF_COUNT={text}: {e}")),
        Err(_) => DEFAULT_COUNT,
    }
}

/// A named query string.
#[derive(Debug, Clone)]
pub struct Subject {
    pub name: String,
    pub sql: String,
    /// Generated strings are valid by construction; the corpus holds invalid ones too.
    pub generated: bool,
}

/// The corpus: entries start with a line `=== name`; an entry's text is every line up to
/// the next such line, without the last line break (so an entry may end inside a `--`
/// comment). Lines before the first entry are the file's own commentary.
pub fn corpus() -> Vec<Subject> {
    let text = include_str!("../../corpus/scanner.sql");
    let mut out: Vec<Subject> = Vec::new();
    for line in text.split_inclusive('\n') {
        if let Some(name) = line.strip_prefix("=== ") {
            out.push(Subject {
                name: name.trim().to_owned(),
                sql: String::new(),
                generated: false,
            });
        } else if let Some(last) = out.last_mut() {
            last.sql.push_str(line);
        }
    }
    for s in &mut out {
        if s.sql.ends_with('\n') {
            s.sql.pop();
        }
        // Escapes for characters an editor would mangle: \r, form feed, vertical tab.
        s.sql = s
            .sql
            .replace("<CR>", "\r")
            .replace("<FF>", "\u{c}")
            .replace("<VT>", "\u{b}")
            .replace("<NBSP>", "\u{a0}");
    }
    out
}

/// `count` strings from `seed`.
pub fn generated(seed: u64, count: usize) -> Vec<Subject> {
    let mut rng = Rng(seed);
    (0..count)
        .map(|i| Subject {
            name: format!("generated #{i} (seed {seed:#x})"),
            sql: query_string(&mut rng),
            generated: true,
        })
        .collect()
}

/// splitmix64: small, and the same sequence on every platform and Rust version.
pub struct Rng(pub u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn percent(&mut self, p: u64) -> bool {
        self.next() % 100 < p
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn one(&mut self, items: &[&'static str]) -> &'static str {
        items[self.below(items.len())]
    }
}

/// How a token meets its neighbours: two words need a blank between them; an operator
/// may touch a word or punctuation but not another operator (`*` `-` would become `*-`).
#[derive(Clone, Copy, PartialEq)]
enum Class {
    Word,
    Op,
    Punct,
}

struct Tok {
    text: String,
    class: Class,
}

#[derive(Default)]
struct Toks(Vec<Tok>);

impl Toks {
    fn w(&mut self, text: impl Into<String>) -> &mut Self {
        self.push(text, Class::Word)
    }
    fn op(&mut self, text: impl Into<String>) -> &mut Self {
        self.push(text, Class::Op)
    }
    fn p(&mut self, text: impl Into<String>) -> &mut Self {
        self.push(text, Class::Punct)
    }
    fn push(&mut self, text: impl Into<String>, class: Class) -> &mut Self {
        self.0.push(Tok {
            text: text.into(),
            class,
        });
        self
    }
    fn extend(&mut self, other: Toks) -> &mut Self {
        self.0.extend(other.0);
        self
    }
}

/// What may stand between two tokens, besides a space: each is a blank or a comment to
/// PostgreSQL. Several hold text that looks like SQL, quotes or comment starts.
const GAPS: &[&str] = &[
    "/* c */",
    "/**/",
    "/***/",
    "/* /* nested */ still a comment; DELETE FROM probe */",
    "/* ; DELETE FROM probe; */",
    "-- ; DELETE FROM probe\n",
    "--\n",
    "-- 日本 🦀 é\n",
    "/* ' \" $$ $a$ E'\\' */",
    "/*/ slash */",
    "/* * / */",
    "/* -- not a line comment */",
    "-- /* not a comment start\n",
    "\n",
    "\t",
    " \r\n ",
    "\u{c}",
    "/* */ /* */",
    "/*\n*/",
    "-- a carriage return ends this\r",
    "/* é */\r",
];

/// Keywords in a random case: the scanner folds them.
fn kw(rng: &mut Rng, word: &str) -> String {
    match rng.below(4) {
        0 => word.to_lowercase(),
        1 => word
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if i % 2 == 0 {
                    c.to_ascii_lowercase()
                } else {
                    c.to_ascii_uppercase()
                }
            })
            .collect(),
        _ => word.to_uppercase(),
    }
}

fn query_string(rng: &mut Rng) -> String {
    let n = *rng.pick(&[1, 1, 1, 2, 2, 3, 4]);
    let mut out = String::new();
    if rng.percent(15) {
        out.push_str(rng.one(GAPS));
        out.push(' ');
    }
    for i in 0..n {
        if i > 0 {
            if rng.percent(20) {
                out.push_str(rng.one(GAPS));
            }
            out.push(';');
            if rng.percent(10) {
                out.push_str(" ;");
            }
            out.push_str(if rng.percent(30) { rng.one(GAPS) } else { " " });
        }
        let statement = statement(rng);
        out.push_str(&render(rng, statement));
    }
    if rng.percent(30) {
        out.push(';');
    }
    if rng.percent(15) {
        // A trailing comment, possibly the last thing in the string (no line break).
        const ENDS: &[&str] = &[" -- the end", " /* the end */", "\n-- ; DELETE FROM probe"];
        out.push_str(rng.one(ENDS));
    }
    out
}

fn render(rng: &mut Rng, toks: Toks) -> String {
    let mut out = String::new();
    let mut prev: Option<&Tok> = None;
    for tok in &toks.0 {
        if let Some(prev) = prev {
            let may_touch = matches!(
                (prev.class, tok.class),
                (Class::Punct, _)
                    | (_, Class::Punct)
                    | (Class::Op, Class::Word)
                    | (Class::Word, Class::Op)
            );
            if !(may_touch && rng.percent(25)) {
                out.push_str(&gap(rng, &prev.text));
            }
        }
        out.push_str(&tok.text);
        prev = Some(tok);
    }
    out
}

fn gap(rng: &mut Rng, after: &str) -> String {
    let roll = rng.below(100);
    if roll < 60 {
        return " ".into();
    }
    if roll < 70 {
        return "\n".into();
    }
    loop {
        let g = rng.one(GAPS);
        // `-` right before `--` would start the comment one character early.
        if !(after.ends_with('-') && g.starts_with("--")) {
            return g.into();
        }
    }
}

fn statement(rng: &mut Rng) -> Toks {
    match rng.below(20) {
        0..=6 => select_items(rng),
        7..=8 => select_table(rng),
        9 => values(rng),
        10..=11 => insert(rng),
        12..=13 => update(rng),
        14 => delete(rng),
        _ => setting(rng),
    }
}

fn select_items(rng: &mut Rng) -> Toks {
    let mut t = Toks::default();
    t.w(kw(rng, "SELECT"));
    for i in 0..1 + rng.below(3) {
        if i > 0 {
            t.p(",");
        }
        let item = item(rng, 0);
        t.extend(item);
        if rng.percent(60) {
            t.w(kw(rng, "AS"));
            t.extend(identifier(rng));
        }
    }
    t
}

fn select_table(rng: &mut Rng) -> Toks {
    let mut t = Toks::default();
    t.w(kw(rng, "SELECT"));
    if rng.percent(40) {
        t.w("count").p("(").op("*").p(")");
    } else {
        t.extend(column(rng, "id"))
            .p(",")
            .extend(column(rng, "note"));
    }
    t.w(kw(rng, "FROM")).extend(table(rng));
    if rng.percent(30) {
        t.w(kw(rng, "AS")).extend(identifier(rng));
    }
    t.w(kw(rng, "WHERE")).extend(column(rng, "id"));
    t.op(*rng.pick(&["<", ">", "<=", ">=", "=", "<>", "!="]));
    t.w(int(rng));
    if rng.percent(40) {
        t.w(kw(rng, "AND")).extend(column(rng, "note")).op("<>");
        t.extend(text_expr(rng));
    }
    if rng.percent(30) {
        t.w(kw(rng, "LIMIT")).w(int(rng));
    }
    t
}

fn values(rng: &mut Rng) -> Toks {
    let mut t = Toks::default();
    t.w(kw(rng, "VALUES")).p("(");
    let a = item(rng, 1);
    let b = item(rng, 1);
    t.extend(a).p(",").extend(b).p(")");
    t
}

fn insert(rng: &mut Rng) -> Toks {
    let mut t = Toks::default();
    t.w(kw(rng, "INSERT")).w(kw(rng, "INTO")).extend(table(rng));
    t.p("(").extend(column(rng, "id")).p(",");
    t.extend(column(rng, "note")).p(")");
    t.w(kw(rng, "VALUES"));
    for i in 0..1 + rng.below(2) {
        if i > 0 {
            t.p(",");
        }
        t.p("(").w(format!("{}", 1000 + rng.below(1000))).p(",");
        let note = text_expr(rng);
        t.extend(note).p(")");
    }
    t
}

fn update(rng: &mut Rng) -> Toks {
    let mut t = Toks::default();
    t.w(kw(rng, "UPDATE")).extend(table(rng)).w(kw(rng, "SET"));
    t.extend(column(rng, "note")).op("=");
    let note = text_expr(rng);
    t.extend(note).w(kw(rng, "WHERE")).extend(column(rng, "id"));
    t.op(*rng.pick(&["=", "<", ">"])).w(int(rng));
    t
}

fn delete(rng: &mut Rng) -> Toks {
    let mut t = Toks::default();
    t.w(kw(rng, "DELETE")).w(kw(rng, "FROM")).extend(table(rng));
    t.w(kw(rng, "WHERE")).extend(column(rng, "id")).op("=");
    t.w(int(rng));
    if rng.percent(40) {
        t.w(kw(rng, "OR")).extend(column(rng, "note")).op("=");
        let note = text_literal(rng, false);
        t.extend(note);
    }
    t
}

/// SET, RESET and SHOW of settings that change nothing the scanner depends on.
fn setting(rng: &mut Rng) -> Toks {
    let mut t = Toks::default();
    match rng.below(7) {
        0 | 1 => {
            t.w(kw(rng, "SET")).w("application_name");
            if rng.percent(50) {
                t.op("=");
            } else {
                t.w(kw(rng, "TO"));
            }
            let value = text_literal(rng, true);
            t.extend(value);
        }
        2 => {
            t.w(kw(rng, "RESET")).w("application_name");
        }
        3 => {
            t.w(kw(rng, "SET")).w("extra_float_digits").op("=");
            t.w(format!("{}", rng.below(4)));
        }
        4 => {
            t.w(kw(rng, "SET")).w(kw(rng, "TIME")).w(kw(rng, "ZONE"));
            t.w("'UTC'");
        }
        5 => {
            t.w(kw(rng, "SET")).w("datestyle").w(kw(rng, "TO"));
            t.w("'ISO'").p(",").w("'MDY'");
        }
        _ => {
            t.w(kw(rng, "SHOW")).w("work_mem");
        }
    }
    t
}

/// The test table, spelt every way that names it.
fn table(rng: &mut Rng) -> Toks {
    let mut t = Toks::default();
    match rng.below(7) {
        0 => t.w("\"probe\""),
        1 => t.w("public").p(".").w("probe"),
        2 => t.w("PROBE"),
        3 => t.w("U&\"pr\\006Fbe\""),
        4 => t.w("U&\"pr!006Fbe\"").w(kw(rng, "UESCAPE")).w("'!'"),
        _ => t.w("probe"),
    };
    t
}

fn column(rng: &mut Rng, name: &str) -> Toks {
    let mut t = Toks::default();
    let first = name.chars().next().unwrap_or('x');
    match rng.below(6) {
        0 => t.w(format!("\"{name}\"")),
        1 => t.w(name.to_uppercase()),
        2 => t.w(format!("U&\"\\{:04X}{}\"", first as u32, &name[1..])),
        _ => t.w(name),
    };
    t
}

fn int(rng: &mut Rng) -> String {
    format!("{}", 1 + rng.below(99))
}

/// A select-list item: a number, a comparison, text, or one of the odd literal forms.
fn item(rng: &mut Rng, depth: usize) -> Toks {
    match rng.below(10) {
        0..=2 => num_expr(rng, depth),
        3 => {
            let mut t = num_expr(rng, depth + 1);
            t.op(*rng.pick(&["<", ">", "<=", ">=", "=", "<>", "!="]));
            t.extend(num_expr(rng, depth + 1));
            t
        }
        4..=6 => text_expr(rng),
        7 => {
            let mut t = Toks::default();
            t.w(kw(rng, "CASE")).w(kw(rng, "WHEN"));
            t.extend(num_expr(rng, 2)).op("<").extend(num_expr(rng, 2));
            t.w(kw(rng, "THEN")).extend(text_literal(rng, false));
            t.w(kw(rng, "ELSE")).extend(text_literal(rng, false));
            t.w(kw(rng, "END"));
            t
        }
        _ => {
            let mut t = Toks::default();
            match rng.below(7) {
                0 => t.w(format!("B'{}'", bits(rng))),
                1 => t.w(format!("X'{:X}'", rng.next() % 0xFFFF)),
                2 => t.w("ARRAY").p("[").w(int(rng)).p(",").w(int(rng)).p("]"),
                3 => t.w("'{1,2}'").op("::").w("int").p("[").p("]"),
                4 => t.w(kw(rng, "NULL")),
                5 => t
                    .w(kw(rng, "CAST"))
                    .p("(")
                    .w(int(rng))
                    .w(kw(rng, "AS"))
                    .w("text")
                    .p(")"),
                _ => t.w(kw(rng, "TRUE")),
            };
            t
        }
    }
}

fn bits(rng: &mut Rng) -> String {
    (0..1 + rng.below(8))
        .map(|_| if rng.percent(50) { '1' } else { '0' })
        .collect()
}

/// Integer arithmetic that cannot fail: no division by zero, no overflow (depth ≤ 2, so
/// at most 99⁴), square roots of positive literals only.
fn num_expr(rng: &mut Rng, depth: usize) -> Toks {
    let mut t = Toks::default();
    let roll = rng.below(10);
    if depth >= 2 || roll < 3 {
        match rng.below(8) {
            0 => t.w(*rng.pick(&["1.5e3", ".5", "2.", "1E-3", "007"])),
            1 => t
                .w(format!("'{}'", int(rng)))
                .op("::")
                .w(*rng.pick(&["int", "int8", "numeric"])),
            _ => t.w(int(rng)),
        };
        return t;
    }
    match roll {
        3..=4 => {
            let op = *rng.pick(&["+", "-", "*"]);
            t.extend(num_expr(rng, depth + 1)).op(op);
            t.extend(num_expr(rng, depth + 1));
        }
        5 => {
            // Division by a literal only: no division by zero.
            t.extend(num_expr(rng, depth + 1)).op("/").w(int(rng));
        }
        6 => {
            // `%` and the bitwise operators take integers only, and the bitwise ones bind
            // looser than `+` and `*`: in parentheses, they apply to their literals only.
            let op = *rng.pick(&["%", "&", "|", "#", "<<", ">>"]);
            t.p("(").w(int(rng)).op(op).w(int(rng)).p(")");
        }
        7 => {
            // A prefix operator other than `-` binds looser than `+` (`|/ 4 + ~5` is
            // `|/ (4 + ~5)`): in parentheses, it applies to its literal only.
            let prefix = *rng.pick(&["-", "@", "|/", "||/", "~"]);
            t.p("(").op(prefix).w(int(rng)).p(")");
        }
        8 => {
            t.w(int(rng)).op("*").op("-").w(int(rng));
        }
        _ => {
            t.p("(").extend(num_expr(rng, depth + 1)).p(")");
        }
    }
    t
}

/// A text value: a literal of any form, concatenated, cast or passed to a function.
fn text_expr(rng: &mut Rng) -> Toks {
    let mut t = Toks::default();
    match rng.below(6) {
        0 => {
            t.extend(text_literal(rng, false)).op("||");
            t.extend(text_literal(rng, false));
        }
        1 => {
            t.extend(text_literal(rng, false)).op("::").w("text");
        }
        2 => {
            t.w("lower").p("(").extend(text_literal(rng, false)).p(")");
        }
        3 => {
            t.extend(text_literal(rng, false))
                .w(kw(rng, "COLLATE"))
                .w("\"C\"");
        }
        _ => {
            t.extend(text_literal(rng, false));
        }
    }
    t
}

#[test]
fn the_generator_is_deterministic_and_the_corpus_reads() {
    let a = generated(7, 50);
    let b = generated(7, 50);
    assert!(a.iter().zip(&b).all(|(x, y)| x.sql == y.sql));
    let c = generated(8, 50);
    assert!(a.iter().zip(&c).any(|(x, y)| x.sql != y.sql));
    let all: String = generated(DEFAULT_SEED, 200)
        .iter()
        .map(|s| s.sql.as_str())
        .collect();
    for form in [
        "U&'", "UESCAPE", "E'", "$$", "/*", "--", "\r", "🦀", "x$a$", "N'",
    ] {
        assert!(all.contains(form), "the generator never writes {form:?}");
    }
    let corpus = corpus();
    assert!(corpus.len() > 40, "{}", corpus.len());
    assert!(corpus
        .iter()
        .all(|s| !s.name.is_empty() && !s.sql.is_empty()));
}
