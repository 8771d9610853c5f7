//! The embedded SQLite state store: one LB on one machine.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Row;

use super::{PutOutcome, Renewal, StateStore, StoreError};
use crate::registry::Registered;

/// The table. `definition`: the backend as JSON (`config::BackendConfig`, API key included:
/// the file is created with mode 0600); `lease_expires_ms`: Unix milliseconds.
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS backends (
    name TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    lease_seconds INTEGER,
    lease_expires_ms INTEGER
)";

/// The index the lease expiry (a query every 250 ms) reads instead of the whole table.
const LEASE_INDEX: &str =
    "CREATE INDEX IF NOT EXISTS backends_lease_expires ON backends (lease_expires_ms)";

/// The state store in an SQLite database (in memory without a file).
pub struct SqliteStore {
    pub(super) pool: SqlitePool,
    pub(super) path: Option<PathBuf>,
}

fn failed(e: impl std::fmt::Display) -> StoreError {
    StoreError::Failed(e.to_string())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The Unix time in milliseconds at which a lease of `secs` seconds taken now runs out.
fn expiry(secs: Option<Duration>) -> Option<i64> {
    secs.map(|t| now_ms().saturating_add(i64::try_from(t.as_millis()).unwrap_or(i64::MAX)))
}

/// A row into a registration.
pub(super) fn registered(
    definition: &str,
    lease_seconds: Option<i64>,
) -> Result<Registered, StoreError> {
    let def: config::BackendConfig = serde_json::from_str(definition)
        .map_err(|e| failed(format!("a stored backend is not valid: {e}")))?;
    Ok(Registered {
        def,
        lease: lease_seconds.map(|s| Duration::from_secs(s.max(0) as u64)),
    })
}

impl SqliteStore {
    /// Opens (creating) the database at `path`, or one in memory. A JSON state file of an
    /// earlier version at `path` is migrated first ([`super::migrate`]). Every lease starts
    /// whole again: a server could not renew while this process was down.
    ///
    /// Errors: the file cannot be created or read, is neither a database nor a valid JSON
    /// state file.
    pub async fn open(path: Option<&Path>) -> anyhow::Result<SqliteStore> {
        let Some(path) = path else {
            let options = SqliteConnectOptions::from_str("sqlite::memory:")?;
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(options)
                .await?;
            create_schema(&pool).await?;
            return Ok(SqliteStore { pool, path: None });
        };
        if super::migrate::is_json_state_file(path)? {
            super::migrate::migrate(path).await?;
        }
        let pool = connect(path, SqliteJournalMode::Wal)
            .await
            .map_err(|e| anyhow::anyhow!("state file {}: {e}", path.display()))?;
        let store = SqliteStore {
            pool,
            path: Some(path.to_path_buf()),
        };
        store
            .renew_all()
            .await
            .map_err(|e| anyhow::anyhow!("state file {}: {e}", path.display()))?;
        Ok(store)
    }

    /// Inserts `entries` (a migration), in one transaction.
    pub(super) async fn insert_all(&self, entries: &[Registered]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(failed)?;
        for r in entries {
            let def = serde_json::to_string(&r.def).map_err(failed)?;
            sqlx::query(
                "INSERT INTO backends (name, definition, lease_seconds, lease_expires_ms)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO UPDATE SET definition = excluded.definition,
                     lease_seconds = excluded.lease_seconds,
                     lease_expires_ms = excluded.lease_expires_ms",
            )
            .bind(&r.def.name)
            .bind(def)
            .bind(r.lease.map(|t| t.as_secs() as i64))
            .bind(expiry(r.lease))
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        }
        tx.commit().await.map_err(failed)
    }

    /// Closes the pool (and SQLite's journal files with it).
    pub(super) async fn close(self) {
        self.pool.close().await;
    }
}

/// A pool on the file at `path` (created with mode 0600, since it holds backend API keys).
pub(super) async fn connect(
    path: &Path,
    journal: SqliteJournalMode,
) -> Result<SqlitePool, sqlx::Error> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)?;
    let options = SqliteConnectOptions::new()
        .filename(path)
        .journal_mode(journal)
        // a write is acknowledged once it is on disk
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(5));
    // Opened on the LB's start-up runtime and used on Pingora's: no background task of the
    // pool's own (it would end with the start-up runtime); SQLite's connections are threads.
    let pool = SqlitePoolOptions::new()
        .max_connections(2)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_with(options)
        .await?;
    create_schema(&pool).await?;
    Ok(pool)
}

