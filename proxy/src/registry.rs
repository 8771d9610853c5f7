//! Runtime-registered backends and their state file.
//!
//! The file is JSON, written atomically: a temp file in the same directory, `fsync`, `rename`
//! over the old file, then `fsync` of the directory. A crash at any moment leaves either the
//! old or the new file, never a torn one. The file holds backend API keys, so it is created
//! with mode 0600.

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

/// The registered backends (not the config file's), by name.
#[derive(Debug, Default)]
pub struct Registry {
    path: Option<PathBuf>,
    entries: BTreeMap<String, BackendConfig>,
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
            entries: BTreeMap::new(),
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
        }
        Ok(reg)
    }

    pub fn get(&self, name: &str) -> Option<&BackendConfig> {
        self.entries.get(name)
    }

    pub fn definitions(&self) -> impl Iterator<Item = &BackendConfig> {
        self.entries.values()
    }

    /// Insert or replace; returns the previous definition.
    pub fn insert(&mut self, d: BackendConfig) -> Option<BackendConfig> {
        self.entries.insert(d.name.clone(), d)
    }

    pub fn remove(&mut self, name: &str) -> Option<BackendConfig> {
        self.entries.remove(name)
    }

    /// The bytes of the state file for the current entries, and where they go.
    pub fn serialized(&self) -> Option<(PathBuf, Vec<u8>)> {
        let path = self.path.clone()?;
        let state = StateFile {
            version: 1,
            backends: self.entries.values().cloned().collect(),
        };
        let bytes = serde_json::to_vec_pretty(&state).ok()?;
        Some((path, bytes))
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
        r.insert(def("a"));
        r.insert(def("b"));
        let (p, bytes) = r.serialized().expect("has a path");
        write_atomic(&p, &bytes).expect("write");
        let r2 = Registry::load(Some(path)).expect("load");
        assert_eq!(r2.definitions().count(), 2);
        assert_eq!(r2.get("a"), Some(&def("a")));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("read dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp."))
            .collect();
        assert!(leftovers.is_empty(), "temp files must not be left behind");
    }

    #[test]
    fn a_corrupt_state_file_is_an_error_not_an_empty_registry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("reg.json");
        std::fs::write(&path, b"{not json").expect("write");
        assert!(Registry::load(Some(path)).is_err());
    }
}
