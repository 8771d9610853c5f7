//! The PostgreSQL state store, shared by LB replicas.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{
    PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions, PgSslMode,
};
use sqlx::{Connection, Row};

use super::{ChangeFeed, PutOutcome, Renewal, StateStore, StoreError, CHANNEL};
use crate::registry::Registered;

/// The table (its name keeps it apart in a database shared with other applications).
/// `definition`: the backend as JSON (`config::BackendConfig`, API key included).
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS gpt_oss_lb_backends (
    name TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    lease_seconds BIGINT,
    lease_expires_at TIMESTAMPTZ
)";

/// The index the lease expiry (a query every 250 ms) reads instead of the whole table.
const LEASE_INDEX: &str = "CREATE INDEX IF NOT EXISTS gpt_oss_lb_backends_lease_expires
    ON gpt_oss_lb_backends (lease_expires_at)";

/// The advisory lock that serializes schema creation among replicas starting together.
const SCHEMA_LOCK: i64 = 0x6770_746f_7373_6c62; // "gptosslb"

/// The state store in a PostgreSQL database.
pub struct PgStore {
    pool: PgPool,
    responses: responses_store::ResponseStore,
    connect_timeout: Duration,
    describe: String,
}

/// Sort a PostgreSQL error: the database out of reach (503) or any other failure (500).
fn pg_error(e: sqlx::Error) -> StoreError {
    if matches!(e, sqlx::Error::PoolTimedOut) {
        return StoreError::Unavailable(format!(
            "{e}: no connection to PostgreSQL within state_store.acquire_timeout (down or unreachable?)"
        ));
    }
    if responses_store::is_unreachable(&e) || matches!(e, sqlx::Error::Protocol(_)) {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Failed(e.to_string())
    }
}

impl PgStore {
    /// Connects (within `connect_timeout`), creates the tables if missing and reads the
    /// registrations, on one connection that is closed before this returns: it is opened on
    /// the LB's start-up runtime, which ends before serving. The pool that serves afterwards
    /// opens its connections when first used, on the runtime that uses them, and runs no
    /// background task of its own (no idle reaping, no maximum lifetime: a connection is
    /// pinged before each use and replaced when dead).
    ///
    /// Errors: the URL or the TLS settings are not valid, the database cannot be reached
    /// (with the reason: refused, authentication, TLS), or the tables cannot be created.
    pub async fn connect(
        cfg: &config::StateStoreConfig,
    ) -> anyhow::Result<(PgStore, Vec<Registered>)> {
        let mut options = PgConnectOptions::from_str(&cfg.url)
            .map_err(|e| anyhow::anyhow!("state_store.url: {e}"))?
            .ssl_mode(
                PgSslMode::from_str(&cfg.ssl_mode)
                    .map_err(|e| anyhow::anyhow!("state_store.ssl_mode: {e}"))?,
            )
            .application_name("gpt-oss-lb")
            // no NOTICE for `CREATE TABLE IF NOT EXISTS` of a table that exists
            .options([("client_min_messages", "warning")]);
        if let Some(ca) = &cfg.ssl_root_cert {
            options = options.ssl_root_cert(ca.as_str());
        }
        let describe = format!(
            "postgres://{}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or_default()
        );
        let startup = async {
            let mut conn = PgConnection::connect_with(&options).await?;
            let mut tx = conn.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(SCHEMA_LOCK)
                .execute(&mut *tx)
                .await?;
            sqlx::query(SCHEMA).execute(&mut *tx).await?;
            sqlx::query(LEASE_INDEX).execute(&mut *tx).await?;
            responses_store::ResponseStore::create_postgres_table(&mut tx).await?;
            tx.commit().await?;
            let rows = sqlx::query(
                "SELECT definition, lease_seconds FROM gpt_oss_lb_backends ORDER BY name",
            )
            .fetch_all(&mut conn)
            .await?;
            conn.close().await?;
            Ok::<_, sqlx::Error>(rows)
        };
        let rows = match tokio::time::timeout(cfg.connect_timeout, startup).await {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => anyhow::bail!("state store {describe}: {e}"),
            Err(_) => anyhow::bail!(
                "state store {describe}: no connection within {:?} (state_store.connect_timeout)",
                cfg.connect_timeout
            ),
        };
        let registered = rows
            .iter()
            .map(registered)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("state store {describe}: {e}"))?;
        let pool = PgPoolOptions::new()
            .max_connections(cfg.pool_size)
            .acquire_timeout(cfg.acquire_timeout)
            .idle_timeout(None)
            .max_lifetime(None)
            .min_connections(0)
            .connect_lazy_with(options);
        let responses = responses_store::ResponseStore::postgres_ready(pool.clone());
        Ok((
            PgStore {
                pool,
                responses,
                connect_timeout: cfg.connect_timeout,
                describe,
            },
            registered,
        ))
    }
}

/// `NOTIFY gpt_oss_lb_backends, name` in `tx`: delivered to every listening replica when the
/// transaction commits, not before (PostgreSQL's NOTIFY).
async fn notify(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    name: &str,
) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(name)
        .execute(&mut **tx)
        .await
        .map_err(pg_error)?;
    Ok(())
}

