//! Secrets at rest. Webhook signing secrets and custom header values are sealed with the
//! operator's key (`--secrets-key`) before they reach the database: XChaCha20-Poly1305 with a
//! fresh random 24-byte nonce per value, and the value's place (endpoint id and field) as
//! associated data, so a sealed value copied into another row does not open.
//!
//! A sealed value reads `enc:v1:<key id>:<base64(nonce ‖ ciphertext)>`; the key id (a hash of
//! the key, never the key) says which key sealed it, so keys can be rotated: the processes
//! run with the new key plus the old ones (`--previous-secrets-keys`), `coursewire secrets
//! rotate-key` re-seals every value, then the old keys are dropped.
//!
//! The same key, through HMAC, signs page tokens (see `page.rs`), so every replica accepts
//! the others' tokens and nobody else can make one.
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

const PREFIX: &str = "enc:v1:";
const NONCE_LEN: usize = 24;
/// Where the embedded default keeps its generated key, beside the SQLite database.
pub const KEY_FILE: &str = "secrets.key";

struct Key {
    id: String,
    cipher: XChaCha20Poly1305,
    bytes: [u8; 32],
}

impl Key {
    fn new(bytes: [u8; 32]) -> Key {
        let digest = Sha256::new().chain_update(b"coursewire secrets key id\0").chain_update(bytes).finalize();
        Key { id: hex::encode(&digest[..4]), cipher: XChaCha20Poly1305::new(&bytes.into()), bytes }
    }
}

/// The operator's keys: the primary seals, every key opens what it sealed.
pub struct Keyring {
    primary: Key,
    previous: Vec<Key>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keyring(primary {}, {} previous)", self.primary.id, self.previous.len())
    }
}

/// A stored value that does not open: sealed with a key we do not hold, or altered.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("sealed with key {0}, which this process does not hold (see --previous-secrets-keys)")]
    UnknownKey(String),
    #[error("the sealed value is damaged or was moved from another row")]
    Damaged,
}

/// Parses a key given as base64 of exactly 32 bytes; `flag` names where it came from.
pub fn parse_key(text: &str, flag: &str) -> anyhow::Result<[u8; 32]> {
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|_| anyhow::anyhow!("{flag}: not base64; make one with `openssl rand -base64 32`"))?;
    bytes.try_into().map_err(|b: Vec<u8>| {
        anyhow::anyhow!("{flag}: must be 32 bytes (base64 of 32 random bytes), got {} bytes", b.len())
    })
}

impl Keyring {
    pub fn new(primary: [u8; 32], previous: Vec<[u8; 32]>) -> Keyring {
        Keyring { primary: Key::new(primary), previous: previous.into_iter().map(Key::new).collect() }
    }

    /// A keyring with a fresh random key (tests).
    pub fn random() -> Keyring {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        Keyring::new(key, Vec::new())
    }

    /// The keys for a database: `--secrets-key` when given; otherwise, for SQLite, a key file
    /// next to the database, generated (mode 0600) on first start. Postgres needs the flag:
    /// a generated key on one host would not open values sealed by the API on another.
    pub fn for_database(database_url: &str, key: Option<&str>, previous: &[String]) -> anyhow::Result<Keyring> {
        let previous = previous
            .iter()
            .filter(|k| !k.trim().is_empty())
            .map(|k| parse_key(k, "--previous-secrets-keys"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        if let Some(key) = key.filter(|k| !k.trim().is_empty()) {
            return Ok(Keyring::new(parse_key(key, "--secrets-key")?, previous));
        }
        let Some(path) = crate::store::sqlite_path(database_url) else {
            anyhow::bail!(
                "--secrets-key (COURSEWIRE_SECRETS_KEY) is required with Postgres: webhook secrets and header values \
                 are encrypted with it. Make one with `openssl rand -base64 32` and give every API and dispatcher \
                 process the same key"
            );
        };
        let dir = Path::new(&path).parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        Ok(Keyring::new(load_or_create(&dir.join(KEY_FILE))?, previous))
    }

    /// Seals `plaintext` for the place `context` (e.g. `wh_…/secret`).
    pub fn seal(&self, plaintext: &str, context: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let payload = Payload { msg: plaintext.as_bytes(), aad: context.as_bytes() };
        let sealed = self
            .primary
            .cipher
            .encrypt(&XNonce::from(nonce), payload)
            .expect("XChaCha20-Poly1305 seals messages of any size we store");
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&sealed);
        format!("{PREFIX}{}:{}", self.primary.id, STANDARD.encode(bytes))
    }

    /// Opens a stored value. A value without the `enc:` prefix was written before encryption
    /// existed; it is returned as it is (`seal_legacy` re-seals those at start).
    pub fn open(&self, stored: &str, context: &str) -> Result<String, OpenError> {
        let Some(rest) = stored.strip_prefix(PREFIX) else {
            return Ok(stored.to_string());
        };
        let (id, data) = rest.split_once(':').ok_or(OpenError::Damaged)?;
        let key = std::iter::once(&self.primary)
            .chain(&self.previous)
            .find(|k| k.id == id)
            .ok_or_else(|| OpenError::UnknownKey(id.to_string()))?;
        let bytes = STANDARD.decode(data).map_err(|_| OpenError::Damaged)?;
        if bytes.len() < NONCE_LEN {
            return Err(OpenError::Damaged);
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| OpenError::Damaged)?;
        let plain = key
            .cipher
            .decrypt(&XNonce::from(nonce), Payload { msg: sealed, aad: context.as_bytes() })
            .map_err(|_| OpenError::Damaged)?;
        String::from_utf8(plain).map_err(|_| OpenError::Damaged)
    }

    /// True when `stored` is sealed with the primary key (nothing to rotate).
    pub fn is_current(&self, stored: &str) -> bool {
        stored.strip_prefix(PREFIX).and_then(|r| r.split_once(':')).is_some_and(|(id, _)| id == self.primary.id)
    }

    /// The primary key's id (safe to print).
    pub fn primary_id(&self) -> &str {
        &self.primary.id
    }

    /// A key derived from the primary key for one `purpose` (e.g. signing page tokens), so
    /// the primary key itself is only ever used to seal.
    pub fn subkey(&self, purpose: &str) -> [u8; 32] {
        let mut derive = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.primary.bytes).expect("any key length");
        derive.update(purpose.as_bytes());
        derive.finalize().into_bytes().into()
    }
}

