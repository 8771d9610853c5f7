//! Where responses are kept: an embedded SQLite database (through `sqlx`), so that stored
//! responses survive restarts and `previous_response_id` can continue from them.
//!
//! One row per response: the response object as returned, the input items of its request,
//! and the whole conversation the model saw followed by its output (what a request that
//! continues from it starts with). Rows are JSON text; the schema is created on open.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use openai_types::{Item, Response};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::Row;

use crate::error::ApiError;

/// A stored response and what it was made from.
#[derive(Debug, Clone)]
pub struct Stored {
    pub response: Response,
    /// The items of the request's `input`, with the ids the server gave them.
    pub input_items: Vec<Item>,
    /// Every item the model saw (the conversation of `previous_response_id` first, then this
    /// request's input) followed by the response's output.
    pub conversation: Vec<Item>,
}

/// The response store. Cheap to clone (a connection pool).
#[derive(Clone)]
pub struct ResponseStore {
    pool: SqlitePool,
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(format!("the response store failed: {e}"))
}

impl ResponseStore {
    /// Opens (creating if needed) the database at `path`; `:memory:` keeps responses in memory
    /// only, for as long as the server runs. Parent folders are created.
    ///
    /// Errors: the folder or the file cannot be created, or the file is not a database.
    pub async fn open(path: &Path) -> anyhow::Result<ResponseStore> {
        let memory = path.as_os_str() == ":memory:";
        let options = if memory {
            SqliteConnectOptions::from_str("sqlite::memory:")?
        } else {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
                // Several servers may share one file: readers do not block the writer.
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(5))
        };
        let pool = SqlitePoolOptions::new()
            // An in-memory database exists once per connection: keep exactly one.
            .max_connections(if memory { 1 } else { 4 })
            .min_connections(if memory { 1 } else { 0 })
            .idle_timeout(if memory {
                None
            } else {
                Some(Duration::from_secs(600))
            })
            .max_lifetime(if memory {
                None
            } else {
                Some(Duration::from_secs(3600))
            })
            .connect_with(options)
            .await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS responses (
                id TEXT PRIMARY KEY,
                created_at INTEGER NOT NULL,
                response TEXT NOT NULL,
                input_items TEXT NOT NULL,
                conversation TEXT NOT NULL
            )",
        )
        .execute(&pool)
        .await?;
        Ok(ResponseStore { pool })
    }

    /// The default file: `$XDG_DATA_HOME/gpt-oss-server/responses.sqlite`, else
    /// `$HOME/.local/share/gpt-oss-server/responses.sqlite`, else `./responses.sqlite`.
    pub fn default_path() -> PathBuf {
        let base = std::env::var_os("XDG_DATA_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .map(|h| PathBuf::from(h).join(".local").join("share"))
            });
        match base {
            Some(b) => b.join("gpt-oss-server").join("responses.sqlite"),
            None => PathBuf::from("responses.sqlite"),
        }
    }

    /// Keeps `stored` (replacing a row with the same id).
    pub async fn put(&self, stored: &Stored) -> Result<(), ApiError> {
        let response = serde_json::to_string(&stored.response).map_err(internal)?;
        let input = serde_json::to_string(&stored.input_items).map_err(internal)?;
        let conversation = serde_json::to_string(&stored.conversation).map_err(internal)?;
        sqlx::query(
            "INSERT OR REPLACE INTO responses (id, created_at, response, input_items, conversation)
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&stored.response.id)
        .bind(i64::try_from(stored.response.created_at).unwrap_or(i64::MAX))
        .bind(response)
        .bind(input)
        .bind(conversation)
        .execute(&self.pool)
        .await
        .map_err(internal)?;
        Ok(())
    }

    /// The stored response `id`, or `None`.
    pub async fn get(&self, id: &str) -> Result<Option<Stored>, ApiError> {
        let row =
            sqlx::query("SELECT response, input_items, conversation FROM responses WHERE id = ?")
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(internal)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let text = |i: usize| row.try_get::<String, _>(i).map_err(internal);
        Ok(Some(Stored {
            response: serde_json::from_str(&text(0)?).map_err(internal)?,
            input_items: serde_json::from_str(&text(1)?).map_err(internal)?,
            conversation: serde_json::from_str(&text(2)?).map_err(internal)?,
        }))
    }

    /// Removes the response `id`; false when there was none.
    pub async fn delete(&self, id: &str) -> Result<bool, ApiError> {
        let done = sqlx::query("DELETE FROM responses WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(internal)?;
        Ok(done.rows_affected() > 0)
    }
}

/// OpenAI's 404 for a response id that is not stored.
pub fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("Response with id '{id}' not found."))
}

#[cfg(test)]
mod tests {
    use super::*;
    use openai_types::{ItemContent, MessageItem};

    fn sample(id: &str) -> Stored {
        let item = Item::Message(MessageItem {
            id: Some("msg_1".into()),
            role: "user".into(),
            content: vec![ItemContent::InputText { text: "hi".into() }],
            status: None,
            phase: None,
        });
        let response: Response = serde_json::from_value(serde_json::json!({
            "id": id, "object": "response", "created_at": 1, "status": "completed",
            "error": null, "incomplete_details": null, "instructions": null,
            "max_output_tokens": null, "model": "m", "output": [], "parallel_tool_calls": true,
            "previous_response_id": null, "reasoning": {"effort": null, "summary": null},
            "store": true, "temperature": null, "top_p": null, "text": {},
            "tool_choice": "auto", "tools": [], "truncation": "disabled", "usage": null,
            "user": null, "metadata": {}
        }))
        .expect("a response object");
        Stored {
            response,
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
            store.put(&sample("resp_a")).await.expect("put");
        }
        let store = ResponseStore::open(&path).await.expect("reopen");
        let got = store.get("resp_a").await.expect("get").expect("stored");
        assert_eq!(got.response.id, "resp_a");
        assert_eq!(got.input_items, sample("resp_a").input_items);
        assert!(store.get("resp_b").await.expect("get").is_none());
        assert!(store.delete("resp_a").await.expect("delete"));
        assert!(!store.delete("resp_a").await.expect("delete"));
        assert!(store.get("resp_a").await.expect("get").is_none());
    }
}
