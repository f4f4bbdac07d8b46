//! The cache's promise, checked differentially: whatever text warmed it, a verdict from the
//! cache equals a cold analysis of the same text, ranges included.

use super::*;
use crate::guard::Class;

fn key(sql: &str) -> Option<String> {
    normalize::shape(sql).map(|s| s.key)
}

fn agrees(warm: &str, sql: &str) -> bool {
    match check_cache_agrees(warm, sql) {
        Ok(shared) => shared,
        Err(broken) => panic!("{broken}"),
    }
}

#[test]
fn pgbench_literals_share_one_analysis() {
    let cache = AnalysisCache::new();
    let mut texts = 0;
    for i in 0..400u64 {
        let (aid, tid, bid) = (i * 7919 % 100_000 + 1, i % 10 + 1, i % 3 + 1);
        let delta = (i * 104_729 % 10_000) as i64 - 5_000;
        for sql in [
            "BEGIN;".to_owned(),
            format!("UPDATE pgbench_accounts SET abalance = abalance + {delta} WHERE aid = {aid};"),
            format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid};"),
            format!("UPDATE pgbench_tellers SET tbalance = tbalance + {delta} WHERE tid = {tid};"),
            format!("UPDATE pgbench_branches SET bbalance = bbalance + {delta} WHERE bid = {bid};"),
            format!("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ({tid}, {bid}, {aid}, {delta}, CURRENT_TIMESTAMP);"),
            "END;".to_owned(),
        ] {
            assert_eq!(cache.analyze(&sql)[..], analyze_query(&sql)[..], "{sql}");
            texts += 1;
        }
    }
    // BEGIN, END, the SELECT, and each statement with a delta twice: `+ -5` and `+ 5` are
    // different tokens.
    assert_eq!((texts, cache.cold_analyses()), (2800, 11));

    let select_only = AnalysisCache::new();
    for aid in 1..=1000 {
        select_only.analyze(&format!(
            "SELECT abalance FROM pgbench_accounts WHERE aid = {aid};"
        ));
    }
    assert_eq!(select_only.cold_analyses(), 1);
}

#[test]
fn zero_negative_signed_float_and_large_numbers_are_shared() {
    for (a, b) in [
        ("select * from t where a = 0", "select * from t where a = 5"),
        (
            "select * from t where a = -5",
            "select * from t where a = -123",
        ),
        (
            "select * from t where a = - 5",
            "select * from t where a = - 0",
        ),
        (
            "select * from t where a = +5",
            "select * from t where a = +60",
        ),
        (
            "select * from t where a = 1.5",
            "select * from t where a = 22.75",
        ),
        (
            "select * from t where a = -1.5",
            "select * from t where a = -0.0",
        ),
        ("select 2147483648", "select 99999999999999999999"),
        (
            "select * from t limit 10 offset 0",
            "select * from t limit 1 offset 20",
        ),
        (
            "select a::varchar(10) from t",
            "select a::varchar(3) from t",
        ),
        (
            "select 'it''s 12', $1, t2.c3 from t2 where a = 4",
            "select 'it''s 12', $1, t2.c3 from t2 where a = 44",
        ),
    ] {
        assert!(agrees(a, b) && agrees(b, a), "{a} / {b} not shared");
    }
}

#[test]
fn verdicts_that_read_a_number_are_cached_by_exact_text() {
    let cache = AnalysisCache::new();
    for n in 0..50 {
        cache.analyze(&format!("SET statement_timeout = {n}"));
        // lo_open's mode decides read or write.
        cache.analyze(&format!("select lo_open(16400, {n})"));
    }
    assert_eq!(cache.cold_analyses(), 100);
    // Sent again, the exact text hits.
    cache.analyze("SET statement_timeout = 7");
    assert_eq!(cache.cold_analyses(), 100);
}

