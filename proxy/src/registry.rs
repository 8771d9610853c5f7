//! Runtime-registered backends and their state file.
//!
//! Two files hold the registry: the state file (JSON, the registry as of its last
//! compaction) and its journal (`STATE.journal`, one JSON line per registration or removal
//! since). A change is acknowledged once its journal line is written and `fsync`ed, so a
//! registration costs one short append whatever the registry's size; when the journal grows
//! past the registry's size (at least 64 lines) the state file is rewritten whole and the
//! journal emptied, so the cost stays constant on average. The state file is written
//! atomically: a temp file in the same directory, `fsync`, `rename` over the old file, then
//! `fsync` of the directory; a crash at any moment leaves the old or the new file. A journal
//! line torn by a crash was never acknowledged and is skipped at load. Both files hold backend
//! API keys, so they are created with mode 0600.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use config::BackendConfig;

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    backends: Vec<BackendConfig>,
}

/// One journal line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum JournalLine {
    Put { backend: BackendConfig },
    Delete { name: String },
}

/// The registered backends (not the config file's), by name.
#[derive(Debug, Default)]
pub struct Registry {
    path: Option<PathBuf>,
    entries: BTreeMap<String, BackendConfig>,
    /// Lines in the journal since the last compaction.
    journal_lines: usize,
    /// The last write failed: the next one compacts (rewrites everything).
    dirty: bool,
}

/// A write that makes one change durable: run it off the async executor.
#[derive(Debug)]
pub enum Persist {
    /// Append one line to the journal and `fsync` it.
    Append { journal: PathBuf, line: Vec<u8> },
    /// Rewrite the state file atomically, then empty the journal.
    Compact {
        path: PathBuf,
        bytes: Vec<u8>,
        journal: PathBuf,
    },
}

impl Persist {
    /// Do the write. Errors: the I/O error; a failed append is cut back so that no torn line
    /// stays in the journal.
    pub fn run(self) -> std::io::Result<()> {
        match self {
            Persist::Append { journal, line } => {
                let mut opts = std::fs::OpenOptions::new();
                opts.create(true).append(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    opts.mode(0o600);
                }
                let mut f = opts.open(&journal)?;
                let before = f.metadata()?.len();
                let written = f.write_all(&line).and_then(|()| f.sync_data());
                if written.is_err() {
                    let _ = f.set_len(before);
                }
                written
            }
            Persist::Compact {
                path,
                bytes,
                journal,
            } => {
                write_atomic(&path, &bytes)?;
                match std::fs::remove_file(&journal) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
                Ok(())
            }
        }
    }
}

/// The journal next to state file `path`.
pub fn journal_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".journal");
    path.with_file_name(name)
}

