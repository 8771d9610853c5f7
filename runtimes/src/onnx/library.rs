//! Finding and loading the ONNX Runtime shared library (`ort`'s `load-dynamic`).
//!
//! Search order:
//! 1. an explicit path (the binary passes `ORT_DYLIB_PATH` here);
//! 2. the project's own virtualenv: `.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.*`
//!    under each search root and its ancestors (the binary passes the current directory and its own
//!    location);
//! 3. the system loader (`libonnxruntime.so` on the library path).
//!
//! Reading the environment happens at the edge: [`LibrarySearch::from_process`] is for binaries and
//! tests; the library code only takes a [`LibrarySearch`].

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ort::environment::Environment;

/// How to install the library, repeated in every error about it.
pub const INSTALL_HINT: &str = "install it with `scripts/setup` (it creates .venv with onnxruntime==1.31.1), or \
     `pip install onnxruntime==1.31.1` (`onnxruntime-gpu==1.31.1` for CUDA) and point ORT_DYLIB_PATH at \
     site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1";

/// The system loader's name for the library.
#[cfg(target_os = "linux")]
const SYSTEM_NAME: &str = "libonnxruntime.so";
#[cfg(target_os = "macos")]
const SYSTEM_NAME: &str = "libonnxruntime.dylib";
#[cfg(target_os = "windows")]
const SYSTEM_NAME: &str = "onnxruntime.dll";
#[cfg(not(any(target_os = "linux", target_os = "macos", target_os = "windows")))]
const SYSTEM_NAME: &str = "libonnxruntime.so";

/// Where to look for the ONNX Runtime library.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LibrarySearch {
    /// Used as is when set (e.g. from `ORT_DYLIB_PATH`); a missing file is an error, not a fallback.
    pub explicit: Option<PathBuf>,
    /// Directories whose ancestors are searched for `.venv`.
    pub roots: Vec<PathBuf>,
}

/// The library that was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LibraryLocation {
    /// A file found by path.
    Path(PathBuf),
    /// Left to the system loader.
    System,
}

impl LibraryLocation {
    fn load_path(&self) -> PathBuf {
        match self {
            LibraryLocation::Path(p) => p.clone(),
            LibraryLocation::System => PathBuf::from(SYSTEM_NAME),
        }
    }
}

impl std::fmt::Display for LibraryLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LibraryLocation::Path(p) => write!(f, "{}", p.display()),
            LibraryLocation::System => write!(f, "{SYSTEM_NAME} (system loader)"),
        }
    }
}

/// The ONNX Runtime library could not be found or loaded.
#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    #[error("ONNX Runtime library not found at ORT_DYLIB_PATH={0}; {INSTALL_HINT}")]
    ExplicitMissing(PathBuf),
    #[error("could not load the ONNX Runtime library from {location}: {reason}; {INSTALL_HINT}")]
    Load { location: String, reason: String },
    #[error("could not create the ONNX Runtime environment: {0}")]
    Environment(String),
}

impl LibrarySearch {
    /// The search a binary or a test runs: `ORT_DYLIB_PATH`, then `.venv` above the current directory
    /// and above the executable.
    pub fn from_process() -> Self {
        let explicit = std::env::var_os("ORT_DYLIB_PATH")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        let mut roots = Vec::new();
        if let Ok(cwd) = std::env::current_dir() {
            roots.push(cwd);
        }
        if let Ok(exe) = std::env::current_exe() {
            if let Some(dir) = exe.parent() {
                roots.push(dir.to_path_buf());
            }
        }
        LibrarySearch { explicit, roots }
    }

    /// Picks the library to load, without loading it.
    pub fn locate(&self) -> Result<LibraryLocation, LibraryError> {
        if let Some(path) = &self.explicit {
            if path.is_file() {
                return Ok(LibraryLocation::Path(path.clone()));
            }
            return Err(LibraryError::ExplicitMissing(path.clone()));
        }
        for root in &self.roots {
            for dir in root.ancestors() {
                if let Some(found) = find_in_venv(&dir.join(".venv")) {
                    return Ok(LibraryLocation::Path(found));
                }
            }
        }
        Ok(LibraryLocation::System)
    }
}

