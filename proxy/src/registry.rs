//! The registered backends (not the config file's) as this process routes them: an in-memory
//! copy of the state store's (`crate::store`), changed only after the store acknowledged the
//! change (or, for a change made by another replica, when the store says so).

use std::collections::BTreeMap;
use std::time::Duration;

use config::BackendConfig;

/// A registered backend: its definition and, for a leased registration, the lease's length.
#[derive(Debug, Clone, PartialEq)]
pub struct Registered {
    pub def: BackendConfig,
    /// `lease_seconds` of the registration: it is dropped unless renewed within that time.
    /// `None`: it stays until removed.
    pub lease: Option<Duration>,
}

/// The registered backends, by name.
#[derive(Debug, Default)]
pub struct Registry {
    entries: BTreeMap<String, Registered>,
}

impl Registry {
    /// A registry holding `entries` (as loaded from the state store).
    pub fn from_entries(entries: impl IntoIterator<Item = Registered>) -> Registry {
        Registry {
            entries: entries
                .into_iter()
                .map(|r| (r.def.name.clone(), r))
                .collect(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&BackendConfig> {
        self.entries.get(name).map(|r| &r.def)
    }

    /// The registration of `name`, with its lease.
    pub fn entry(&self, name: &str) -> Option<&Registered> {
        self.entries.get(name)
    }

    pub fn definitions(&self) -> impl Iterator<Item = &BackendConfig> {
        self.entries.values().map(|r| &r.def)
    }

    /// The registered names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Insert or replace; returns the registration it replaced.
    pub fn insert(&mut self, r: Registered) -> Option<Registered> {
        self.entries.insert(r.def.name.clone(), r)
    }

    /// Remove; returns what it removed.
    pub fn remove(&mut self, name: &str) -> Option<Registered> {
        self.entries.remove(name)
    }
}
