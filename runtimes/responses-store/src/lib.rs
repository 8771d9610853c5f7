//! The Responses API's conversation store: one embedded SQLite database (through `sqlx`) in
//! which stored responses survive restarts, so that `previous_response_id` can continue from
//! them. Both front doors keep one: `gpt-oss-server` for what it generates, `gpt-oss-lb` for
//! every conversation that passes through it (so a conversation continues on any backend).
//! LB replicas that share a PostgreSQL database keep it there instead
//! ([`ResponseStore::postgres`]), so that any replica continues what another stored.
//!
//! One row per response: the response object as returned, the input items of its request,
//! and the whole conversation the model saw followed by its output (what a request that
//! continues from it starts with). Rows are JSON text, typed by the caller (`R` the response,
//! `I` an item); the schema is created on open. Listing input items pages as OpenAI pages
//! lists ([`page`]).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPool;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Row;

/// A store failure: the database or a row could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("the response store failed: {0}")]
pub struct StoreError(String, bool);

impl StoreError {
    fn of(e: impl std::fmt::Display) -> StoreError {
        StoreError(e.to_string(), false)
    }

    /// From a database error, noting whether the database could not be reached.
    fn db(e: sqlx::Error) -> StoreError {
        let unreachable = is_unreachable(&e);
        StoreError(e.to_string(), unreachable)
    }

    /// The database could not be reached (a PostgreSQL store that is down): nothing was read
    /// or written, and trying again later may succeed.
    pub fn is_unavailable(&self) -> bool {
        self.1
    }
}

/// A stored response and what it was made from.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored<R, I> {
    /// The response object as the client got it.
    pub response: R,
    /// The items of the request's `input`, with their ids.
    pub input_items: Vec<I>,
    /// Every item the model saw (the conversation of `previous_response_id` first, then the
    /// request's input) followed by the response's output.
    pub conversation: Vec<I>,
}

/// The response store. Cheap to clone (a connection pool).
#[derive(Clone)]
pub struct ResponseStore {
    pool: Pool,
}

/// Where the rows are.
#[derive(Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// The table, in both dialects (`created_at`: Unix seconds).
const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL,
    response TEXT NOT NULL,
    input_items TEXT NOT NULL,
    conversation TEXT NOT NULL
)";

