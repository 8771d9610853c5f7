//! `encrypted_content` of reasoning items: the reasoning text sealed with
//! ChaCha20-Poly1305 (RFC 8439) under a key only the server holds, so a client that keeps no
//! state on the server (`store: false`, as Codex CLI sends) can hand the reasoning back on its
//! next turn without being able to read or alter it.
//!
//! Format: base64 (standard alphabet, padded) of a 12-byte random nonce followed by the
//! ciphertext and its 16-byte tag. The key is 32 random bytes kept in a file (created with
//! mode 0600 on first use); servers that share the file read each other's values.

use std::io::Write;
use std::path::Path;

use base64::Engine;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

/// Seals and opens `encrypted_content`.
#[derive(Clone)]
pub struct Sealer {
    cipher: ChaCha20Poly1305,
}

/// Associated data bound into every value: a value made for something else does not open.
const AAD: &[u8] = b"gpt-oss-server reasoning v1";

impl Sealer {
    /// A sealer with a fresh random key, known to this process only.
    pub fn ephemeral() -> Sealer {
        Sealer {
            cipher: ChaCha20Poly1305::new(&ChaCha20Poly1305::generate_key(&mut OsRng)),
        }
    }

    /// The key in `path` (32 bytes), made and written there first when the file does not
    /// exist. Errors: the file cannot be read or created, or does not hold 32 bytes.
    pub fn from_key_file(path: &Path) -> anyhow::Result<Sealer> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                    anyhow::anyhow!(
                        "{}: a reasoning key file holds 32 bytes, this one {}",
                        path.display(),
                        bytes.len()
                    )
                })?;
                Ok(Sealer {
                    cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                let key = ChaCha20Poly1305::generate_key(&mut OsRng);
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    options.mode(0o600);
                }
                match options.open(path) {
                    Ok(mut f) => {
                        f.write_all(&key)?;
                        f.sync_all()?;
                        Ok(Sealer {
                            cipher: ChaCha20Poly1305::new(&key),
                        })
                    }
                    // Another server made it at the same moment: use theirs.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        Sealer::from_key_file(path)
                    }
                    Err(e) => Err(e.into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// `text` sealed, as base64.
    pub fn seal(&self, text: &str) -> String {
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let payload = chacha20poly1305::aead::Payload {
            msg: text.as_bytes(),
            aad: AAD,
        };
        // Encryption with a valid key and nonce cannot fail for inputs under 256 GiB.
        let sealed = self.cipher.encrypt(&nonce, payload).unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        base64::engine::general_purpose::STANDARD.encode(out)
    }

    /// The text of a value made by [`Sealer::seal`] with this key; `None` when it is not
    /// base64, too short, made with another key, or altered.
    pub fn open(&self, value: &str) -> Option<String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .ok()?;
        if bytes.len() < 12 + 16 {
            return None;
        }
        let (nonce, sealed) = bytes.split_at(12);
        let payload = chacha20poly1305::aead::Payload {
            msg: sealed,
            aad: AAD,
        };
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), payload)
            .ok()?;
        String::from_utf8(plain).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_text_opens_with_the_same_key_only() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("key");
        let a = Sealer::from_key_file(&path).expect("made");
        let b = Sealer::from_key_file(&path).expect("read back");
        let v = a.seal("the user wants Paris's weather");
        assert_ne!(v, a.seal("the user wants Paris's weather"), "nonces differ");
        assert_eq!(
            b.open(&v).as_deref(),
            Some("the user wants Paris's weather")
        );
        assert_eq!(Sealer::ephemeral().open(&v), None);
        let mut bytes = base64::engine::general_purpose::STANDARD
            .decode(&v)
            .expect("base64");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let altered = base64::engine::general_purpose::STANDARD.encode(bytes);
        assert_eq!(a.open(&altered), None);
        assert_eq!(a.open("not base64 !"), None);
        assert_eq!(a.open("AAAA"), None);
    }

    #[test]
    fn a_key_file_of_the_wrong_size_is_an_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("key");
        std::fs::write(&path, b"short").expect("write");
        assert!(Sealer::from_key_file(&path).is_err());
    }
}

impl openai_types::response_output::SealReasoning for Sealer {
    fn seal(&self, text: &str) -> String {
        Sealer::seal(self, text)
    }
}
