//! The state store: where registered backends (with their leases) and, for replicas, the
//! Responses API's conversations are kept, behind one interface ([`StateStore`]).
//!
//! - [`SqliteStore`] (the default): an embedded SQLite database at `state_file` (in memory when
//!   there is none), for one LB on one machine, with no server to run. A JSON state file of an
//!   earlier version found at that path is migrated into it at start ([`migrate`]). The
//!   conversations stay in their own SQLite file (`responses_store`).
//! - [`PgStore`]: a PostgreSQL database (`state_store:` in the YAML) that any number of LB
//!   replicas share. Every change is announced with `NOTIFY` on [`CHANNEL`] in the transaction
//!   that makes it, so the other replicas apply it as soon as it commits ([`ChangeFeed`]), and
//!   each also reloads the whole registry every `resync_interval` as a safety net. The
//!   conversations are in the same database.
//!
//! A write is acknowledged (returns `Ok`) only once durable: committed with SQLite's
//! `synchronous=FULL`, or committed by PostgreSQL (whose `synchronous_commit` is on by
//! default). Health state is not in the store: each replica checks its backends itself.
//!
//! Leases are the store's: `lease_seconds` and the time the lease runs out are kept with the
//! registration, a renewal (through any replica) moves that time, and any replica drops the
//! registrations whose time has passed ([`StateStore::expire`]).

mod migrate;
mod postgres;
mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

use crate::registry::Registered;

/// The PostgreSQL notification channel of registry changes; the payload is the backend's name.
pub const CHANNEL: &str = "gpt_oss_lb_backends";

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached (PostgreSQL down, or no connection within
    /// `acquire_timeout`): nothing was changed. Admin writes answer 503.
    #[error("the state store is unavailable: {0}")]
    Unavailable(String),
    /// Any other failure (a full disk, a corrupt file). Admin writes answer 500.
    #[error("the state store failed: {0}")]
    Failed(String),
}

/// What a registration did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Inserted,
    Replaced,
    /// A registration of that name exists and `replace` was not asked for: nothing changed.
    Exists,
}

/// What a lease renewal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Renewed for its whole length.
    Renewed(Duration),
    /// Registered without a lease.
    NoLease,
    /// Not registered (its lease ran out, or it was removed).
    NotFound,
}

/// Registered backends (and, for replicas, conversations) kept durably.
#[async_trait]
pub trait StateStore: Send + Sync {
    /// Every registration, ordered by name.
    async fn load(&self) -> Result<Vec<Registered>, StoreError>;
    /// The registration of `name`, if any.
    async fn get(&self, name: &str) -> Result<Option<Registered>, StoreError>;
    /// Register `r` (its lease, if any, starts now). With `replace`, an existing registration
    /// of that name is replaced; without, it is left as it is ([`PutOutcome::Exists`]).
    async fn put(&self, r: &Registered, replace: bool) -> Result<PutOutcome, StoreError>;
    /// Remove `name`; false when it was not registered.
    async fn delete(&self, name: &str) -> Result<bool, StoreError>;
    /// Renew the lease of `name` for its whole length.
    async fn renew(&self, name: &str) -> Result<Renewal, StoreError>;
    /// Give every leased registration a whole new lease (after the store could not be reached,
    /// so that no server is dropped for renewals that could not be made).
    async fn renew_all(&self) -> Result<(), StoreError>;
    /// Remove the leased registrations whose lease has run out; their names.
    async fn expire(&self) -> Result<Vec<String>, StoreError>;
    /// Changes made by any process sharing the store, as they commit; `None` for a store that
    /// only this process writes.
    async fn subscribe(&self) -> Result<Option<Box<dyn ChangeFeed>>, StoreError> {
        Ok(None)
    }
    /// The Responses API's conversations, when this store keeps them (PostgreSQL); `None`:
    /// they are in their own SQLite file.
    fn responses(&self) -> Option<responses_store::ResponseStore> {
        None
    }
    /// Where the store is, for logs (no password).
    fn describe(&self) -> String;
}

/// A stream of changed backend names.
#[async_trait]
pub trait ChangeFeed: Send {
    /// The next changed name. `Ok(None)`: the connection was lost and made again, and changes
    /// in between may have been missed (resync). Errors: the store cannot be reached.
    async fn next(&mut self) -> Result<Option<String>, StoreError>;
}

/// Why a renewal updated nothing: `name` is registered without a lease, or not at all.
async fn no_lease_or_not_found(store: &dyn StateStore, name: &str) -> Result<Renewal, StoreError> {
    Ok(match store.get(name).await? {
        Some(_) => Renewal::NoLease,
        None => Renewal::NotFound,
    })
}

/// Opens the store the configuration names, and reads the registrations it holds:
/// PostgreSQL for `state_store`, else SQLite at `state_file` (in memory without one; a JSON
/// state file there is migrated first). Meant for the LB's start-up runtime: nothing it opens
/// outlives that runtime's use.
///
/// Errors: the database cannot be reached or created, or a state file cannot be migrated.
pub async fn open(
    config: &config::Config,
    state_file: Option<&std::path::Path>,
) -> anyhow::Result<(Arc<dyn StateStore>, Vec<Registered>)> {
    match &config.state_store {
        Some(pg) => {
            let (store, registered) = PgStore::connect(pg).await?;
            Ok((Arc::new(store), registered))
        }
        None => {
            let store = SqliteStore::open(state_file).await?;
            let registered = store.load().await?;
            Ok((Arc::new(store), registered))
        }
    }
}