impl ResponseStore {
    /// Opens (creating if needed) the database at `path`; `:memory:` keeps responses in memory
    /// only, for as long as the process runs. Parent folders are created. Several processes
    /// may share one file (WAL journal; a writer waits up to 5 s for another; an open that finds
    /// the file locked, as when two processes create it at once, is retried for 10 s).
    ///
    /// Errors: the folder or the file cannot be created, or the file is not a database.
    pub async fn open(path: &Path) -> Result<ResponseStore, StoreError> {
        let memory = path.as_os_str() == ":memory:";
        let options = if memory {
            SqliteConnectOptions::from_str("sqlite::memory:").map_err(StoreError::of)?
        } else {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| StoreError(format!("{}: {e}", dir.display()), false))?;
            }
            SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(5))
        };
        // Two processes that open a new file at once (two servers started together with the
        // default store) can get SQLITE_BUSY from the switch to WAL, which SQLite's busy handler
        // does not wait for: retried for a few seconds before it is an error.
        let mut delay = Duration::from_millis(20);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match Self::connect(options.clone(), memory).await {
                Ok(pool) => {
                    return Ok(ResponseStore {
                        pool: Pool::Sqlite(pool),
                    })
                }
                Err(e) if is_busy(&e) && std::time::Instant::now() < deadline => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(500));
                }
                Err(e) => return Err(StoreError(format!("{}: {e}", path.display()), false)),
            }
        }
    }

    /// Opens the pool and makes the table.
    async fn connect(
        options: SqliteConnectOptions,
        memory: bool,
    ) -> Result<SqlitePool, sqlx::Error> {
        let pool = SqlitePoolOptions::new()
            // An in-memory database exists once per connection: keep exactly one.
            .max_connections(if memory { 1 } else { 4 })
            .min_connections(if memory { 1 } else { 0 })
            .idle_timeout((!memory).then(|| Duration::from_secs(600)))
            .max_lifetime((!memory).then(|| Duration::from_secs(3600)))
            .connect_with(options)
            .await?;
        sqlx::query(CREATE_TABLE).execute(&pool).await?;
        Ok(pool)
    }

    /// The store in a PostgreSQL database that LB replicas share (table `responses`, created
    /// if missing). A row is acknowledged once committed.
    ///
    /// Errors: the table cannot be created (the database is unreachable, or the role may not
    /// create tables).
    pub async fn postgres(pool: PgPool) -> Result<ResponseStore, StoreError> {
        let mut tx = pool.begin().await.map_err(StoreError::db)?;
        Self::create_postgres_table(&mut tx)
            .await
            .map_err(StoreError::db)?;
        tx.commit().await.map_err(StoreError::db)?;
        Ok(Self::postgres_ready(pool))
    }

    /// Creates the `responses` table in PostgreSQL if missing, in transaction `tx` (under an
    /// advisory lock, so that replicas starting together do not race).
    pub async fn create_postgres_table(
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT pg_advisory_xact_lock(7521419766434263906)")
            .execute(&mut **tx)
            .await?;
        sqlx::query(CREATE_TABLE).execute(&mut **tx).await?;
        Ok(())
    }

    /// The store on `pool`, whose database has the table already
    /// ([`ResponseStore::create_postgres_table`]). Opens nothing.
    pub fn postgres_ready(pool: PgPool) -> ResponseStore {
        ResponseStore {
            pool: Pool::Postgres(pool),
        }
    }

    /// The default file of application `app` (`gpt-oss-server`, `gpt-oss-lb`):
    /// `$XDG_DATA_HOME/<app>/responses.sqlite`, else `$HOME/.local/share/<app>/responses.sqlite`
    /// (the XDG base directory specification's default), else `./responses.sqlite`.
    pub fn default_path(app: &str) -> PathBuf {
        let base = std::env::var_os("XDG_DATA_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .map(|h| PathBuf::from(h).join(".local").join("share"))
            });
        match base {
            Some(b) => b.join(app).join("responses.sqlite"),
            None => PathBuf::from("responses.sqlite"),
        }
    }

    /// Keeps `stored` as response `id` (created at `created_at`, Unix seconds), replacing a row
    /// with the same id.
    pub async fn put<R: Serialize, I: Serialize>(
        &self,
        id: &str,
        created_at: u64,
        stored: &Stored<R, I>,
    ) -> Result<(), StoreError> {
        let response = serde_json::to_string(&stored.response).map_err(StoreError::of)?;
        let input = serde_json::to_string(&stored.input_items).map_err(StoreError::of)?;
        let conversation = serde_json::to_string(&stored.conversation).map_err(StoreError::of)?;
        // `$n` parameters and `ON CONFLICT` read the same in SQLite (3.24+) and PostgreSQL.
        const PUT: &str =
            "INSERT INTO responses (id, created_at, response, input_items, conversation)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO UPDATE SET created_at = excluded.created_at,
                 response = excluded.response, input_items = excluded.input_items,
                 conversation = excluded.conversation";
        let created_at = i64::try_from(created_at).unwrap_or(i64::MAX);
        match &self.pool {
            Pool::Sqlite(pool) => sqlx::query(PUT)
                .bind(id)
                .bind(created_at)
                .bind(response)
                .bind(input)
                .bind(conversation)
                .execute(pool)
                .await
                .map(drop),
            Pool::Postgres(pool) => sqlx::query(PUT)
                .bind(id)
                .bind(created_at)
                .bind(response)
                .bind(input)
                .bind(conversation)
                .execute(pool)
                .await
                .map(drop),
        }
        .map_err(StoreError::db)
    }

    /// The stored response `id`, or `None`.
    pub async fn get<R: DeserializeOwned, I: DeserializeOwned>(
        &self,
        id: &str,
    ) -> Result<Option<Stored<R, I>>, StoreError> {
        const GET: &str = "SELECT response, input_items, conversation FROM responses WHERE id = $1";
        let texts: Option<[String; 3]> = match &self.pool {
            Pool::Sqlite(pool) => {
                let row = sqlx::query(GET).bind(id).fetch_optional(pool).await;
                match row.map_err(StoreError::db)? {
                    None => None,
                    Some(r) => Some(transpose3(
                        [0, 1, 2].map(|i| r.try_get::<String, _>(i).map_err(StoreError::of)),
                    )?),
                }
            }
            Pool::Postgres(pool) => {
                let row = sqlx::query(GET).bind(id).fetch_optional(pool).await;
                match row.map_err(StoreError::db)? {
                    None => None,
                    Some(r) => Some(transpose3(
                        [0, 1, 2].map(|i| r.try_get::<String, _>(i).map_err(StoreError::of)),
                    )?),
                }
            }
        };
        let Some([response, input_items, conversation]) = texts else {
            return Ok(None);
        };
        Ok(Some(Stored {
            response: serde_json::from_str(&response).map_err(StoreError::of)?,
            input_items: serde_json::from_str(&input_items).map_err(StoreError::of)?,
            conversation: serde_json::from_str(&conversation).map_err(StoreError::of)?,
        }))
    }

    /// Removes the response `id`; false when there was none.
    pub async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        const DELETE: &str = "DELETE FROM responses WHERE id = $1";
        let deleted = match &self.pool {
            Pool::Sqlite(pool) => sqlx::query(DELETE)
                .bind(id)
                .execute(pool)
                .await
                .map(|d| d.rows_affected()),
            Pool::Postgres(pool) => sqlx::query(DELETE)
                .bind(id)
                .execute(pool)
                .await
                .map(|d| d.rows_affected()),
        };
        Ok(deleted.map_err(StoreError::db)? > 0)
    }
}

