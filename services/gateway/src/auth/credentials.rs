//! Access key / secret key credentials.
//!
//! A secret is never stored: only a random salt and `sha256(salt || secret)`.
//! Two backends hold the records:
//!
//! * a file, `<data_dir>/credentials.json` (embedded mode, one process).
//!   Writes go to a temporary file renamed over the old one, so a crash never
//!   leaves a torn file;
//! * Redis (when `redis_url` is set, several gateway replicas): the hash
//!   [`REDIS_KEY`] maps each access key to the JSON of its [`Credential`],
//!   so every replica sees every credential and revocation at once.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::Rng;
use redis::AsyncCommands as _;
use redis::aio::ConnectionManager;
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

/// The Redis hash holding the credentials (access key → JSON record).
pub const REDIS_KEY: &str = "tasklab:credentials";

/// Where credentials live: a data directory's file, or a Redis hash.
#[derive(Debug, Clone)]
pub enum CredentialStore {
    /// `<data_dir>/credentials.json`.
    File(FileStore),
    /// A Redis hash shared by every gateway replica.
    Redis(RedisStore),
}

/// The credentials file of a data directory.
#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
}

/// The credentials hash of a Redis server; connects on first use (the
/// connection manager reconnects behind it).
#[derive(Clone)]
pub struct RedisStore {
    client: redis::Client,
    key: String,
    conn: Arc<tokio::sync::OnceCell<ConnectionManager>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
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

/// Compares two secrets in constant time (of their digests, so the length
/// of neither leaks).
pub(super) fn same_secret(a: &str, b: &str) -> bool {
    constant_time_eq(&hash("", a), &hash("", b))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn redis_error(err: redis::RedisError) -> Error {
    Error::unavailable("redis", err)
}

fn unknown_key(access_key: &str) -> Error {
    Error::new(
        ErrorCode::InvalidCredentials,
        format!("unknown access key {access_key}"),
    )
}

fn new_record(access_key: &str, secret_key: &str) -> Credential {
    let salt = random_string(SECRET_ALPHABET, 16);
    Credential {
        access_key: access_key.to_owned(),
        secret_sha256: hash(&salt, secret_key),
        salt,
        created: now(),
        revoked: false,
    }
}

impl Credential {
    /// True when not revoked and `secret_key` matches.
    fn accepts(&self, secret_key: &str) -> bool {
        !self.revoked && constant_time_eq(&self.secret_sha256, &hash(&self.salt, secret_key))
    }
}

impl FileStore {
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

    fn insert(&self, credential: Credential) -> Result<(), Error> {
        let mut file = self.read()?;
        file.credentials
            .retain(|c| c.access_key != credential.access_key);
        file.credentials.push(credential);
        self.write(&file)
    }

    /// Every credential, revoked ones included.
    pub(crate) fn list(&self) -> Result<Vec<Credential>, Error> {
        Ok(self.read()?.credentials)
    }

    fn get(&self, access_key: &str) -> Result<Option<Credential>, Error> {
        Ok(self
            .read()?
            .credentials
            .into_iter()
            .find(|c| c.access_key == access_key))
    }

    fn revoke(&self, access_key: &str) -> Result<(), Error> {
        let mut file = self.read()?;
        let credential = file
            .credentials
            .iter_mut()
            .find(|c| c.access_key == access_key)
            .ok_or_else(|| unknown_key(access_key))?;
        credential.revoked = true;
        self.write(&file)
    }

    /// Modification time and size of the file, `None` when absent: a
    /// revocation rewrites the file, and changes its size even within one
    /// tick of a coarse clock.
    pub(crate) fn stamp(&self) -> Option<(std::time::SystemTime, u64)> {
        std::fs::metadata(&self.path)
            .and_then(|m| Ok((m.modified()?, m.len())))
            .ok()
    }
}

impl RedisStore {
    async fn conn(&self) -> Result<ConnectionManager, Error> {
        self.conn
            .get_or_try_init(|| self.client.get_connection_manager())
            .await
            .cloned()
            .map_err(redis_error)
    }

    fn parse(&self, access_key: &str, json: &str) -> Result<Credential, Error> {
        serde_json::from_str(json).map_err(|e| {
            Error::internal(std::io::Error::other(format!(
                "corrupt credential {access_key} in redis hash {}: {e}",
                self.key
            )))
        })
    }

    async fn insert(&self, credential: &Credential) -> Result<(), Error> {
        let json = serde_json::to_string(credential).map_err(Error::internal)?;
        self.conn()
            .await?
            .hset::<_, _, _, ()>(&self.key, &credential.access_key, json)
            .await
            .map_err(redis_error)
    }

    /// Stores `credential` unless its access key has a record; true when
    /// stored (atomic across replicas: `HSETNX`).
    async fn insert_absent(&self, credential: &Credential) -> Result<bool, Error> {
        let json = serde_json::to_string(credential).map_err(Error::internal)?;
        self.conn()
            .await?
            .hset_nx(&self.key, &credential.access_key, json)
            .await
            .map_err(redis_error)
    }

    async fn get(&self, access_key: &str) -> Result<Option<Credential>, Error> {
        let json: Option<String> = self
            .conn()
            .await?
            .hget(&self.key, access_key)
            .await
            .map_err(redis_error)?;
        json.map(|j| self.parse(access_key, &j)).transpose()
    }

    async fn list(&self) -> Result<Vec<Credential>, Error> {
        let all: Vec<(String, String)> = self
            .conn()
            .await?
            .hgetall(&self.key)
            .await
            .map_err(redis_error)?;
        let mut credentials = all
            .iter()
            .map(|(k, j)| self.parse(k, j))
            .collect::<Result<Vec<_>, _>>()?;
        credentials.sort_by(|a, b| (a.created, &a.access_key).cmp(&(b.created, &b.access_key)));
        Ok(credentials)
    }

    async fn revoke(&self, access_key: &str) -> Result<(), Error> {
        let mut credential = self
            .get(access_key)
            .await?
            .ok_or_else(|| unknown_key(access_key))?;
        credential.revoked = true;
        self.insert(&credential).await
    }
}

impl CredentialStore {
    /// The store at `<data_dir>/credentials.json` (created on first write).
    pub fn in_data_dir(data_dir: &Path) -> Self {
        CredentialStore::File(FileStore {
            path: data_dir.join("credentials.json"),
        })
    }

    /// The store in the Redis hash [`REDIS_KEY`] at `url`.
    pub fn redis(url: &str) -> Result<Self, Error> {
        Self::redis_with_key(url, REDIS_KEY)
    }

    /// The store in the Redis hash `key` at `url` (tests use their own key).
    /// Connects on first use.
    pub fn redis_with_key(url: &str, key: &str) -> Result<Self, Error> {
        let client = redis::Client::open(url).map_err(redis_error)?;
        Ok(CredentialStore::Redis(RedisStore {
            client,
            key: key.to_owned(),
            conn: Arc::new(tokio::sync::OnceCell::new()),
        }))
    }

    /// The Redis store when `redis_url` is set, else the data directory's file.
    pub fn for_settings(redis_url: Option<&str>, data_dir: &Path) -> Result<Self, Error> {
        match redis_url.filter(|u| !u.is_empty()) {
            Some(url) => Self::redis(url),
            None => Ok(Self::in_data_dir(data_dir)),
        }
    }

    async fn insert(&self, access_key: &str, secret_key: &str) -> Result<(), Error> {
        let credential = new_record(access_key, secret_key);
        match self {
            CredentialStore::File(f) => f.insert(credential),
            CredentialStore::Redis(r) => r.insert(&credential).await,
        }
    }

    /// The credential of `access_key`, revoked or not.
    pub async fn get(&self, access_key: &str) -> Result<Option<Credential>, Error> {
        match self {
            CredentialStore::File(f) => f.get(access_key),
            CredentialStore::Redis(r) => r.get(access_key).await,
        }
    }

    /// Creates a new random credential.
    pub async fn create(&self) -> Result<GeneratedCredential, Error> {
        let generated = GeneratedCredential {
            access_key: random_string(ACCESS_KEY_ALPHABET, 24),
            secret_key: random_string(SECRET_ALPHABET, 48),
        };
        self.insert(&generated.access_key, &generated.secret_key)
            .await?;
        Ok(generated)
    }

    /// Makes sure a first credential exists: the configured pair when given
    /// (stored, replacing an older secret for that key), else a generated one
    /// when the store has no usable credential. Returns the generated
    /// credential so the caller can show it once.
    pub async fn ensure_first(
        &self,
        configured: Option<(&str, &str)>,
    ) -> Result<Option<GeneratedCredential>, Error> {
        match configured {
            Some((access_key, secret_key)) => {
                if access_key.is_empty() || secret_key.is_empty() {
                    return Err(Error::invalid("access and secret key must not be empty"));
                }
                if !self.verify(access_key, secret_key).await? {
                    self.insert(access_key, secret_key).await?;
                }
                Ok(None)
            }
            None if self.list().await?.iter().any(|c| !c.revoked) => Ok(None),
            None => self.create().await.map(Some),
        }
    }

    /// Stores the pair only when `access_key` has no record at all (not
    /// even a revoked one): how a configured credential comes back after
    /// its store lost it (a Redis that restarted empty), without undoing a
    /// revocation. True when it was stored.
    pub async fn restore(&self, access_key: &str, secret_key: &str) -> Result<bool, Error> {
        let credential = new_record(access_key, secret_key);
        match self {
            CredentialStore::File(f) => {
                if f.get(access_key)?.is_some() {
                    return Ok(false);
                }
                f.insert(credential).map(|()| true)
            }
            CredentialStore::Redis(r) => r.insert_absent(&credential).await,
        }
    }

    /// Every credential, revoked ones included.
    pub async fn list(&self) -> Result<Vec<Credential>, Error> {
        match self {
            CredentialStore::File(f) => f.list(),
            CredentialStore::Redis(r) => r.list().await,
        }
    }

    /// Revokes a credential; unknown keys are an error.
    pub async fn revoke(&self, access_key: &str) -> Result<(), Error> {
        match self {
            CredentialStore::File(f) => f.revoke(access_key),
            CredentialStore::Redis(r) => r.revoke(access_key).await,
        }
    }

    /// True when `access_key` exists, is not revoked, and `secret_key` matches.
    pub async fn verify(&self, access_key: &str, secret_key: &str) -> Result<bool, Error> {
        Ok(self
            .get(access_key)
            .await?
            .is_some_and(|c| c.accepts(secret_key)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REDIS_ENV: &str = "TASKLAB_TEST_REDIS_URL";

    /// A Redis store on a hash of its own, or `None` (skipped) without Redis.
    fn redis_store(test: &str) -> Option<(String, CredentialStore)> {
        let url = tasklab_db::testing::require_env(REDIS_ENV, "Redis", test)?;
        let key = format!("tasklab:test:credentials:{test}:{}", uuid::Uuid::new_v4());
        let store = CredentialStore::redis_with_key(&url, &key).unwrap();
        Some((key, store))
    }

    /// Everything stored, as raw text: the file, or the Redis hash.
    async fn raw(store: &CredentialStore) -> String {
        match store {
            CredentialStore::File(f) => std::fs::read_to_string(&f.path).unwrap(),
            CredentialStore::Redis(r) => {
                let all: Vec<(String, String)> =
                    r.conn().await.unwrap().hgetall(&r.key).await.unwrap();
                format!("{all:?}")
            }
        }
    }

    async fn cleanup(store: &CredentialStore) {
        if let CredentialStore::Redis(r) = store {
            r.conn().await.unwrap().del::<_, ()>(&r.key).await.unwrap();
        }
    }

    async fn generated_credential_verifies(store: &CredentialStore) {
        let generated = store
            .ensure_first(None)
            .await
            .unwrap()
            .expect("a first credential");
        assert!(
            store
                .verify(&generated.access_key, &generated.secret_key)
                .await
                .unwrap()
        );
        assert!(!store.verify(&generated.access_key, "wrong").await.unwrap());
        assert!(!store.verify("NOPE", &generated.secret_key).await.unwrap());
        let raw = raw(store).await;
        assert!(raw.contains(&generated.access_key));
        assert!(
            !raw.contains(&generated.secret_key),
            "secret stored in clear"
        );
        // A second start generates nothing new.
        assert_eq!(store.ensure_first(None).await.unwrap(), None);
        assert_eq!(store.list().await.unwrap().len(), 1);
    }

    async fn configured_credential_rotates(store: &CredentialStore) {
        assert_eq!(store.ensure_first(Some(("AK", "one"))).await.unwrap(), None);
        assert!(store.verify("AK", "one").await.unwrap());
        store.ensure_first(Some(("AK", "two"))).await.unwrap();
        assert!(store.verify("AK", "two").await.unwrap());
        assert!(!store.verify("AK", "one").await.unwrap());
        assert!(store.ensure_first(Some(("", "x"))).await.is_err());
        assert_eq!(store.list().await.unwrap().len(), 1);
    }

    async fn revoked_never_verify(store: &CredentialStore) {
        let c = store.create().await.unwrap();
        store.revoke(&c.access_key).await.unwrap();
        assert!(!store.verify(&c.access_key, &c.secret_key).await.unwrap());
        assert!(store.list().await.unwrap()[0].revoked);
        assert_eq!(
            store.revoke("NOPE").await.unwrap_err().code(),
            tasklab_error::ErrorCode::InvalidCredentials
        );
        // With only revoked credentials, a new first credential is generated.
        assert!(store.ensure_first(None).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn generated_credential_verifies_and_secret_is_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        generated_credential_verifies(&CredentialStore::in_data_dir(dir.path())).await;
    }

    #[tokio::test]
    async fn configured_credential_is_stored_and_rotates() {
        let dir = tempfile::tempdir().unwrap();
        configured_credential_rotates(&CredentialStore::in_data_dir(dir.path())).await;
    }

    #[tokio::test]
    async fn revoked_credentials_never_verify() {
        let dir = tempfile::tempdir().unwrap();
        revoked_never_verify(&CredentialStore::in_data_dir(dir.path())).await;
    }

    #[tokio::test]
    async fn redis_generated_credential_verifies_and_secret_is_not_stored() {
        let Some((_, store)) = redis_store("redis_generated_credential") else {
            return;
        };
        generated_credential_verifies(&store).await;
        cleanup(&store).await;
    }

    #[tokio::test]
    async fn redis_configured_credential_is_stored_and_rotates() {
        let Some((_, store)) = redis_store("redis_configured_credential") else {
            return;
        };
        configured_credential_rotates(&store).await;
        cleanup(&store).await;
    }

    #[tokio::test]
    async fn redis_revoked_credentials_never_verify() {
        let Some((_, store)) = redis_store("redis_revoked_credentials") else {
            return;
        };
        revoked_never_verify(&store).await;
        cleanup(&store).await;
    }

    #[tokio::test]
    async fn redis_stores_share_credentials_between_replicas() {
        let Some((key, one)) = redis_store("redis_stores_share_credentials") else {
            return;
        };
        let url = std::env::var(REDIS_ENV).unwrap();
        let two = CredentialStore::redis_with_key(&url, &key).unwrap();
        let c = one.create().await.unwrap();
        assert!(two.verify(&c.access_key, &c.secret_key).await.unwrap());
        assert_eq!(two.list().await.unwrap().len(), 1);
        // The second replica sees a credential: it generates none.
        assert_eq!(two.ensure_first(None).await.unwrap(), None);
        one.revoke(&c.access_key).await.unwrap();
        assert!(!two.verify(&c.access_key, &c.secret_key).await.unwrap());
        let d = two.create().await.unwrap();
        assert!(one.verify(&d.access_key, &d.secret_key).await.unwrap());
        cleanup(&one).await;
    }
}
