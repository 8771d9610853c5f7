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
//!
//! A registration may carry a lease (`lease_seconds`, as servers started with
//! `--register-with` send): it is dropped unless renewed within that time. The lease's length
//! is persisted with the registration, its renewals are not: after a restart every leased
//! registration starts a whole new lease, and a server that is gone by then is dropped when it
//! runs out.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use config::BackendConfig;

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    backends: Vec<BackendConfig>,
    /// Leased registrations: name → the lease's length in seconds.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    leases: BTreeMap<String, u64>,
}

/// One journal line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum JournalLine {
    Put {
        backend: BackendConfig,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease_seconds: Option<u64>,
    },
    Delete {
        name: String,
    },
}

/// A registration's lease: its length, and when it runs out unless renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub ttl: Duration,
    pub expires: Instant,
}

impl Lease {
    fn new(ttl: Duration) -> Lease {
        Lease {
            ttl,
            expires: Instant::now() + ttl,
        }
    }
}

/// The registered backends (not the config file's), by name.
#[derive(Debug, Default)]
pub struct Registry {
    path: Option<PathBuf>,
    entries: BTreeMap<String, BackendConfig>,
    /// The leased registrations among `entries`.
    leases: HashMap<String, Lease>,
    /// Lines in the journal since the last compaction.
    journal_lines: usize,
    /// The last write failed: the next one compacts (rewrites everything).
    dirty: bool,
}

/// What a change replaced: the definition and its lease.
pub type Previous = (Option<BackendConfig>, Option<Lease>);

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
                    for (name, secs) in state.leases {
                        if reg.entries.contains_key(&name) {
                            reg.leases
                                .insert(name, Lease::new(Duration::from_secs(secs)));
                        }
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
                Ok(JournalLine::Put {
                    backend,
                    lease_seconds,
                }) => {
                    match lease_seconds {
                        Some(secs) => self
                            .leases
                            .insert(backend.name.clone(), Lease::new(Duration::from_secs(secs))),
                        None => self.leases.remove(&backend.name),
                    };
                    self.entries.insert(backend.name.clone(), backend);
                }
                Ok(JournalLine::Delete { name }) => {
                    self.entries.remove(&name);
                    self.leases.remove(&name);
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

    /// Insert or replace, with a lease of `lease` (none: it stays until removed); returns
    /// what it replaced (for [`Registry::undo`]) and the write that makes the change durable
    /// (none without a state file).
    pub fn insert(
        &mut self,
        d: BackendConfig,
        lease: Option<Duration>,
    ) -> (Previous, Option<Persist>) {
        let line = JournalLine::Put {
            backend: d.clone(),
            lease_seconds: lease.map(|t| t.as_secs()),
        };
        let name = d.name.clone();
        let previous_lease = match lease {
            Some(ttl) => self.leases.insert(name.clone(), Lease::new(ttl)),
            None => self.leases.remove(&name),
        };
        let previous = self.entries.insert(name, d);
        ((previous, previous_lease), self.persist(&line))
    }

    /// The lease of `name`, if it is registered with one.
    pub fn lease(&self, name: &str) -> Option<Lease> {
        self.leases.get(name).copied()
    }

    /// Renew the lease of `name` for its whole length; `None` when it has none.
    pub fn renew(&mut self, name: &str) -> Option<Lease> {
        let lease = self.leases.get_mut(name)?;
        *lease = Lease::new(lease.ttl);
        Some(*lease)
    }

    /// The leased registrations whose lease ran out by `now`.
    pub fn expired(&self, now: Instant) -> Vec<String> {
        let mut out: Vec<String> = self
            .leases
            .iter()
            .filter(|(_, l)| l.expires <= now)
            .map(|(n, _)| n.clone())
            .collect();
        out.sort();
        out
    }

    /// Remove; returns what it removed (for [`Registry::undo`]) and the write that makes it
    /// durable.
    pub fn remove(&mut self, name: &str) -> (Previous, Option<Persist>) {
        let lease = self.leases.remove(name);
        let removed = self.entries.remove(name);
        let persist = removed.as_ref().and_then(|_| {
            self.persist(&JournalLine::Delete {
                name: name.to_string(),
            })
        });
        ((removed, lease), persist)
    }

    /// Undo a change whose write failed (the registry must match what is on disk); the next
    /// write then rewrites everything.
    pub fn undo(&mut self, name: &str, previous: Previous) {
        match previous.0 {
            Some(p) => {
                self.entries.insert(name.to_string(), p);
            }
            None => {
                self.entries.remove(name);
            }
        }
        match previous.1 {
            Some(l) => self.leases.insert(name.to_string(), l),
            None => self.leases.remove(name),
        };
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
                leases: self
                    .leases
                    .iter()
                    .map(|(n, l)| (n.clone(), l.ttl.as_secs()))
                    .collect(),
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
    fn leases_expire_renew_and_survive_a_restart_as_whole_leases() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("reg.json");
        let mut r = Registry::load(Some(path.clone())).expect("empty");
        let ttl = Duration::from_secs(15);
        let (_, p) = r.insert(def("leased"), Some(ttl));
        p.expect("a write").run().expect("write");
        let (_, p) = r.insert(def("by-hand"), None);
        p.expect("a write").run().expect("write");
        let now = Instant::now();
        assert!(r.expired(now).is_empty());
        assert_eq!(
            r.expired(now + Duration::from_secs(16)),
            vec!["leased".to_string()]
        );
        assert!(r.renew("by-hand").is_none(), "no lease to renew");
        let renewed = r.renew("leased").expect("leased");
        assert!(renewed.expires >= now + ttl);
        // the journal keeps the lease's length: after a restart, a whole new lease
        let r2 = Registry::load(Some(path.clone())).expect("load");
        assert_eq!(r2.lease("leased").map(|l| l.ttl), Some(ttl));
        assert!(r2.lease("by-hand").is_none());
        // and so does a compacted state file
        let mut r3 = r2;
        for i in 0..70 {
            let (_, p) = r3.insert(def(&format!("x{i}")), None);
            p.expect("a write").run().expect("write");
        }
        let r4 = Registry::load(Some(path)).expect("load");
        assert_eq!(r4.lease("leased").map(|l| l.ttl), Some(ttl));
        // a registration replaced without a lease loses it; removal drops it
        let mut r5 = r4;
        let (prev, _) = r5.insert(def("leased"), None);
        assert!(prev.1.is_some() && r5.lease("leased").is_none());
        r5.undo("leased", prev);
        assert!(r5.lease("leased").is_some(), "undo restores the lease");
        let _ = r5.remove("leased");
        assert!(r5.lease("leased").is_none() && r5.expired(now + ttl * 2).is_empty());
    }

    #[test]
    fn state_round_trips_through_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("reg.json");
        let mut r = Registry::load(Some(path.clone())).expect("missing file is empty");
        for i in 0..200 {
            let (_, p) = r.insert(def(&format!("b{i}")), None);
            p.expect("a write").run().expect("write");
        }
        for i in 0..50 {
            let (_, p) = r.remove(&format!("b{i}"));
            p.expect("a write").run().expect("write");
        }
        let (_, p) = r.insert(def("a"), None);
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
        let (_, p) = r.insert(def("a"), None);
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
