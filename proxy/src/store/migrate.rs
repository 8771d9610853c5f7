//! The migration of an earlier version's JSON state file into SQLite.
//!
//! Earlier versions kept registrations in a JSON state file (`{"version":1,"backends":[...],
//! "leases":{name: seconds}}`) and its journal (`STATE.journal`, one JSON line per change
//! since). At start, a `state_file` that holds JSON is migrated once: the state file and its
//! journal are read (a last journal line torn by a crash was never acknowledged and is
//! skipped), the registrations are written to a new SQLite database beside it, the JSON is kept
//! as `STATE.json-migrated` (a hard link, made before anything is replaced; mode 0600), the
//! database is renamed over the state file, and the journal becomes `STATE.journal-migrated`. A crash at any step leaves either the JSON (migrated again
//! at the next start) or the database.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sqlx::sqlite::SqliteJournalMode;

use crate::registry::Registered;
use config::BackendConfig;

#[derive(Debug, Default, Deserialize)]
struct StateFile {
    #[allow(dead_code)]
    version: u32,
    backends: Vec<BackendConfig>,
    /// Leased registrations: name → the lease's length in seconds.
    #[serde(default)]
    leases: BTreeMap<String, u64>,
}

/// One journal line.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum JournalLine {
    Put {
        backend: BackendConfig,
        #[serde(default)]
        lease_seconds: Option<u64>,
    },
    Delete {
        name: String,
    },
}

/// `path` with `suffix` appended to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