/// OpenAI's message for a response id that is not stored (404, `param` absent).
pub fn not_found_message(id: &str) -> String {
    format!("Response with id '{id}' not found.")
}

/// OpenAI's message for a `previous_response_id` that is not stored (404, `param`
/// `previous_response_id`, code `previous_response_not_found`).
pub fn previous_not_found_message(id: &str) -> String {
    format!("Previous response with id '{id}' not found.")
}

/// The query of `GET /v1/responses/{id}/input_items` (OpenAI's list parameters).
#[derive(Debug, Default, Clone, Deserialize)]
pub struct ListQuery {
    /// 1 to 100, default 20.
    pub limit: Option<i64>,
    /// `asc` or `desc` (the default: newest first).
    pub order: Option<String>,
    /// An item id: list the items after it (in `order`).
    pub after: Option<String>,
    /// Accepted as OpenAI defines it (extra fields to include); changes nothing here.
    #[serde(default)]
    pub include: Option<serde_json::Value>,
}

/// One page of a list, OpenAI's `{"object": "list", "data", "first_id", "last_id",
/// "has_more"}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Page<I> {
    pub object: &'static str,
    pub data: Vec<I>,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
    pub has_more: bool,
}

/// A list parameter that is out of range: `(param, message)` for a 400.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadListParam {
    pub param: &'static str,
    pub message: String,
}

/// The page of `items` (in request order) that `query` asks for; `id_of` gives an item's id.
///
/// Errors: `limit` outside 1..=100, `order` other than `asc`/`desc`, `after` naming no item.
pub fn page<I>(
    mut items: Vec<I>,
    query: &ListQuery,
    id_of: impl Fn(&I) -> Option<&str>,
) -> Result<Page<I>, BadListParam> {
    let limit = query.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(BadListParam {
            param: "limit",
            message: format!("must be between 1 and 100, got {limit}"),
        });
    }
    match query.order.as_deref() {
        None | Some("desc") => items.reverse(),
        Some("asc") => {}
        Some(other) => {
            return Err(BadListParam {
                param: "order",
                message: format!("must be `asc` or `desc`, got `{other}`"),
            })
        }
    }
    if let Some(after) = &query.after {
        let at = items
            .iter()
            .position(|i| id_of(i) == Some(after.as_str()))
            .ok_or_else(|| BadListParam {
                param: "after",
                message: format!("no input item of this response has id `{after}`"),
            })?;
        items.drain(..=at);
    }
    let limit = usize::try_from(limit).unwrap_or(20);
    let has_more = items.len() > limit;
    items.truncate(limit);
    Ok(Page {
        object: "list",
        first_id: items.first().and_then(&id_of).map(str::to_string),
        last_id: items.last().and_then(&id_of).map(str::to_string),
        data: items,
        has_more,
    })
}

