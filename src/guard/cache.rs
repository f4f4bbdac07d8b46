//! The analysis cache, shared by all sessions: a query string sent again (prepared
//! statements, ORMs, monitoring queries) costs a hash lookup instead of a parse. It
//! memoizes a pure function of the text, so sharing it process-wide is safe.
//!
//! Strings that differ only in numeric literals (`pgbench -S`, ORMs that inline values)
//! share one entry, keyed by `sql::normalize`'s shape, when the verdict provably does not
//! depend on those literals:
//! 1. Same key ⇒ same tokens: the two texts scan into the same token sequence but for the
//!    values of the replaced ICONST/FCONST tokens and byte offsets (`sql::normalize`).
//! 2. Same tokens ⇒ same tree but for the values of A_Consts: the grammar's parse
//!    decisions depend on token types only, but its actions use values. In libpg_query 18's
//!    gram.y the rules that take ICONST/FCONST (through Iconst, SignedIconst, NumericOnly,
//!    I_or_F_const) either make an A_Const that only holds the value (AexprConst, SET
//!    values, LIMIT/FETCH FIRST counts, type modifiers; `doNegate` only negates it), or put
//!    the value elsewhere: checked (`float(0)` and `ALTER … ALTER COLUMN 0` are rejected),
//!    turned into a type (`float(25)` is float8) or stored in a bare node or field (`FETCH
//!    5`, `EXPLAIN (ANALYZE 1)`, sequence and function options, trigger arguments, large
//!    object OIDs, array bounds). So an entry is shared only if the cold analysis found
//!    each literal of its text as an A_Const holding that literal's value.
//! 3. Same tree but for A_Const values ⇒ same verdict if the analysis read no number:
//!    every read of one goes through `tree::scalar`, which notes it (`numbers.rs`); an
//!    analysis that read none took the same path for any values. Locations are never read.
//! 4. Statement ranges are the only positions in an analysis. Each boundary is a token
//!    boundary, never inside a literal, and the bytes between literals are equal, so a
//!    position keeps its distance to the end of the last literal before it: an entry holds
//!    ranges in key positions, moved to each text's literals.
//!
//! Everything else is cached under its exact text, as before.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

use dashmap::DashMap;

use super::numbers::{Constant, ConstantValue, Watch};
use super::{analyze_query, analyze_query_watched, StatementAnalysis};
use crate::sql::normalize::{self, Number, Shape};

/// Query strings longer than this are analysed every time rather than cached.
const CACHEABLE_LEN: usize = 8 * 1024;
/// What a thread's shape buffer keeps room for between texts (key bytes; literals, a
/// sixteenth of that).
const KEPT_SHAPE_BYTES: usize = 1024;
/// Each map is emptied when it holds this many strings.
const CACHE_ENTRIES: usize = 50_000;

pub(crate) struct AnalysisCache {
    exact: DashMap<Box<str>, Arc<[StatementAnalysis]>>,
    /// Analyses shared by the texts of a shape, their ranges in the key's positions (where
    /// each literal is one byte), so an entry holds no trace of the text that made it.
    shapes: DashMap<Box<str>, Arc<[StatementAnalysis]>>,
    /// Texts analysed cold (parsed) through this cache.
    cold: AtomicUsize,
}

static CACHE: LazyLock<AnalysisCache> = LazyLock::new(AnalysisCache::new);

/// Analyses the process-wide cache holds now (the census counts them).
pub(crate) fn cached_analyses() -> usize {
    CACHE.exact.len() + CACHE.shapes.len()
}

/// [`super::analyze_query`] through the process-wide cache.
pub fn analyze_query_cached(sql: &str) -> Arc<[StatementAnalysis]> {
    CACHE.analyze(sql)
}

impl AnalysisCache {
    pub(crate) fn new() -> AnalysisCache {
        AnalysisCache {
            exact: DashMap::new(),
            shapes: DashMap::new(),
            cold: AtomicUsize::new(0),
        }
    }

    pub(crate) fn analyze(&self, sql: &str) -> Arc<[StatementAnalysis]> {
        if sql.len() > CACHEABLE_LEN {
            self.cold.fetch_add(1, Ordering::Relaxed);
            return analyze_query(sql).into();
        }
        if let Some(hit) = self.exact.get(sql) {
            return hit.clone();
        }
        match self.by_shape(sql) {
            Ok(hit) => hit,
            Err(shape) => self.analyze_cold(sql, shape),
        }
    }

