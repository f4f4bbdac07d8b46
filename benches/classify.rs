//! Cost of understanding one statement with PostgreSQL's own parser (libpg_query: split,
//! audit kind, guardrail class and facts from one parse), cold, from the cache by query
//! text, and from the cache by shape for statements that differ only in numeric literals
//! (`pgbench -S`, ORMs that inline values). Run: `cargo bench --bench classify`.
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

/// Shapes whose texts differ only in numbers, as pgbench and ORMs send them.
const LITERAL_SHAPES: &[&str] = &[
    "SELECT abalance FROM pgbench_accounts WHERE aid = {};",
    "UPDATE pgbench_accounts SET abalance = abalance + {} WHERE aid = 17;",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (3, 1, {}, -2817, CURRENT_TIMESTAMP);",
    "SELECT id, name, price FROM items WHERE category_id = {} AND price < 100.5 ORDER BY id LIMIT 20 OFFSET 40",
];

fn distinct_literal_texts(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            let shape = LITERAL_SHAPES[i % LITERAL_SHAPES.len()];
            shape.replace("{}", &(i * 7919 % 100_000 + 1).to_string())
        })
        .collect()
}

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
    // Distinct literals: every text is new, so only the cache by shape can answer.
    let texts = distinct_literal_texts(iterations);
    let literals_cold = per_statement(iterations, |i| {
        black_box(analyze_query(black_box(&texts[i])));
    });
    let fresh = distinct_literal_texts(iterations * 10 + LITERAL_SHAPES.len());
    for text in &fresh[..LITERAL_SHAPES.len()] {
        analyze_query_cached(text);
    }
    let literals_shared = per_statement(iterations * 10, |i| {
        black_box(analyze_query_cached(black_box(
            &fresh[i + LITERAL_SHAPES.len()],
        )));
    });
    println!(
        "statement analysis (split kind + guardrail class), {} statement shapes",
        STATEMENTS.len()
    );
    println!("  cold (parsed every time):   {cold:>10.0} ns/statement");
    println!("  cached by statement text:   {cached:>10.0} ns/statement");
    println!("  cold / cached:              {:>10.1}x", cold / cached);
    println!(
        "distinct numeric literals, {} statement shapes",
        LITERAL_SHAPES.len()
    );
    println!("  cold (parsed every time):   {literals_cold:>10.0} ns/statement");
    println!("  cached by shape:            {literals_shared:>10.0} ns/statement");
    println!(
        "  cold / cached:              {:>10.1}x",
        literals_cold / literals_shared
    );
}
