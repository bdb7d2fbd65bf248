//! In-memory objects. Deleted objects stay as tombstones: Stripe still answers a GET for a
//! deleted customer, and a list cursor may point at one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use serde_json::Value;

use crate::events::EventLog;
use crate::random::random_alnum;

pub struct Record {
    /// Creation order; list endpoints sort newest first by it, so ties in `created`
    /// (same second) are broken deterministically.
    pub seq: u64,
    pub object: Value,
    pub deleted: bool,
    /// What the search index holds and from when on: each write becomes searchable only
    /// after the configured lag, mimicking Stripe's eventually consistent search. `None`
    /// is a deletion.
    index: Vec<(Instant, Option<Value>)>,
}

impl Record {
    /// The newest version the search index had caught up with at `now`.
    pub fn indexed(&self, now: Instant) -> Option<&Value> {
        self.index.iter().rev().find(|(at, _)| *at <= now).and_then(|(_, v)| v.as_ref())
    }
}

#[derive(Default)]
pub struct Collection {
    by_seq: BTreeMap<u64, Record>,
    ids: HashMap<String, u64>,
}

impl Collection {
    pub fn insert(&mut self, seq: u64, object: Value, indexed_at: Instant) {
        let id = object["id"].as_str().expect("objects have ids").to_string();
        self.ids.insert(id, seq);
        let index = vec![(indexed_at, Some(object.clone()))];
        self.by_seq.insert(seq, Record { seq, object, deleted: false, index });
    }

    pub fn contains(&self, id: &str) -> bool {
        self.ids.contains_key(id)
    }

    pub fn get(&self, id: &str) -> Option<&Record> {
        self.by_seq.get(self.ids.get(id)?)
    }

    /// The live (not deleted) object with this id, for updating. Call [`Collection::reindex`]
    /// after changing it.
    pub fn live_mut(&mut self, id: &str) -> Option<&mut Value> {
        let record = self.by_seq.get_mut(self.ids.get(id)?)?;
        (!record.deleted).then_some(&mut record.object)
    }

    pub fn reindex(&mut self, id: &str, indexed_at: Instant) {
        if let Some(record) = self.ids.get(id).and_then(|s| self.by_seq.get_mut(s)) {
            let version = (!record.deleted).then(|| record.object.clone());
            record.index.push((indexed_at, version));
        }
    }

    /// Marks a live object deleted; false if there was none.
    pub fn delete(&mut self, id: &str, indexed_at: Instant) -> bool {
        match self.ids.get(id).and_then(|s| self.by_seq.get_mut(s)) {
            Some(record) if !record.deleted => {
                record.deleted = true;
                record.index.push((indexed_at, None));
                true
            }
            _ => false,
        }
    }

    /// All records, tombstones included, oldest first.
    pub fn records(&self) -> impl DoubleEndedIterator<Item = &Record> + Clone {
        self.by_seq.values()
    }

    pub fn live(&self) -> impl Iterator<Item = &Value> {
        self.records().filter(|r| !r.deleted).map(|r| &r.object)
    }
}

#[derive(Default)]
pub struct Store {
    pub customers: Collection,
    pub accounts: Collection,
    pub events: EventLog,
    /// Accounts whose onboarding state a test set ([`crate::Onboarding`]): API updates leave
    /// their `requirements` alone instead of recomputing them.
    pub onboarding_controlled: HashSet<String>,
    next_seq: u64,
}

impl Store {
    pub fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }
}

/// A fresh id with Stripe's shape (`cus_` + 14 characters, `acct_` + 16), unique in `taken`.
pub fn new_id(prefix: &str, len: usize, taken: &Collection) -> String {
    loop {
        let id = format!("{prefix}{}", random_alnum(len));
        if !taken.contains(&id) {
            return id;
        }
    }
}