impl Registry {
    /// Load the state file; a missing file is an empty registry. Temp files that a process
    /// killed while writing left behind (`.NAME.tmp.PID` of a PID that no longer runs) are
    /// removed first.
    pub fn load(path: Option<PathBuf>) -> anyhow::Result<Registry> {
        if let Some(p) = &path {
            remove_stale_temp_files(p);
        }
        let mut reg = Registry {
            path,
            ..Registry::default()
        };
        if let Some(p) = &reg.path {
            match std::fs::read(p) {
                Ok(bytes) => {
                    let state: StateFile = serde_json::from_slice(&bytes).map_err(|e| {
                        anyhow::anyhow!("state file {} is not valid: {e}", p.display())
                    })?;
                    for d in state.backends {
                        reg.entries.insert(d.name.clone(), d);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => anyhow::bail!("cannot read state file {}: {e}", p.display()),
            }
            let journal = journal_path(p);
            match std::fs::read(&journal) {
                Ok(bytes) => reg.replay(&journal, &bytes)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => anyhow::bail!("cannot read journal {}: {e}", journal.display()),
            }
        }
        Ok(reg)
    }

    /// Apply the journal's lines in order. A last line without its newline was torn by a
    /// crash before it was acknowledged: skipped. Any other bad line is an error.
    fn replay(&mut self, journal: &Path, bytes: &[u8]) -> anyhow::Result<()> {
        let complete = bytes.ends_with(b"\n");
        let lines: Vec<&[u8]> = bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        for (i, line) in lines.iter().enumerate() {
            match serde_json::from_slice::<JournalLine>(line) {
                Ok(JournalLine::Put { backend }) => {
                    self.entries.insert(backend.name.clone(), backend);
                }
                Ok(JournalLine::Delete { name }) => {
                    self.entries.remove(&name);
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
            self.journal_lines += 1;
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&BackendConfig> {
        self.entries.get(name)
    }

    pub fn definitions(&self) -> impl Iterator<Item = &BackendConfig> {
        self.entries.values()
    }

    /// Insert or replace; returns the previous definition and the write that makes the change
    /// durable (none without a state file).
    pub fn insert(&mut self, d: BackendConfig) -> (Option<BackendConfig>, Option<Persist>) {
        let line = JournalLine::Put { backend: d.clone() };
        let previous = self.entries.insert(d.name.clone(), d);
        (previous, self.persist(&line))
    }

    /// Remove; returns the removed definition and the write that makes it durable.
    pub fn remove(&mut self, name: &str) -> (Option<BackendConfig>, Option<Persist>) {
        let removed = self.entries.remove(name);
        let persist = removed.as_ref().and_then(|_| {
            self.persist(&JournalLine::Delete {
                name: name.to_string(),
            })
        });
        (removed, persist)
    }

    /// Undo a change whose write failed (the registry must match what is on disk); the next
    /// write then rewrites everything.
    pub fn undo(&mut self, name: &str, previous: Option<BackendConfig>) {
        match previous {
            Some(p) => {
                self.entries.insert(name.to_string(), p);
            }
            None => {
                self.entries.remove(name);
            }
        }
        self.dirty = true;
    }

    /// The write for one change: a journal line, or a compaction when the journal has grown
    /// past the registry's size (or the last write failed).
    fn persist(&mut self, line: &JournalLine) -> Option<Persist> {
        let path = self.path.clone()?;
        let journal = journal_path(&path);
        if self.dirty || self.journal_lines + 1 > self.entries.len().max(64) {
            let state = StateFile {
                version: 1,
                backends: self.entries.values().cloned().collect(),
            };
            let bytes = serde_json::to_vec_pretty(&state).ok()?;
            self.journal_lines = 0;
            self.dirty = false;
            return Some(Persist::Compact {
                path,
                bytes,
                journal,
            });
        }
        let mut bytes = serde_json::to_vec(line).ok()?;
        bytes.push(b'\n');
        self.journal_lines += 1;
        Some(Persist::Append {
            journal,
            line: bytes,
        })
    }
}

/// Remove `.NAME.tmp.PID` files next to `path` whose process is gone (a SIGKILL or a full
/// disk during a write). A running process's temp file (a graceful upgrade's old process) is
/// left alone.
fn remove_stale_temp_files(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return;
    };
    let prefix = format!(".{name}.tmp.");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = file.strip_prefix(&prefix) else {
            continue;
        };
        let alive = pid
            .parse::<u32>()
            .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            match std::fs::remove_file(e.path()) {
                Ok(()) => {
                    tracing::info!(file = %e.path().display(), "removed a stale temp state file")
                }
                Err(err) => {
                    tracing::warn!(file = %e.path().display(), error = %err, "cannot remove a stale temp state file")
                }
            }
        }
    }
}

/// Write `bytes` to `path` atomically (temp file + fsync + rename + directory fsync).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".into());
    let tmp = dir.join(format!(".{file_name}.tmp.{}", std::process::id()));
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let written = opts.open(&tmp).and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        });
        if let Err(e) = written {
            // A full disk: leave no partial temp file behind.
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        // Leave no temp file behind; the rename error is the one that matters.
        if let Err(rm) = std::fs::remove_file(&tmp) {
            tracing::warn!(error = %rm, "could not remove temp state file");
        }
        return Err(e);
    }
    std::fs::File::open(&dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn stale_temp_files_are_removed_at_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("reg.json");
        let stale = dir.path().join(".reg.json.tmp.999999999");
        let live = dir
            .path()
            .join(format!(".reg.json.tmp.{}", std::process::id()));
        std::fs::write(&stale, b"{").expect("write");
        std::fs::write(&live, b"{").expect("write");
        Registry::load(Some(path)).expect("load");
        assert!(!stale.exists(), "a dead process's temp file is removed");
        assert!(live.exists(), "a running process's temp file stays");
    }

    #[test]
    fn state_round_trips_through_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("reg.json");
        let mut r = Registry::load(Some(path.clone())).expect("missing file is empty");
        for i in 0..200 {
            let (_, p) = r.insert(def(&format!("b{i}")));
            p.expect("a write").run().expect("write");
        }
        for i in 0..50 {
            let (_, p) = r.remove(&format!("b{i}"));
            p.expect("a write").run().expect("write");
        }
        let (_, p) = r.insert(def("a"));
        p.expect("a write").run().expect("write");
        let r2 = Registry::load(Some(path.clone())).expect("load");
        assert_eq!(r2.definitions().count(), 151);
        assert_eq!(r2.get("a"), Some(&def("a")));
        assert!(r2.get("b0").is_none() && r2.get("b199").is_some());
        let journal = std::fs::read(journal_path(&path)).unwrap_or_default();
        assert!(
            journal.len() < 200 * 300,
            "the journal is compacted as it grows ({} bytes)",
            journal.len()
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("read dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp."))
            .collect();
        assert!(leftovers.is_empty(), "temp files must not be left behind");
    }

    #[test]
    fn a_torn_last_journal_line_was_never_acknowledged_and_is_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("reg.json");
        let mut r = Registry::load(Some(path.clone())).expect("empty");
        let (_, p) = r.insert(def("a"));
        p.expect("write").run().expect("write");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(journal_path(&path))
            .expect("journal");
        f.write_all(br#"{"op":"put","backend":{"name":"b","#)
            .expect("torn");
        let r2 = Registry::load(Some(path.clone())).expect("a torn tail is not an error");
        assert_eq!(r2.definitions().count(), 1);
        std::fs::write(
            journal_path(&path),
            b"{bad}\n{\"op\":\"delete\",\"name\":\"a\"}\n",
        )
        .expect("w");
        assert!(
            Registry::load(Some(path)).is_err(),
            "a bad line inside the journal is an error"
        );
    }

    #[test]
    fn a_corrupt_state_file_is_an_error_not_an_empty_registry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("reg.json");
        std::fs::write(&path, b"{not json").expect("write");
        assert!(Registry::load(Some(path)).is_err());
    }
}