/// Pairs of one shape whose verdicts differ by the number alone: from the guard reading it
/// (settings, EXPLAIN's options, lo_open's mode) or from the grammar checking it.
const VERDICT_CHANGES: &[(&str, &str)] = &[
    (
        "SET default_transaction_read_only = 1",
        "SET default_transaction_read_only = 0",
    ),
    (
        "SET transaction_read_only = 1",
        "SET transaction_read_only = 0",
    ),
    (
        "SET standard_conforming_strings = 1",
        "SET standard_conforming_strings = 0",
    ),
    (
        "select set_config('default_transaction_read_only', 1::pg_catalog.text, false)",
        "select set_config('default_transaction_read_only', 0::pg_catalog.text, false)",
    ),
    (
        "explain (analyze 0) delete from t where a = 1",
        "explain (analyze 1) delete from t where a = 1",
    ),
    (
        "select lo_open(16400, 262144)",
        "select lo_open(16400, 131072)",
    ),
    (
        "alter table t alter column 1 set statistics 100",
        "alter table t alter column 0 set statistics 100",
    ),
    (
        "select cast(a as float(5)) from t",
        "select cast(a as float(0)) from t",
    ),
    (
        "select cast(a as float(53)) from t",
        "select cast(a as float(54)) from t",
    ),
];

#[test]
fn numbers_that_change_a_verdict_are_never_shared() {
    for (a, b) in VERDICT_CHANGES {
        assert!(key(a).is_some() && key(a) == key(b), "{a} / {b}");
        let (cold_a, cold_b) = (analyze_query(a), analyze_query(b));
        assert_ne!(cold_a[0].analysis, cold_b[0].analysis, "{a} / {b}");
        assert!(!agrees(a, b) && !agrees(b, a), "{a} / {b} shared");
    }
    // The scanner's ICONST and FCONST are different keys: `FETCH` takes only the first.
    assert_ne!(key("fetch 5 from c"), key("fetch 99999999999 from c"));
    assert_ne!(key("fetch 5 from c"), key("fetch 1.5 from c"));
    assert_eq!(
        analyze_query("fetch 1.5 from c")[0].analysis.class,
        Class::Unknown
    );
    for (a, b) in [
        ("fetch 5 from c", "fetch 99999999999 from c"),
        ("fetch 5 from c", "fetch 1.5 from c"),
    ] {
        agrees(a, b);
        agrees(b, a);
    }
}

#[test]
fn ranges_move_with_the_literals() {
    let warm =
        "select 1; update t set a = 22 where b = 333;\n select 4444 ; delete from t where a = 1.5";
    let sql = "select 55555; update t set a = 6 where b = 0;\n select 77 ; delete from t where a = 12345.678";
    assert!(agrees(warm, sql));
    let cache = AnalysisCache::new();
    cache.analyze(warm);
    let pieces: Vec<&str> = cache
        .analyze(sql)
        .iter()
        .map(|s| &sql[s.range.clone()])
        .collect();
    assert_eq!(
        pieces,
        [
            "select 55555",
            "update t set a = 6 where b = 0",
            "select 77",
            "delete from t where a = 12345.678"
        ]
    );
}

/// xorshift64*: reproducible picks for the generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