/// The table and its index, when missing.
async fn create_schema(pool: &SqlitePool) -> Result<(), sqlx::Error> {
    sqlx::query(SCHEMA).execute(pool).await?;
    sqlx::query(LEASE_INDEX).execute(pool).await?;
    Ok(())
}

#[async_trait]
impl StateStore for SqliteStore {
    async fn load(&self) -> Result<Vec<Registered>, StoreError> {
        let rows = sqlx::query("SELECT definition, lease_seconds FROM backends ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(failed)?;
        rows.iter()
            .map(|r| registered(r.try_get(0).map_err(failed)?, r.try_get(1).map_err(failed)?))
            .collect()
    }

    async fn get(&self, name: &str) -> Result<Option<Registered>, StoreError> {
        let row = sqlx::query("SELECT definition, lease_seconds FROM backends WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(failed)?;
        row.map(|r| registered(r.try_get(0).map_err(failed)?, r.try_get(1).map_err(failed)?))
            .transpose()
    }

    async fn put(&self, r: &Registered, replace: bool) -> Result<PutOutcome, StoreError> {
        let def = serde_json::to_string(&r.def).map_err(failed)?;
        let lease = r.lease.map(|t| t.as_secs() as i64);
        let mut tx = self.pool.begin().await.map_err(failed)?;
        let inserted = sqlx::query(
            "INSERT INTO backends (name, definition, lease_seconds, lease_expires_ms)
             VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&r.def.name)
        .bind(&def)
        .bind(lease)
        .bind(expiry(r.lease))
        .execute(&mut *tx)
        .await
        .map_err(failed)?
        .rows_affected()
            > 0;
        let outcome = match (inserted, replace) {
            (true, _) => PutOutcome::Inserted,
            (false, false) => return Ok(PutOutcome::Exists),
            (false, true) => {
                sqlx::query(
                    "UPDATE backends SET definition = $2, lease_seconds = $3, lease_expires_ms = $4
                     WHERE name = $1",
                )
                .bind(&r.def.name)
                .bind(&def)
                .bind(lease)
                .bind(expiry(r.lease))
                .execute(&mut *tx)
                .await
                .map_err(failed)?;
                PutOutcome::Replaced
            }
        };
        tx.commit().await.map_err(failed)?;
        Ok(outcome)
    }

    async fn delete(&self, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM backends WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(failed)?;
        Ok(done.rows_affected() > 0)
    }

    async fn renew(&self, name: &str) -> Result<Renewal, StoreError> {
        let row = sqlx::query(
            "UPDATE backends SET lease_expires_ms = $2 + lease_seconds * 1000
             WHERE name = $1 AND lease_seconds IS NOT NULL RETURNING lease_seconds",
        )
        .bind(name)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await
        .map_err(failed)?;
        if let Some(row) = row {
            let secs: i64 = row.try_get(0).map_err(failed)?;
            return Ok(Renewal::Renewed(Duration::from_secs(secs.max(0) as u64)));
        }
        super::no_lease_or_not_found(self, name).await
    }

    async fn renew_all(&self) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE backends SET lease_expires_ms = $1 + lease_seconds * 1000
             WHERE lease_seconds IS NOT NULL",
        )
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .map_err(failed)?;
        Ok(())
    }

    async fn expire(&self) -> Result<Vec<String>, StoreError> {
        // A read first: the common case (nothing due) takes no write lock.
        let due: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM backends WHERE lease_expires_ms <= $1 ORDER BY name",
        )
        .bind(now_ms())
        .fetch_all(&self.pool)
        .await
        .map_err(failed)?;
        if due.is_empty() {
            return Ok(due);
        }
        sqlx::query_scalar("DELETE FROM backends WHERE lease_expires_ms <= $1 RETURNING name")
            .bind(now_ms())
            .fetch_all(&self.pool)
            .await
            .map_err(failed)
    }

    fn describe(&self) -> String {
        match &self.path {
            Some(p) => format!("sqlite:{}", p.display()),
            None => "sqlite::memory: (registrations are not kept across restarts)".into(),
        }
    }
}
