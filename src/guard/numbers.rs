//! What one analysis saw of the numbers in its parse tree, so the cache (`cache.rs`) can
//! tell whether its verdict holds for the same text with other numbers: it does when every
//! numeric literal of the text is an expression constant (an A_Const, whose value the
//! grammar only stores) and the analysis read no number's value.
//!
//! The record is per thread and per [`watching`] scope: an analysis runs on one thread
//! (`sql::with_tree_stack` moves the whole of it), and an analysis nested in another (of a
//! query given as a string literal, which the cache key holds verbatim) gets a scope of its
//! own, so its tree's constants, placed in another text, never mix with the outer ones.

use std::cell::RefCell;

use serde_json::Value;

/// A numeric A_Const of the tree: where the grammar placed it and its value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Constant {
    pub location: i64,
    pub value: ConstantValue,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum ConstantValue {
    Int(i64),
    /// A float's text, as the scanner kept it (a negated one with a leading `-`).
    Float(String),
}

/// What an analysis saw.
#[derive(Debug, Default)]
pub(crate) struct Watch {
    /// Some Integer or Float value was read: the verdict may depend on a number.
    pub numbers_read: bool,
    /// Every numeric A_Const the tree walk met, in no particular order.
    pub constants: Vec<Constant>,
}

thread_local! {
    static WATCH: RefCell<Option<Watch>> = const { RefCell::new(None) };
}

/// Runs `work` with a fresh record and returns it; the enclosing scope's record (if any) is
/// put back afterwards, unchanged, even if `work` unwinds.
pub(crate) fn watching<T>(work: impl FnOnce() -> T) -> (T, Watch) {
    struct Scope(Option<Watch>);
    impl Drop for Scope {
        fn drop(&mut self) {
            let outer = self.0.take();
            WATCH.with(|w| *w.borrow_mut() = outer);
        }
    }
    let _scope = Scope(WATCH.with(|w| w.replace(Some(Watch::default()))));
    let out = work();
    let watch = WATCH.with(|w| w.borrow_mut().take()).unwrap_or_default();
    (out, watch)
}

fn record(f: impl FnOnce(&mut Watch)) {
    WATCH.with(|w| {
        if let Some(watch) = w.borrow_mut().as_mut() {
            f(watch);
        }
    });
}

/// The analysis read an Integer's or a Float's value.
pub(crate) fn note_number_read() {
    record(|watch| watch.numbers_read = true);
}

/// The tree walk met an A_Const (its map in the serde form); a numeric one is recorded.
pub(crate) fn note_constant(node: &Value) {
    let Some(location) = node.get("location").and_then(Value::as_i64) else {
        return;
    };
    let value = node.get("val").and_then(|val| {
        if let Some(i) = val.pointer("/Ival/ival") {
            return i.as_i64().map(ConstantValue::Int);
        }
        val.pointer("/Fval/fval")
            .and_then(Value::as_str)
            .map(|f| ConstantValue::Float(f.to_owned()))
    });
    if let Some(value) = value {
        record(|watch| watch.constants.push(Constant { location, value }));
    }
}