/// `VENV/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.*`, the highest version first.
fn find_in_venv(venv: &Path) -> Option<PathBuf> {
    let lib = venv.join("lib");
    let mut candidates = Vec::new();
    for python in std::fs::read_dir(&lib).ok()?.flatten() {
        let name = python.file_name();
        if !name.to_string_lossy().starts_with("python3") {
            continue;
        }
        let capi = python.path().join("site-packages/onnxruntime/capi");
        let Ok(entries) = std::fs::read_dir(&capi) else {
            continue;
        };
        for entry in entries.flatten() {
            let file = entry.file_name();
            let file = file.to_string_lossy();
            let is_lib = file.starts_with("libonnxruntime.so.")
                || (file.starts_with("libonnxruntime.") && file.ends_with(".dylib"));
            if is_lib && entry.path().is_file() {
                candidates.push(entry.path());
            }
        }
    }
    candidates.sort();
    candidates.pop()
}

static ENVIRONMENT: Mutex<Option<(Environment, LibraryLocation)>> = Mutex::new(None);

/// Loads the library (once per process) and returns the process-wide ONNX Runtime environment.
///
/// ONNX Runtime allows one environment per process, so later calls return the first one; a later
/// call that names a different library gets a warning in the log.
pub fn environment(search: &LibrarySearch) -> Result<Environment, LibraryError> {
    let mut guard = ENVIRONMENT
        .lock()
        .map_err(|_| LibraryError::Environment("a previous load panicked".into()))?;
    if let Some((env, loaded)) = guard.as_ref() {
        if let Ok(wanted) = search.locate() {
            if &wanted != loaded {
                tracing::warn!(loaded = %loaded, wanted = %wanted, "ONNX Runtime is already loaded in this process; keeping the first library");
            }
        }
        return Ok(env.clone());
    }
    let location = search.locate()?;
    let builder = ort::init_from(location.load_path()).map_err(|e| LibraryError::Load {
        location: location.to_string(),
        reason: e.to_string(),
    })?;
    let env = builder
        .with_name("gpt-oss")
        .with_telemetry(false)
        .build()
        .map_err(|e| LibraryError::Environment(e.to_string()))?;
    // `ort` registers its tracing logger at the verbose level; ONNX Runtime would then format every
    // verbose message of every run. Warnings and errors are what a server log wants.
    env.set_log_level(ort::logging::LogLevel::Warning);
    tracing::info!(library = %location, "loaded ONNX Runtime");
    *guard = Some((env.clone(), location));
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_path_that_does_not_exist_is_an_error_naming_it_and_the_fix() {
        let search = LibrarySearch {
            explicit: Some(PathBuf::from("/nonexistent/libonnxruntime.so.1")),
            roots: vec![],
        };
        let err = search
            .locate()
            .expect_err("a missing explicit library must not fall back");
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/libonnxruntime.so.1"), "{msg}");
        assert!(msg.contains("pip install onnxruntime==1.31.1"), "{msg}");
        assert!(msg.contains("scripts/setup"), "{msg}");
    }

    #[test]
    fn finds_the_library_in_a_venv_above_a_root() {
        let dir = std::env::temp_dir().join(format!("ortlib-{}", std::process::id()));
        let capi = dir.join(".venv/lib/python3.11/site-packages/onnxruntime/capi");
        std::fs::create_dir_all(&capi).expect("temp dir");
        let lib = capi.join("libonnxruntime.so.1.31.1");
        std::fs::write(&lib, b"").expect("temp file");
        let nested = dir.join("a/b");
        std::fs::create_dir_all(&nested).expect("temp dir");
        let search = LibrarySearch {
            explicit: None,
            roots: vec![nested],
        };
        assert_eq!(search.locate().ok(), Some(LibraryLocation::Path(lib)));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn falls_back_to_the_system_loader() {
        let search = LibrarySearch {
            explicit: None,
            roots: vec![PathBuf::from("/nonexistent-root")],
        };
        assert_eq!(search.locate().ok(), Some(LibraryLocation::System));
    }
}
