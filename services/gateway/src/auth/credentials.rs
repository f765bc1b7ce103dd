//! Access key / secret key credentials.
//!
//! Credentials live in `<data_dir>/credentials.json`. A secret is never
//! stored: only a random salt and `sha256(salt || secret)`. Writes go to a
//! temporary file renamed over the old one, so a crash never leaves a torn
//! file.

use std::path::{Path, PathBuf};

use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tasklab_error::{Error, ErrorCode};

/// One stored credential (without its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    /// The public half, sent by clients as the user name of HTTP Basic auth.
    pub access_key: String,
    /// Hex salt mixed into the secret's hash.
    salt: String,
    /// Hex `sha256(salt || secret)`.
    secret_sha256: String,
    /// Creation time, seconds since the Unix epoch.
    pub created: i64,
    /// Revoked credentials never authenticate again.
    pub revoked: bool,
}

/// A freshly generated credential; the secret is shown once and never again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedCredential {
    /// The access key.
    pub access_key: String,
    /// The secret key, in clear: print it, then forget it.
    pub secret_key: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    credentials: Vec<Credential>,
}

/// The credentials file of a data directory.
#[derive(Debug, Clone)]
pub struct CredentialStore {
    path: PathBuf,
}

const ACCESS_KEY_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const SECRET_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

fn random_string(alphabet: &[u8], len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
        .collect()
}

fn hash(salt: &str, secret: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(salt.as_bytes());
    hasher.update(secret.as_bytes());
    hex::encode(hasher.finalize())
}

/// Compares two equal-length strings without an early exit.
fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl CredentialStore {
    /// The store at `<data_dir>/credentials.json` (created on first write).
    pub fn in_data_dir(data_dir: &Path) -> Self {
        CredentialStore {
            path: data_dir.join("credentials.json"),
        }
    }

    fn read(&self) -> Result<File, Error> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::internal(std::io::Error::other(format!(
                    "corrupt credentials file {}: {e}",
                    self.path.display()
                )))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(File::default()),
            Err(e) => Err(Error::internal(e)),
        }
    }

    fn write(&self, file: &File) -> Result<(), Error> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(Error::internal)?;
        }
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(file).map_err(Error::internal)?;
        std::fs::write(&tmp, bytes).map_err(Error::internal)?;
        std::fs::rename(&tmp, &self.path).map_err(Error::internal)
    }

    fn insert(&self, access_key: &str, secret_key: &str) -> Result<(), Error> {
        let mut file = self.read()?;
        let salt = random_string(SECRET_ALPHABET, 16);
        let credential = Credential {
            access_key: access_key.to_owned(),
            secret_sha256: hash(&salt, secret_key),
            salt,
            created: now(),
            revoked: false,
        };
        file.credentials.retain(|c| c.access_key != access_key);
        file.credentials.push(credential);
        self.write(&file)
    }

    /// Creates a new random credential.
    pub fn create(&self) -> Result<GeneratedCredential, Error> {
        let generated = GeneratedCredential {
            access_key: random_string(ACCESS_KEY_ALPHABET, 24),
            secret_key: random_string(SECRET_ALPHABET, 48),
        };
        self.insert(&generated.access_key, &generated.secret_key)?;
        Ok(generated)
    }

    /// Makes sure a first credential exists: the configured pair when given
    /// (stored, replacing an older secret for that key), else a generated one
    /// when the store has no usable credential. Returns the generated
    /// credential so the caller can show it once.
    pub fn ensure_first(
        &self,
        configured: Option<(&str, &str)>,
    ) -> Result<Option<GeneratedCredential>, Error> {
        match configured {
            Some((access_key, secret_key)) => {
                if access_key.is_empty() || secret_key.is_empty() {
                    return Err(Error::invalid("access and secret key must not be empty"));
                }
                if !self.verify(access_key, secret_key)? {
                    self.insert(access_key, secret_key)?;
                }
                Ok(None)
            }
            None if self.list()?.iter().any(|c| !c.revoked) => Ok(None),
            None => self.create().map(Some),
        }
    }

    /// Every credential, revoked ones included.
    pub fn list(&self) -> Result<Vec<Credential>, Error> {
        Ok(self.read()?.credentials)
    }

    /// Revokes a credential; unknown keys are an error.
    pub fn revoke(&self, access_key: &str) -> Result<(), Error> {
        let mut file = self.read()?;
        let credential = file
            .credentials
            .iter_mut()
            .find(|c| c.access_key == access_key)
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::InvalidCredentials,
                    format!("unknown access key {access_key}"),
                )
            })?;
        credential.revoked = true;
        self.write(&file)
    }

    /// True when `access_key` exists, is not revoked, and `secret_key` matches.
    pub fn verify(&self, access_key: &str, secret_key: &str) -> Result<bool, Error> {
        Ok(self.read()?.credentials.iter().any(|c| {
            !c.revoked
                && c.access_key == access_key
                && constant_time_eq(&c.secret_sha256, &hash(&c.salt, secret_key))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_credential_verifies_and_secret_is_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = CredentialStore::in_data_dir(dir.path());
        let generated = store
            .ensure_first(None)
            .unwrap()
            .expect("a first credential");
        assert!(
            store
                .verify(&generated.access_key, &generated.secret_key)
                .unwrap()
        );
        assert!(!store.verify(&generated.access_key, "wrong").unwrap());
        let raw = std::fs::read_to_string(dir.path().join("credentials.json")).unwrap();
        assert!(
            !raw.contains(&generated.secret_key),
            "secret stored in clear"
        );
        // A second start generates nothing new.
        assert_eq!(store.ensure_first(None).unwrap(), None);
        assert_eq!(store.list().unwrap().len(), 1);
    }

    #[test]
    fn configured_credential_is_stored_and_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let store = CredentialStore::in_data_dir(dir.path());
        assert_eq!(store.ensure_first(Some(("AK", "one"))).unwrap(), None);
        assert!(store.verify("AK", "one").unwrap());
        store.ensure_first(Some(("AK", "two"))).unwrap();
        assert!(store.verify("AK", "two").unwrap());
        assert!(!store.verify("AK", "one").unwrap());
        assert!(store.ensure_first(Some(("", "x"))).is_err());
    }

    #[test]
    fn revoked_credentials_never_verify() {
        let dir = tempfile::tempdir().unwrap();
        let store = CredentialStore::in_data_dir(dir.path());
        let c = store.create().unwrap();
        store.revoke(&c.access_key).unwrap();
        assert!(!store.verify(&c.access_key, &c.secret_key).unwrap());
        assert_eq!(
            store.revoke("NOPE").unwrap_err().code(),
            tasklab_error::ErrorCode::InvalidCredentials
        );
        // With only revoked credentials, a new first credential is generated.
        assert!(store.ensure_first(None).unwrap().is_some());
    }
}