/// Statements with numbers where `#` is: every place the guard reads a number, the grammar
/// checks or stores one elsewhere than an A_Const, and spellings the key must refuse.
const TEMPLATES: &[&str] = &[
    "SELECT abalance FROM pgbench_accounts WHERE aid = #",
    "select * from t1 where col2x = # and b = '# x' order by #",
    "insert into t values (#, #, -#, '#')",
    "insert into t (a, b) values (#, #) on conflict (a) do update set b = #",
    "update t set a = a + # where id = #",
    "update t set a = #",
    "delete from t where id in (#, #)",
    "delete from t where a = - #",
    "set statement_timeout = #",
    "set default_transaction_read_only = #",
    "set standard_conforming_strings = #",
    "set transaction_read_only to #",
    "set search_path = #",
    "set x.y = -#",
    "set x.y = +#",
    "select set_config('statement_timeout', '#', false)",
    "select set_config('default_transaction_read_only', #::text, false)",
    "select set_config('x.y', #, false)",
    "fetch # from c",
    "move # in c",
    "fetch forward # from c",
    "declare c cursor for select * from t where a = #",
    "select * from t limit # offset #",
    "select * from t fetch first # rows only",
    "select #::regclass, #::oid, #::int8",
    "select cast(a as float(#)) from t",
    "select a::numeric(#, #), b::varchar(#) from t",
    "select current_timestamp(#), interval(#) '1 day', time(#) '10:00'",
    "select pg_terminate_backend(#)",
    "select lo_open(#, #)",
    "select lo_unlink(#)",
    "select lo_get(#)",
    "select pg_sleep(#)",
    "select nextval('s#')",
    "explain (analyze #) delete from t where a = #",
    "explain (analyze, costs #) select #",
    "alter table t alter column # set statistics #",
    "alter index i alter column # set statistics #",
    "create table p# partition of p for values with (modulus #, remainder #)",
    "create table p1 partition of p for values with (modulus #, modulus #, remainder #)",
    "create table p1 partition of p for values from (#) to (#)",
    "create sequence s increment # start #",
    "alter role r connection limit #",
    "vacuum (parallel #) t",
    "select $1 + #, $2",
    "select a[#], a[#:#] from t",
    "select # from t group by # having count(*) > #",
    "prepare p as select * from t where a = #",
    "execute p(#)",
    "begin read only; select * from t where a = #; commit",
    "begin transaction isolation level serializable, read write; update t set a = #",
    "select query_to_xml('select #', true, false, '')",
    "select * from t where a between # and #",
    "values (#, #), (#, #)",
    "select -(#), - - #, +#",
    "select #.# + #",
    "select 1e5 + #",
    "select .5 + #",
    "select 0x1F + #",
    "select 1_000 + #",
    "select #abc",
    "select # -- #\n",
    "select /* # */ #",
    "select \"c#\" from t where a = #",
    "select E'#', #",
    "select $$#$$, #",
    "listen c#",
    "select table_to_xml(#, true, false, '')",
    "select * from t where a = any(array[#, #])",
    "lock table t in access share mode; select #",
    "create trigger tr after insert on t for each row execute function f(#)",
    "select * from t tablesample system (#) repeatable (#)",
    "select x from t where x = #; select # ; delete from t where a = #",
];

/// Spellings of a number, the ones the key refuses among them.
const NUMBERS: &[&str] = &[
    "0",
    "1",
    "7",
    "42",
    "48213",
    "131072",
    "262144",
    "2147483647",
    "2147483648",
    "99999999999999999999",
    "007",
    "1.5",
    "0.25",
    "10.0",
    "-3",
    "1e5",
    ".5",
    "0x1F",
    "1_000",
    "- 5",
    "+ 6",
    "-(7)",
    "(8)",
    "9::int",
    "-0",
    "00",
    "1.50",
    "2 .5",
];

fn generated(rng: &mut Rng) -> String {
    let statements = 1 + rng.next() % 3;
    let mut out = Vec::new();
    for _ in 0..statements {
        let template = rng.pick(TEMPLATES);
        let filled: String = template
            .split('#')
            .enumerate()
            .map(|(i, piece)| match i {
                0 => piece.to_owned(),
                _ => format!("{}{piece}", rng.pick(NUMBERS)),
            })
            .collect();
        out.push(filled);
    }
    out.join(if rng.next() % 2 == 0 { "; " } else { ";\n" })
}

fn cases() -> u64 {
    std::env::var("LOCKBOX_CACHE_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_500)
}

/// Seeded pairs of texts, of one shape (the second with other numbers) or of any two
/// spellings: through a cache warmed with either, each analyses as it does cold.
/// `LOCKBOX_CACHE_SEED` and `LOCKBOX_CACHE_CASES` change the run.
#[test]
fn generated_texts_analyse_through_the_cache_as_they_do_cold() {
    let seed = std::env::var("LOCKBOX_CACHE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0xcac4e_u64);
    let mut rng = Rng(seed | 1);
    let (mut shaped, mut shared) = (0, 0);
    for case in 0..cases() {
        let a = generated(&mut rng);
        let b = match with_other_numbers(&a, rng.next()) {
            Some(other) if rng.next() % 4 != 0 => {
                shaped += 1;
                other
            }
            _ => generated(&mut rng),
        };
        for (warm, sql) in [(&a, &b), (&b, &a)] {
            match check_cache_agrees(warm, sql) {
                Ok(hit) => shared += usize::from(hit),
                Err(broken) => panic!("case {case} (seed {seed}): {broken}"),
            }
        }
    }
    // The generator must reach the shared path, not only the exact one.
    assert!(
        shared * 4 > shaped,
        "{shared} shared of {shaped} same-shape pairs"
    );
}