    /// The analysis `sql`'s shape shares, or the shape (if it has one) to analyse it cold
    /// under. The shape is read into a buffer this thread keeps, so a hit allocates nothing
    /// for it.
    fn by_shape(&self, sql: &str) -> Result<Arc<[StatementAnalysis]>, Option<Shape>> {
        thread_local! {
            static SHAPE: RefCell<Shape> = RefCell::new(Shape::default());
        }
        let warm = SHAPE.try_with(|cell| {
            let mut shape = cell.try_borrow_mut().ok()?;
            let found = if normalize::shape_into(sql, &mut shape) {
                self.shared(sql, &shape).ok_or_else(|| Some(shape.clone()))
            } else {
                Err(None)
            };
            // A long text with thousands of literals does not leave its room with the thread.
            shape.key.shrink_to(KEPT_SHAPE_BYTES);
            shape.literals.shrink_to(KEPT_SHAPE_BYTES / 16);
            Some(found)
        });
        match warm {
            Ok(Some(found)) => found,
            // This thread's buffer is gone or in use: a shape of its own.
            _ => {
                let shape = normalize::shape(sql);
                match shape.as_ref().and_then(|s| self.shared(sql, s)) {
                    Some(hit) => Ok(hit),
                    None => Err(shape),
                }
            }
        }
    }

    /// Analyses `sql` from its parse and keeps the analysis, under its shape too when it
    /// holds for every text of the shape.
    fn analyze_cold(&self, sql: &str, shape: Option<Shape>) -> Arc<[StatementAnalysis]> {
        self.cold.fetch_add(1, Ordering::Relaxed);
        let (analyses, watch) = analyze_query_watched(sql);
        let analyses: Arc<[StatementAnalysis]> = analyses.into();
        if let Some(shape) = shape.filter(|s| verdict_ignores_literals(sql, s, watch)) {
            let positions = Positions(&shape.literals);
            if let Some(shared) = moved(&analyses, |at| positions.in_key(at)) {
                insert_bounded(&self.shapes, shape.key.into(), shared);
            }
        }
        // The text itself is kept too: sent again, it costs one lookup, not a move.
        insert_bounded(&self.exact, sql.into(), analyses.clone());
        analyses
    }

    /// The analysis shared by `sql`'s shape, its ranges moved to `sql`'s literals.
    fn shared(&self, sql: &str, shape: &Shape) -> Option<Arc<[StatementAnalysis]>> {
        let entry = self.shapes.get(shape.key.as_str())?;
        let positions = Positions(&shape.literals);
        let analyses = moved(&entry, |at| positions.in_text(at))?;
        analyses
            .iter()
            .all(|s| sql.get(s.range.clone()).is_some())
            .then_some(analyses)
    }

    #[cfg(test)]
    pub(crate) fn cold_analyses(&self) -> usize {
        self.cold.load(Ordering::Relaxed)
    }
}

fn insert_bounded<V>(map: &DashMap<Box<str>, V>, key: Box<str>, value: V) {
    if map.len() >= CACHE_ENTRIES {
        map.clear();
    }
    map.insert(key, value);
}

/// Whether the analysis that `watch` saw holds for every text of `sql`'s shape: it read no
/// number, and each literal of `sql` is an A_Const holding its value.
fn verdict_ignores_literals(sql: &str, shape: &Shape, mut watch: Watch) -> bool {
    if watch.numbers_read {
        return false;
    }
    watch.constants.sort();
    shape
        .literals
        .iter()
        .all(|literal| is_expression_constant(sql, literal, &watch.constants))
}

/// An A_Const at the literal holding its value; a negated or signed one (`-5`, `- 5`,
/// `SET x = +1.5`) is placed at its sign.
fn is_expression_constant(sql: &str, literal: &normalize::Literal, constants: &[Constant]) -> bool {
    let Some(text) = sql.get(literal.span.clone()) else {
        return false;
    };
    let value = |negated: bool| match literal.number {
        Number::Int(i) => ConstantValue::Int(if negated { -i64::from(i) } else { i.into() }),
        Number::Float if negated => ConstantValue::Float(format!("-{text}")),
        Number::Float => ConstantValue::Float(text.to_owned()),
    };
    let mut candidates = vec![(literal.span.start, value(false))];
    let before = sql.get(..literal.span.start).unwrap_or_default();
    let sign = before
        .trim_end_matches([' ', '\t', '\n', '\r'])
        .char_indices()
        .next_back();
    match sign {
        Some((at, '-')) => candidates.push((at, value(true))),
        Some((at, '+')) => candidates.push((at, value(false))),
        _ => {}
    }
    candidates.into_iter().any(|(location, value)| {
        let Ok(location) = i64::try_from(location) else {
            return false;
        };
        constants
            .binary_search(&Constant { location, value })
            .is_ok()
    })
}