/// Whether `e` says the database could not be reached (and nothing was done): no connection
/// (I/O, TLS, none free within the pool's acquire timeout, a closed pool), or PostgreSQL's
/// SQLSTATE class 08 (connection exception), 57P01-57P03 (shutting down, crashed, starting)
/// or 53300 (too many connections). Such a failure is a 503: try again later.
pub fn is_unreachable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|c| {
            c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
}

/// Three results, or the first error.
fn transpose3(r: [Result<String, StoreError>; 3]) -> Result<[String; 3], StoreError> {
    let [a, b, c] = r;
    Ok([a?, b?, c?])
}

/// SQLITE_BUSY (5) or SQLITE_LOCKED (6): another connection holds the lock.
fn is_busy(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            matches!(d.code().as_deref(), Some("5") | Some("6") | Some("517"))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn sample(id: &str) -> Stored<Value, Value> {
        let item = json!({"type": "message", "id": "msg_1", "role": "user",
                          "content": [{"type": "input_text", "text": "hi"}]});
        Stored {
            response: json!({"id": id, "object": "response", "output": []}),
            input_items: vec![item.clone()],
            conversation: vec![item],
        }
    }

    #[tokio::test]
    async fn put_get_delete_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("sub").join("r.sqlite");
        {
            let store = ResponseStore::open(&path).await.expect("open");
            store
                .put("resp_a", 1, &sample("resp_a"))
                .await
                .expect("put");
        }
        let store = ResponseStore::open(&path).await.expect("reopen");
        let got: Stored<Value, Value> = store.get("resp_a").await.expect("get").expect("stored");
        assert_eq!(got, sample("resp_a"));
        assert!(store
            .get::<Value, Value>("resp_b")
            .await
            .expect("get")
            .is_none());
        assert!(store.delete("resp_a").await.expect("delete"));
        assert!(!store.delete("resp_a").await.expect("delete"));
        assert!(store
            .get::<Value, Value>("resp_a")
            .await
            .expect("get")
            .is_none());
    }

    #[test]
    fn pages_newest_first_by_default_and_after_an_id() {
        let items: Vec<String> = (1..=5).map(|i| format!("m{i}")).collect();
        fn id(s: &String) -> Option<&str> {
            Some(s.as_str())
        }
        let q = ListQuery {
            limit: Some(2),
            ..ListQuery::default()
        };
        let p = page(items.clone(), &q, id).expect("page");
        assert_eq!(p.data, ["m5", "m4"]);
        assert!(p.has_more);
        let q = ListQuery {
            limit: Some(2),
            order: Some("asc".into()),
            after: Some("m3".into()),
            ..ListQuery::default()
        };
        let p = page(items.clone(), &q, id).expect("page");
        assert_eq!(p.data, ["m4", "m5"]);
        assert!(!p.has_more);
        assert_eq!(
            (p.first_id.as_deref(), p.last_id.as_deref()),
            (Some("m4"), Some("m5"))
        );
        for (q, param) in [
            (
                ListQuery {
                    limit: Some(0),
                    ..ListQuery::default()
                },
                "limit",
            ),
            (
                ListQuery {
                    order: Some("up".into()),
                    ..ListQuery::default()
                },
                "order",
            ),
            (
                ListQuery {
                    after: Some("x".into()),
                    ..ListQuery::default()
                },
                "after",
            ),
        ] {
            assert_eq!(
                page(items.clone(), &q, id).expect_err("refused").param,
                param
            );
        }
    }
}
