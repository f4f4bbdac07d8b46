//! Cost of understanding one statement with PostgreSQL's own parser (libpg_query: split,
//! audit kind, guardrail class and facts from one parse), cold and from the cache by query
//! text. Run: `cargo bench --bench classify`.
//!
//! Prints nanoseconds per statement and the cold/cached ratio; the ratio is the figure to
//! compare across machines.

use std::hint::black_box;
use std::time::Instant;

use lockbox::guard::{analyze_query, analyze_query_cached};

const STATEMENTS: &[&str] = &[
    "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
    "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)",
    "SELECT c.oid, n.nspname, c.relname FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_namespace n \
     ON n.oid = c.relnamespace WHERE c.relname OPERATOR(pg_catalog.~) '^(items)$' COLLATE pg_catalog.default \
     AND pg_catalog.pg_table_is_visible(c.oid) ORDER BY 2, 3",
    "BEGIN",
    "SET search_path = public",
    "SELECT set_config('role', 'postgres', false)",
    "WITH d AS (DELETE FROM t WHERE a = 1 RETURNING *) SELECT count(*) FROM d",
    "EXPLAIN (ANALYZE, FORMAT JSON) SELECT * FROM pgbench_accounts WHERE aid = 1",
];

fn per_statement(iterations: usize, mut f: impl FnMut(usize)) -> f64 {
    let start = Instant::now();
    for i in 0..iterations {
        f(i);
    }
    start.elapsed().as_nanos() as f64 / iterations as f64
}

fn main() {
    let iterations = 20_000;
    // Cold: a distinct text each time (a literal that changes), so nothing is cached.
    let cold = per_statement(iterations, |i| {
        let text = format!("{} -- {i}", STATEMENTS[i % STATEMENTS.len()]);
        black_box(analyze_query(black_box(&text)));
    });
    for s in STATEMENTS {
        analyze_query_cached(s);
    }
    let cached = per_statement(iterations * 10, |i| {
        black_box(analyze_query_cached(black_box(
            STATEMENTS[i % STATEMENTS.len()],
        )));
    });
    println!(
        "statement analysis (split kind + guardrail class), {} statement shapes",
        STATEMENTS.len()
    );
    println!("  cold (parsed every time):   {cold:>10.0} ns/statement");
    println!("  cached by statement text:   {cached:>10.0} ns/statement");
    println!("  cold / cached:              {:>10.1}x", cold / cached);
}