/// Whether the file at `path` is an earlier version's JSON state file (its first non-blank
/// byte is `{`; an SQLite database starts with `SQLite format 3`). False when it is missing.
pub fn is_json_state_file(path: &Path) -> anyhow::Result<bool> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A journal alone (a state file never compacted) is a JSON registry too.
            return Ok(with_suffix(path, ".journal").exists());
        }
        Err(e) => anyhow::bail!("cannot read state file {}: {e}", path.display()),
    };
    let mut head = [0u8; 64];
    let n = f.read(&mut head)?;
    Ok(head[..n]
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{'))
}

/// The registrations of a JSON state file and its journal.
///
/// Errors: the file or a journal line other than a torn last one is not valid.
pub fn load_json(path: &Path) -> anyhow::Result<Vec<Registered>> {
    let mut entries: BTreeMap<String, Registered> = BTreeMap::new();
    match std::fs::read(path) {
        Ok(bytes) => {
            let state: StateFile = serde_json::from_slice(&bytes)
                .map_err(|e| anyhow::anyhow!("state file {} is not valid: {e}", path.display()))?;
            for def in state.backends {
                let lease = state.leases.get(&def.name).map(|s| Duration::from_secs(*s));
                entries.insert(def.name.clone(), Registered { def, lease });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => anyhow::bail!("cannot read state file {}: {e}", path.display()),
    }
    let journal = with_suffix(path, ".journal");
    let bytes = match std::fs::read(&journal) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => anyhow::bail!("cannot read journal {}: {e}", journal.display()),
    };
    let complete = bytes.ends_with(b"\n");
    let lines: Vec<&[u8]> = bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_slice::<JournalLine>(line) {
            Ok(JournalLine::Put {
                backend,
                lease_seconds,
            }) => {
                let lease = lease_seconds.map(Duration::from_secs);
                entries.insert(
                    backend.name.clone(),
                    Registered {
                        def: backend,
                        lease,
                    },
                );
            }
            Ok(JournalLine::Delete { name }) => {
                entries.remove(&name);
            }
            Err(_) if i + 1 == lines.len() && !complete => {
                tracing::warn!(journal = %journal.display(), "skipping a torn last journal line (never acknowledged)");
            }
            Err(e) => anyhow::bail!(
                "journal {} line {} is not valid: {e}",
                journal.display(),
                i + 1
            ),
        }
    }
    Ok(entries.into_values().collect())
}

/// Migrate the JSON state file at `path` (and its journal) into an SQLite database at `path`.
pub async fn migrate(path: &Path) -> anyhow::Result<()> {
    let entries = load_json(path)?;
    let tmp = with_suffix(path, ".sqlite-migrating");
    let _ = std::fs::remove_file(&tmp);
    // journal_mode DELETE: once closed, the new database is one file that can be renamed
    let pool = super::sqlite::connect(&tmp, SqliteJournalMode::Delete)
        .await
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", tmp.display()))?;
    let store = super::SqliteStore { pool, path: None };
    store.insert_all(&entries).await?;
    store.close().await;
    let backup = with_suffix(path, ".json-migrated");
    if path.exists() {
        let _ = std::fs::remove_file(&backup);
        if std::fs::hard_link(path, &backup).is_err() {
            std::fs::copy(path, &backup)?;
        }
        // it holds backend API keys, as the database does
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&backup, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    std::fs::rename(&tmp, path)?;
    let journal = with_suffix(path, ".journal");
    if journal.exists() {
        std::fs::rename(&journal, with_suffix(path, ".journal-migrated"))?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    tracing::info!(state_file = %path.display(), backends = entries.len(), backup = %backup.display(),
        "migrated the JSON state file into SQLite");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StateStore;

    fn def(name: &str) -> BackendConfig {
        BackendConfig {
            name: name.into(),
            url: "http://127.0.0.1:9".into(),
            model_type: config::ModelType::OpenAi,
            models: vec!["m".into()],
            weight: 1,
            api_key: Some("secret-key".into()),
        }
    }

    #[tokio::test]
    async fn a_json_state_file_and_its_journal_are_migrated_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        let state = serde_json::json!({"version": 1, "backends": [def("a"), def("b"), def("leased")],
            "leases": {"leased": 15}});
        std::fs::write(&path, serde_json::to_vec(&state).expect("json")).expect("write");
        let journal = with_suffix(&path, ".journal");
        let put_c = serde_json::json!({"op": "put", "backend": def("c"), "lease_seconds": 30});
        let del_b = serde_json::json!({"op": "delete", "name": "b"});
        std::fs::write(
            &journal,
            format!("{put_c}\n{del_b}\n{{\"op\":\"put\",\"backend\":{{\"na"),
        )
        .expect("journal");
        assert!(is_json_state_file(&path).expect("read"));
        let store = super::super::SqliteStore::open(Some(&path))
            .await
            .expect("migrated");
        let got = store.load().await.expect("load");
        let names: Vec<_> = got.iter().map(|r| r.def.name.as_str()).collect();
        assert_eq!(names, ["a", "c", "leased"], "the torn last line is skipped");
        assert_eq!(got[1].lease, Some(Duration::from_secs(30)));
        assert_eq!(got[2].lease, Some(Duration::from_secs(15)));
        assert_eq!(got[0].def, def("a"), "API keys are kept");
        assert!(!is_json_state_file(&path).expect("read"), "now SQLite");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let backup = std::fs::metadata(with_suffix(&path, ".json-migrated")).expect("kept");
            assert_eq!(
                backup.permissions().mode() & 0o077,
                0,
                "the JSON backup is 0600 too"
            );
        }
        assert!(!journal.exists() && with_suffix(&path, ".journal-migrated").exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o077, 0, "the database holds API keys: mode 0600");
        }
        drop(store);
        // a second start opens the database, no migration
        let again = super::super::SqliteStore::open(Some(&path))
            .await
            .expect("reopen");
        assert_eq!(again.load().await.expect("load").len(), 3);
    }

    #[test]
    fn a_corrupt_state_file_is_an_error_not_an_empty_registry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("reg.json");
        std::fs::write(&path, b"{not json").expect("write");
        assert!(load_json(&path).is_err());
        std::fs::write(&path, br#"{"version":1,"backends":[]}"#).expect("write");
        std::fs::write(
            with_suffix(&path, ".journal"),
            b"{bad}\n{\"op\":\"delete\",\"name\":\"a\"}\n",
        )
        .expect("w");
        assert!(
            load_json(&path).is_err(),
            "a bad line inside the journal is an error"
        );
    }
}
