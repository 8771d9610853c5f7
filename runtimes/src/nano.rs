//! gpt-oss-nano: the small model of the real gpt-oss architecture that ships inside the
//! binary, trained to speak harmony (see `runtimes/nano/README.md`).
//!
//! The model folder (onnxruntime-genai's layout: `genai_config.json`, `model.onnx`,
//! `model.onnx.data`, `tokenizer.json`) is embedded as a deterministic `tar.xz` of at most
//! 8 MB. [`ensure_unpacked`] writes it once to `<cache root>/nano-<hash>/` and returns that
//! folder; later calls (and other processes) find it complete and reuse it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The name the server gives the embedded model by default.
pub const MODEL_NAME: &str = "gpt-oss-nano";

/// The embedded archive (`runtimes/nano/gpt-oss-nano.tar.xz`).
pub static ARCHIVE: &[u8] = include_bytes!("../nano/gpt-oss-nano.tar.xz");

/// Marker written last into an unpacked folder: its presence means the folder is complete.
const COMPLETE_MARKER: &str = ".complete";

/// Files the archive must hold (onnxruntime-genai's export layout).
const REQUIRED_FILES: [&str; 4] = [
    "genai_config.json",
    "model.onnx",
    "model.onnx.data",
    "tokenizer.json",
];