/// Reads the key file, or creates it with a new random key, readable by its owner only.
fn load_or_create(path: &Path) -> anyhow::Result<[u8; 32]> {
    if let Ok(text) = std::fs::read_to_string(path) {
        return parse_key(&text, &format!("the key file {}", path.display()));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(mut file) => {
            writeln!(file, "{}", STANDARD.encode(key)).with_context(|| format!("writing {}", path.display()))?;
            tracing::info!(path = %path.display(), "generated the secrets key for this data directory");
            Ok(key)
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            parse_key(&text, &format!("the key file {}", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("creating the secrets key file {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_only_in_place() {
        let ring = Keyring::random();
        let a = ring.seal("whsec_abc", "wh_1/secret");
        let b = ring.seal("whsec_abc", "wh_1/secret");
        assert_ne!(a, b, "a fresh nonce per value");
        assert!(a.starts_with("enc:v1:") && !a.contains("whsec_"));
        assert_eq!(ring.open(&a, "wh_1/secret").unwrap(), "whsec_abc");
        assert!(matches!(ring.open(&a, "wh_2/secret"), Err(OpenError::Damaged)), "bound to its place");
        let mut tampered = a.clone();
        tampered.pop();
        tampered.push(if a.ends_with('A') { 'B' } else { 'A' });
        assert!(ring.open(&tampered, "wh_1/secret").is_err());
        assert_eq!(ring.open("legacy plain", "x").unwrap(), "legacy plain");
    }

    #[test]
    fn rotation_opens_old_values_and_seals_with_the_new_key() {
        let old = Keyring::new([1; 32], vec![]);
        let sealed = old.seal("v", "c");
        let other = Keyring::new([2; 32], vec![]);
        assert!(matches!(other.open(&sealed, "c"), Err(OpenError::UnknownKey(_))));
        let rotated = Keyring::new([2; 32], vec![[1; 32]]);
        assert_eq!(rotated.open(&sealed, "c").unwrap(), "v");
        assert!(!rotated.is_current(&sealed));
        assert!(rotated.is_current(&rotated.seal("v", "c")));
    }

    #[test]
    fn keys_are_32_bytes_of_base64() {
        assert!(parse_key(&STANDARD.encode([7u8; 32]), "--secrets-key").is_ok());
        let short = parse_key(&STANDARD.encode([7u8; 16]), "--secrets-key").unwrap_err().to_string();
        assert!(short.contains("--secrets-key") && short.contains("32 bytes"));
        assert!(parse_key("not base64!", "--secrets-key").is_err());
    }

    #[test]
    fn the_embedded_key_file_is_created_once_and_private() {
        let dir = tempfile_dir();
        let url = format!("sqlite:{}/db/cw.db", dir.display());
        let first = Keyring::for_database(&url, None, &[]).unwrap();
        let again = Keyring::for_database(&url, None, &[]).unwrap();
        assert_eq!(first.primary_id(), again.primary_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join("db").join(KEY_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let err = Keyring::for_database("postgres://db/cw", None, &[]).unwrap_err().to_string();
        assert!(err.contains("--secrets-key"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("cw-secrets-{}", crate::ids::new_id("t")));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
