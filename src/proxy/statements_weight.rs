//! What a session's prepared statements and portals weigh: the bytes the proxy keeps for
//! them, so that what a client makes it keep can be bounded (`Statements::retained`).

use std::collections::HashMap;
use std::mem::size_of;

use super::{Portal, Prepared};
use crate::audit::StatementNames;

/// The bytes a kept value holds beyond its fixed size (statement text, parameter values).
pub(super) trait Weighs {
    fn weight(&self) -> usize;
}

impl Weighs for Prepared {
    fn weight(&self) -> usize {
        size_of::<Prepared>() + self.text.len() + self.mentions.as_ref().map_or(0, names_weight)
    }
}

/// What a statement's names weigh: one allocation per name, with what the allocator rounds
/// each up to, so a text of thousands of short names (`t.a,t.b,…`) is not counted at its
/// length alone (an attack review kept 16 times the text so).
fn names_weight(names: &StatementNames) -> usize {
    const PER_NAME: usize = size_of::<String>() + MIN_ALLOCATION;
    let list = |names: &[String]| names.iter().map(|n| PER_NAME + n.len()).sum::<usize>();
    list(&names.relations)
        + list(&names.functions)
        + list(&names.fields)
        + names.skeleton.as_ref().map_or(0, |s| s.len())
}

/// The least a heap allocation costs (malloc's smallest chunk, with its header).
const MIN_ALLOCATION: usize = 32;

impl Weighs for Portal {
    /// Its statement counts again: the statement may be closed, or replaced under
    /// its name, while the portal keeps the text it was bound to.
    fn weight(&self) -> usize {
        size_of::<Portal>() + self.statement.weight() + params_weight(&self.params)
    }
}

/// The bytes a Bind's parameter values hold, as the session keeps them.
pub(super) fn params_weight(params: &[serde_json::Value]) -> usize {
    params.iter().map(json_weight).sum()
}

fn json_weight(value: &serde_json::Value) -> usize {
    use serde_json::Value;
    size_of::<Value>()
        + match value {
            Value::String(s) => s.len(),
            Value::Array(items) => items.iter().map(json_weight).sum(),
            Value::Object(fields) => fields.iter().map(|(k, v)| k.len() + json_weight(v)).sum(),
            Value::Null | Value::Bool(_) | Value::Number(_) => 0,
        }
}

/// A map by name that keeps the sum of its entries' weights.
pub(super) struct Weighed<V> {
    map: HashMap<String, V>,
    bytes: usize,
}

impl<V> Default for Weighed<V> {
    fn default() -> Self {
        Weighed {
            map: HashMap::new(),
            bytes: 0,
        }
    }
}

impl<V: Weighs> Weighed<V> {
    fn entry_weight(name: &str, value: &V) -> usize {
        name.len() + value.weight()
    }

    /// The bytes its entries hold.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    pub(super) fn get(&self, name: &str) -> Option<&V> {
        self.map.get(name)
    }

    pub(super) fn contains_key(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// For changes that leave the weight as it is (a portal's row count, its savepoint).
    pub(super) fn get_mut(&mut self, name: &str) -> Option<&mut V> {
        self.map.get_mut(name)
    }

    pub(super) fn insert(&mut self, name: String, value: V) {
        let name_len = name.len();
        self.bytes += name_len + value.weight();
        // A replaced entry had the same name.
        if let Some(old) = self.map.insert(name, value) {
            self.bytes -= name_len + old.weight();
        }
    }

    pub(super) fn remove(&mut self, name: &str) {
        if let Some(old) = self.map.remove(name) {
            self.bytes -= Self::entry_weight(name, &old);
        }
    }

    /// Keeps the entries `keep` says to (it may change what leaves the weight as it is).
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&str, &mut V) -> bool) {
        let mut dropped = 0;
        self.map.retain(|name, value| {
            let kept = keep(name, value);
            if !kept {
                dropped += Self::entry_weight(name, value);
            }
            kept
        });
        self.bytes -= dropped;
    }

    pub(super) fn clear(&mut self) {
        self.map.clear();
        self.bytes = 0;
    }

    /// For changes that leave the weight as it is.
    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.map.values_mut()
    }
}