#[derive(Debug, thiserror::Error)]
pub enum NanoError {
    #[error("cannot write the gpt-oss-nano model under {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the embedded gpt-oss-nano archive is corrupt: {0}")]
    Corrupt(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> NanoError + '_ {
    move |source| NanoError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The default cache root: `$XDG_CACHE_HOME/gpt-oss-front-door`, else
/// `$HOME/.cache/gpt-oss-front-door`, else `<temp dir>/gpt-oss-front-door`. The binary calls
/// this with its environment; the library itself reads none.
pub fn default_cache_root(xdg_cache_home: Option<&str>, home: Option<&str>) -> PathBuf {
    match (xdg_cache_home, home) {
        (Some(xdg), _) if !xdg.is_empty() => Path::new(xdg).join("gpt-oss-front-door"),
        (_, Some(home)) if !home.is_empty() => {
            Path::new(home).join(".cache").join("gpt-oss-front-door")
        }
        _ => std::env::temp_dir().join("gpt-oss-front-door"),
    }
}

/// FNV-1a over the archive: names the cache folder, so a new model never reuses an old folder.
fn archive_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The folder the embedded model unpacks to under `cache_root`.
pub fn unpacked_dir(cache_root: &Path) -> PathBuf {
    cache_root.join(format!("nano-{:016x}", archive_hash(ARCHIVE)))
}

/// Unpacks the embedded model under `cache_root` unless a complete copy is already there, and
/// returns the model folder. Safe against concurrent callers: each unpacks into its own
/// temporary folder and renames it into place; a loser of the race uses the winner's folder.
pub fn ensure_unpacked(cache_root: &Path) -> Result<PathBuf, NanoError> {
    unpack_archive(ARCHIVE, &unpacked_dir(cache_root))
}

fn unpack_archive(archive: &[u8], dir: &Path) -> Result<PathBuf, NanoError> {
    if dir.join(COMPLETE_MARKER).is_file() {
        tracing::debug!(path = %dir.display(), "gpt-oss-nano already unpacked");
        return Ok(dir.to_path_buf());
    }
    let parent = dir
        .parent()
        .ok_or_else(|| NanoError::Corrupt("cache folder has no parent".to_string()))?;
    fs::create_dir_all(parent).map_err(io_err(parent))?;
    let started = std::time::Instant::now();
    let tmp = parent.join(format!(
        ".{}.tmp-{}",
        dir.file_name().and_then(|n| n.to_str()).unwrap_or("nano"),
        std::process::id()
    ));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    let result = extract(archive, &tmp).and_then(|()| {
        let marker = tmp.join(COMPLETE_MARKER);
        fs::write(&marker, b"").map_err(io_err(&marker))
    });
    if let Err(e) = result {
        // best effort: the temporary folder is ours alone
        if let Err(rm) = fs::remove_dir_all(&tmp) {
            tracing::warn!(path = %tmp.display(), error = %rm, "cannot remove temporary folder");
        }
        return Err(e);
    }
    match fs::rename(&tmp, dir) {
        Ok(()) => {}
        Err(_) if dir.join(COMPLETE_MARKER).is_file() => {
            // another process finished first; keep its folder
            if let Err(rm) = fs::remove_dir_all(&tmp) {
                tracing::warn!(path = %tmp.display(), error = %rm, "cannot remove temporary folder");
            }
        }
        Err(e) => {
            // an incomplete folder from an interrupted run: replace it
            if dir.exists() {
                fs::remove_dir_all(dir).map_err(io_err(dir))?;
                fs::rename(&tmp, dir).map_err(io_err(dir))?;
            } else {
                return Err(io_err(dir)(e));
            }
        }
    }
    tracing::info!(
        path = %dir.display(),
        ms = started.elapsed().as_millis() as u64,
        "unpacked the embedded gpt-oss-nano model"
    );
    Ok(dir.to_path_buf())
}

/// Decompresses the xz stream and writes the tar's regular files (a flat folder) into `dir`.
fn extract(archive: &[u8], dir: &Path) -> Result<(), NanoError> {
    let mut tar = Vec::new();
    lzma_rs::xz_decompress(&mut io::BufReader::new(archive), &mut tar)
        .map_err(|e| NanoError::Corrupt(format!("xz: {e}")))?;
    let mut names = Vec::new();
    let mut at = 0usize;
    while at + 512 <= tar.len() {
        let header = &tar[at..at + 512];
        if header.iter().all(|&b| b == 0) {
            break;
        }
        let name = field_str(&header[0..100])?;
        let size = octal(&header[124..136])?;
        let kind = header[156];
        let start = at + 512;
        let end = start
            .checked_add(size)
            .filter(|&e| e <= tar.len())
            .ok_or_else(|| NanoError::Corrupt(format!("entry {name:?} runs past the end")))?;
        if kind == b'0' || kind == 0 {
            if name.is_empty() || name.contains('/') || name.contains('\\') || name.starts_with('.')
            {
                return Err(NanoError::Corrupt(format!(
                    "unexpected entry name {name:?}"
                )));
            }
            let path = dir.join(&name);
            fs::write(&path, &tar[start..end]).map_err(io_err(&path))?;
            names.push(name);
        }
        at = start + size.div_ceil(512) * 512;
    }
    for required in REQUIRED_FILES {
        if !names.iter().any(|n| n == required) {
            return Err(NanoError::Corrupt(format!("{required} is missing")));
        }
    }
    Ok(())
}

fn field_str(bytes: &[u8]) -> Result<String, NanoError> {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    std::str::from_utf8(&bytes[..end])
        .map(str::to_string)
        .map_err(|_| NanoError::Corrupt("entry name is not UTF-8".to_string()))
}

fn octal(bytes: &[u8]) -> Result<usize, NanoError> {
    let text = field_str(bytes)?;
    let digits = text.trim_matches(|c: char| c == ' ' || c == '\0');
    usize::from_str_radix(digits, 8)
        .map_err(|_| NanoError::Corrupt(format!("bad size field {text:?}")))
}

/// Reads the whole of `r` (used by tests on unpacked files).
#[cfg(test)]
fn read_all(mut r: impl io::Read) -> Vec<u8> {
    let mut v = Vec::new();
    r.read_to_end(&mut v).expect("read");
    v
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn unpacks_once_and_reuses_the_folder() {
        let root = tempfile::tempdir().unwrap();
        let dir = ensure_unpacked(root.path()).unwrap();
        for f in REQUIRED_FILES {
            assert!(dir.join(f).is_file(), "{f} must be unpacked");
        }
        let config: serde_json::Value = serde_json::from_slice(&read_all(
            fs::File::open(dir.join("genai_config.json")).unwrap(),
        ))
        .unwrap();
        assert_eq!(
            config["model"]["vocab_size"], 201088,
            "real o200k_harmony vocabulary"
        );
        let stamp = fs::metadata(dir.join("model.onnx.data"))
            .unwrap()
            .modified()
            .unwrap();
        let again = ensure_unpacked(root.path()).unwrap();
        assert_eq!(dir, again);
        let stamp2 = fs::metadata(dir.join("model.onnx.data"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(stamp, stamp2, "a complete folder is reused, not rewritten");
    }

    #[test]
    fn an_incomplete_folder_is_replaced() {
        let root = tempfile::tempdir().unwrap();
        let dir = unpacked_dir(root.path());
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("model.onnx"), b"truncated").unwrap();
        let got = ensure_unpacked(root.path()).unwrap();
        assert!(got.join(COMPLETE_MARKER).is_file());
        assert!(fs::metadata(got.join("model.onnx")).unwrap().len() > 9);
    }

    #[test]
    fn a_corrupt_archive_is_an_error_not_a_panic() {
        let root = tempfile::tempdir().unwrap();
        let err =
            unpack_archive(&ARCHIVE[..ARCHIVE.len() / 2], &root.path().join("x")).unwrap_err();
        assert!(matches!(err, NanoError::Corrupt(_)), "{err}");
        assert!(!root.path().join("x").exists());
    }

    #[test]
    fn cache_root_follows_xdg_then_home() {
        assert_eq!(
            default_cache_root(Some("/x"), Some("/h")),
            Path::new("/x/gpt-oss-front-door")
        );
        assert_eq!(
            default_cache_root(None, Some("/h")),
            Path::new("/h/.cache/gpt-oss-front-door")
        );
        assert_eq!(
            default_cache_root(Some(""), None),
            std::env::temp_dir().join("gpt-oss-front-door")
        );
    }
}