/// `analyses` with each range's ends moved by `position`; `None` if one cannot be.
fn moved(
    analyses: &[StatementAnalysis],
    position: impl Fn(usize) -> Option<usize>,
) -> Option<Arc<[StatementAnalysis]>> {
    let movable = |s: &StatementAnalysis| {
        position(s.range.start).is_some() && position(s.range.end).is_some()
    };
    if !analyses.iter().all(movable) {
        return None;
    }
    // Every end moves (checked above), so the analyses are collected from an iterator of
    // known length: one allocation, where collecting `Option`s would build a Vec first.
    let moved = |at: usize| position(at).unwrap_or(at);
    Some(
        analyses
            .iter()
            .map(|s| StatementAnalysis {
                range: moved(s.range.start)..moved(s.range.end),
                analysis: s.analysis.clone(),
            })
            .collect(),
    )
}

/// Positions in a text and in its shape's key, where each literal is one byte. The bytes
/// between literals are the same in both, so a position keeps its distance to the end of
/// the last literal before it.
struct Positions<'a>(&'a [normalize::Literal]);

impl Positions<'_> {
    /// The key position of a text position; a position inside a literal has none.
    fn in_key(&self, at: usize) -> Option<usize> {
        let before = self.0.partition_point(|l| l.span.end <= at);
        if self.0.get(before).is_some_and(|l| l.span.start < at) {
            return None;
        }
        match before.checked_sub(1) {
            None => Some(at),
            Some(last) => {
                let literal = self.0.get(last)?;
                Some(literal.key_at + 1 + (at - literal.span.end))
            }
        }
    }

    /// The text position of a key position.
    fn in_text(&self, at: usize) -> Option<usize> {
        let before = self.0.partition_point(|l| l.key_at < at);
        match before.checked_sub(1) {
            None => Some(at),
            Some(last) => {
                let literal = self.0.get(last)?;
                Some(literal.span.end + (at - literal.key_at - 1))
            }
        }
    }
}

/// The cache's promise for one text: `sql` analysed through a cache warmed with `warm`
/// equals `sql` analysed cold, every field and range. `Ok(true)` when the answer came from
/// the entry `warm` made (a shared shape). The unit tests and the fuzz target check it.
pub fn check_cache_agrees(warm: &str, sql: &str) -> Result<bool, String> {
    let cache = AnalysisCache::new();
    cache.analyze(warm);
    let before = cache.cold.load(Ordering::Relaxed);
    let cached = cache.analyze(sql);
    let shared = cache.cold.load(Ordering::Relaxed) == before;
    let cold = analyze_query(sql);
    if cached[..] == cold[..] {
        Ok(shared)
    } else {
        Err(format!(
            "warmed with {warm:?}, {sql:?} is\n  cached {cached:?}\n  cold   {cold:?}"
        ))
    }
}

/// `sql` with each numeric literal replaced by another of the same token (another length
/// where possible), chosen by `seed`: a text of the same shape, for differential checks.
pub fn with_other_numbers(sql: &str, seed: u64) -> Option<String> {
    let shape = normalize::shape(sql)?;
    let mut out = String::with_capacity(sql.len() + 8);
    let mut at = 0;
    let mut pick = seed | 1;
    for literal in &shape.literals {
        out.push_str(sql.get(at..literal.span.start)?);
        // xorshift: a new value per literal, shifted right by a random amount so lengths
        // vary.
        pick ^= pick << 13;
        pick ^= pick >> 7;
        pick ^= pick << 17;
        out.push_str(&match literal.number {
            Number::Int(_) => ((pick % 2_147_483_648) >> (pick % 31)).to_string(),
            Number::Float => format!("{}.{}", (pick % 100_000) >> (pick % 17), pick % 97),
        });
        at = literal.span.end;
    }
    out.push_str(sql.get(at..)?);
    Some(out)
}

#[cfg(test)]
mod tests;