fn registered(row: &sqlx::postgres::PgRow) -> Result<Registered, StoreError> {
    let def: String = row.try_get(0).map_err(pg_error)?;
    let lease: Option<i64> = row.try_get(1).map_err(pg_error)?;
    super::sqlite::registered(&def, lease)
}

#[async_trait]
impl StateStore for PgStore {
    async fn load(&self) -> Result<Vec<Registered>, StoreError> {
        let rows =
            sqlx::query("SELECT definition, lease_seconds FROM gpt_oss_lb_backends ORDER BY name")
                .fetch_all(&self.pool)
                .await
                .map_err(pg_error)?;
        rows.iter().map(registered).collect()
    }

    async fn get(&self, name: &str) -> Result<Option<Registered>, StoreError> {
        let row = sqlx::query(
            "SELECT definition, lease_seconds FROM gpt_oss_lb_backends WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(pg_error)?;
        row.as_ref().map(registered).transpose()
    }

    async fn put(&self, r: &Registered, replace: bool) -> Result<PutOutcome, StoreError> {
        let def = serde_json::to_string(&r.def).map_err(|e| StoreError::Failed(e.to_string()))?;
        let lease = r.lease.map(|t| t.as_secs() as i64);
        let mut tx = self.pool.begin().await.map_err(pg_error)?;
        let inserted = sqlx::query(
            "INSERT INTO gpt_oss_lb_backends (name, definition, lease_seconds, lease_expires_at)
             VALUES ($1, $2, $3, now() + make_interval(secs => $3))
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(&r.def.name)
        .bind(&def)
        .bind(lease)
        .execute(&mut *tx)
        .await
        .map_err(pg_error)?
        .rows_affected()
            > 0;
        let outcome = match (inserted, replace) {
            (true, _) => PutOutcome::Inserted,
            (false, false) => return Ok(PutOutcome::Exists),
            (false, true) => {
                sqlx::query(
                    "UPDATE gpt_oss_lb_backends SET definition = $2, lease_seconds = $3,
                         lease_expires_at = now() + make_interval(secs => $3)
                     WHERE name = $1",
                )
                .bind(&r.def.name)
                .bind(&def)
                .bind(lease)
                .execute(&mut *tx)
                .await
                .map_err(pg_error)?;
                PutOutcome::Replaced
            }
        };
        notify(&mut tx, &r.def.name).await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(outcome)
    }

    async fn delete(&self, name: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(pg_error)?;
        let deleted = sqlx::query("DELETE FROM gpt_oss_lb_backends WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(pg_error)?
            .rows_affected()
            > 0;
        if !deleted {
            return Ok(false);
        }
        notify(&mut tx, name).await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(true)
    }

    async fn renew(&self, name: &str) -> Result<Renewal, StoreError> {
        let row = sqlx::query(
            "UPDATE gpt_oss_lb_backends SET lease_expires_at = now() + make_interval(secs => lease_seconds)
             WHERE name = $1 AND lease_seconds IS NOT NULL RETURNING lease_seconds",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(pg_error)?;
        if let Some(row) = row {
            let secs: i64 = row.try_get(0).map_err(pg_error)?;
            return Ok(Renewal::Renewed(Duration::from_secs(secs.max(0) as u64)));
        }
        super::no_lease_or_not_found(self, name).await
    }

    async fn renew_all(&self) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE gpt_oss_lb_backends SET lease_expires_at = now() + make_interval(secs => lease_seconds)
             WHERE lease_seconds IS NOT NULL",
        )
        .execute(&self.pool)
        .await
        .map_err(pg_error)?;
        Ok(())
    }

    async fn expire(&self) -> Result<Vec<String>, StoreError> {
        // the database's clock, the same for every replica
        let due: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM gpt_oss_lb_backends WHERE lease_expires_at <= now()",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(pg_error)?;
        if due.is_empty() {
            return Ok(due);
        }
        let mut tx = self.pool.begin().await.map_err(pg_error)?;
        let gone: Vec<String> = sqlx::query_scalar(
            "DELETE FROM gpt_oss_lb_backends WHERE lease_expires_at <= now() RETURNING name",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(pg_error)?;
        for name in &gone {
            notify(&mut tx, name).await?;
        }
        tx.commit().await.map_err(pg_error)?;
        Ok(gone)
    }

    async fn subscribe(&self) -> Result<Option<Box<dyn ChangeFeed>>, StoreError> {
        let listen = async {
            let mut l = PgListener::connect_with(&self.pool).await?;
            l.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        };
        match tokio::time::timeout(self.connect_timeout, listen).await {
            Ok(Ok(listener)) => Ok(Some(Box::new(PgFeed { listener }))),
            Ok(Err(e)) => Err(pg_error(e)),
            Err(_) => Err(StoreError::Unavailable(format!(
                "no connection within {:?}",
                self.connect_timeout
            ))),
        }
    }

    fn responses(&self) -> Option<responses_store::ResponseStore> {
        Some(self.responses.clone())
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

/// `LISTEN gpt_oss_lb_backends` on a connection of its own.
struct PgFeed {
    listener: PgListener,
}

#[async_trait]
impl ChangeFeed for PgFeed {
    async fn next(&mut self) -> Result<Option<String>, StoreError> {
        match self.listener.try_recv().await {
            Ok(Some(n)) => Ok(Some(n.payload().to_string())),
            Ok(None) => Ok(None),
            Err(e) => Err(pg_error(e)),
        }
    }
}
