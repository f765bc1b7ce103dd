//! Authentication: access/secret key credentials (stored hashed) and the
//! tokens issued for them.
//!
//! * `auth.login` with HTTP Basic `access_key:secret_key` returns a signed
//!   token ([`token`]); every other call presents it as `Bearer`.
//! * Basic credentials are also accepted on any call (ClearML's server does
//!   the same), and on the public gRPC API (`authorization` metadata).
//! * A token names its access key; a revoked credential's tokens stop
//!   working at once (the credentials file is re-read when it changes; with
//!   Redis every check reads the shared hash, so a revocation on one replica
//!   applies on all).
//! * The signing secret is `auth.token_secret`, else a random secret
//!   generated once into `<data_dir>/token_secret` (mode 0600).

mod credentials;
pub mod token;

use std::path::Path;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
pub use credentials::{
    Credential, CredentialStore, FileStore, GeneratedCredential, REDIS_KEY, RedisStore,
};
use futures::future::BoxFuture;
use tasklab_error::{Error, ErrorCode};
pub use token::{Claims, Identity, TokenSigner};

/// File name of the generated token secret in the data directory.
pub const TOKEN_SECRET_FILE: &str = "token_secret";

/// Shortest token lifetime a client may ask for.
pub const MIN_TOKEN_TTL_SECS: i64 = 1;

/// Seconds since the Unix epoch.
pub(crate) fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Reads the token secret from `<data_dir>/token_secret`, creating it with
/// 32 random bytes (hex, mode 0600) on first start.
pub fn load_or_create_secret(data_dir: &Path) -> Result<Vec<u8>, Error> {
    let path = data_dir.join(TOKEN_SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().as_bytes().to_vec()),
        Ok(_) => {
            return Err(Error::internal(std::io::Error::other(format!(
                "token secret file {} is empty",
                path.display()
            ))));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::internal(e)),
    }
    std::fs::create_dir_all(data_dir).map_err(Error::internal)?;
    let secret: [u8; 32] = rand::random();
    let text = hex::encode(secret);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    match options.open(&path) {
        Ok(mut file) => {
            use std::io::Write as _;
            file.write_all(text.as_bytes()).map_err(Error::internal)?;
            file.sync_all().map_err(Error::internal)?;
            tracing::info!(path = %path.display(), "generated the token signing secret");
            Ok(text.into_bytes())
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let text = std::fs::read_to_string(&path).map_err(Error::internal)?;
            Ok(text.trim().as_bytes().to_vec())
        }
        Err(e) => Err(Error::internal(e)),
    }
}

/// Credentials presented by a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented {
    /// `Bearer <token>`.
    Bearer(String),
    /// `Basic base64(access_key:secret_key)`.
    Basic {
        /// The access key.
        access_key: String,
        /// The secret key.
        secret_key: String,
    },
}

impl Presented {
    /// Parses an `Authorization` header value. `None` for a missing or
    /// empty header; an unknown scheme or bad encoding is `invalid_credentials`.
    pub fn parse(header: Option<&str>) -> Result<Option<Presented>, Error> {
        let Some(header) = header.map(str::trim).filter(|h| !h.is_empty()) else {
            return Ok(None);
        };
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            if rest.is_empty() {
                return Ok(None);
            }
            return Ok(Some(Presented::Bearer(rest.to_owned())));
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = STANDARD
                .decode(rest)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or_else(|| {
                    Error::new(
                        ErrorCode::InvalidCredentials,
                        "malformed basic authorization",
                    )
                })?;
            let (access_key, secret_key) = decoded.split_once(':').ok_or_else(|| {
                Error::new(
                    ErrorCode::InvalidCredentials,
                    "malformed basic authorization",
                )
            })?;
            return Ok(Some(Presented::Basic {
                access_key: access_key.to_owned(),
                secret_key: secret_key.to_owned(),
            }));
        }
        Err(Error::new(
            ErrorCode::InvalidCredentials,
            format!("unsupported authorization scheme {scheme:?}"),
        ))
    }
}

/// Active access keys, re-read when the credentials file changes.
#[derive(Debug, Default)]
struct ActiveKeys {
    stamp: Option<(std::time::SystemTime, u64)>,
    keys: Vec<String>,
}

/// Checks credentials and tokens, and issues tokens.
#[derive(Debug, Clone)]
pub struct Authenticator {
    store: CredentialStore,
    signer: TokenSigner,
    max_ttl_secs: i64,
    active: Arc<Mutex<ActiveKeys>>,
    /// The configured first credential (settings `auth.access_key` /
    /// `auth.secret_key`), restored into the store when it has lost it.
    configured: Option<(String, String)>,
}

impl Authenticator {
    /// An authenticator over the credentials file of `data_dir`, signing
    /// with `secret`; tokens live at most `max_ttl_secs`.
    pub fn new(data_dir: &Path, secret: &[u8], max_ttl_secs: u64) -> Authenticator {
        Self::with_store(CredentialStore::in_data_dir(data_dir), secret, max_ttl_secs)
    }

    /// An authenticator over `store`, signing with `secret`; tokens live at
    /// most `max_ttl_secs`.
    pub fn with_store(store: CredentialStore, secret: &[u8], max_ttl_secs: u64) -> Authenticator {
        Authenticator {
            store,
            signer: TokenSigner::new(secret),
            max_ttl_secs: i64::try_from(max_ttl_secs)
                .unwrap_or(i64::MAX)
                .max(MIN_TOKEN_TTL_SECS),
            active: Arc::new(Mutex::new(ActiveKeys::default())),
            configured: None,
        }
    }

    /// Remembers the configured first credential, so that a store that lost
    /// it (a Redis restarted empty while the gateway runs) gets it back on
    /// its next use instead of refusing every client until a restart.
    /// A revoked record stays revoked: only a missing one is restored.
    #[must_use]
    pub fn with_configured(mut self, access_key: &str, secret_key: &str) -> Authenticator {
        if !access_key.is_empty() && !secret_key.is_empty() {
            self.configured = Some((access_key.to_owned(), secret_key.to_owned()));
        }
        self
    }

    /// Restores the configured credential when `access_key` names it and
    /// the store has no record of it; `secret_key`, when given, must match.
    async fn restore_configured(
        &self,
        access_key: &str,
        secret_key: Option<&str>,
    ) -> Result<bool, Error> {
        let Some((key, secret)) = &self.configured else {
            return Ok(false);
        };
        if key != access_key || secret_key.is_some_and(|s| !credentials::same_secret(s, secret)) {
            return Ok(false);
        }
        let restored = self.store.restore(key, secret).await?;
        if restored {
            tracing::warn!(access_key = %key, "configured credential was missing from the store: restored");
        }
        Ok(restored)
    }

    /// The longest lifetime of an issued token.
    pub fn max_ttl_secs(&self) -> i64 {
        self.max_ttl_secs
    }

    /// Verifies an access/secret key pair.
    pub async fn check_credentials(
        &self,
        access_key: &str,
        secret_key: &str,
    ) -> Result<Identity, Error> {
        if self.store.verify(access_key, secret_key).await?
            || self
                .restore_configured(access_key, Some(secret_key))
                .await?
        {
            Ok(Identity::for_access_key(access_key))
        } else {
            Err(Error::new(
                ErrorCode::InvalidCredentials,
                "invalid access key or secret key",
            ))
        }
    }

    async fn is_active(&self, access_key: &str) -> Result<bool, Error> {
        let file = match &self.store {
            CredentialStore::File(file) => file,
            // Shared with other replicas: always ask.
            CredentialStore::Redis(_) => {
                return match self.store.get(access_key).await? {
                    Some(c) => Ok(!c.revoked),
                    None => self.restore_configured(access_key, None).await,
                };
            }
        };
        let stamp = file.stamp();
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        if active.stamp.is_none() || active.stamp != stamp {
            active.keys = file
                .list()?
                .into_iter()
                .filter(|c| !c.revoked)
                .map(|c| c.access_key)
                .collect();
            active.stamp = stamp;
        }
        Ok(active.keys.iter().any(|k| k == access_key))
    }

    /// Verifies a token: signature, expiry, and that its credential is not
    /// revoked.
    pub async fn check_token(&self, token: &str) -> Result<Claims, Error> {
        let claims = self.signer.verify(token, now_secs())?;
        if !self.is_active(&claims.identity.user).await? {
            return Err(Error::new(
                ErrorCode::InvalidToken,
                "the token's credential was revoked",
            ));
        }
        Ok(claims)
    }

    /// Authenticates a call: a token or a key pair; nothing is `missing_credentials`.
    pub async fn authenticate(&self, presented: Option<&Presented>) -> Result<Identity, Error> {
        match presented {
            None => Err(Error::new(
                ErrorCode::MissingCredentials,
                "missing authorization: send a Bearer token or Basic credentials",
            )),
            Some(Presented::Bearer(token)) => Ok(self.check_token(token).await?.identity),
            Some(Presented::Basic {
                access_key,
                secret_key,
            }) => self.check_credentials(access_key, secret_key).await,
        }
    }

    /// Authenticates an `Authorization` header value.
    pub async fn authenticate_header(&self, header: Option<&str>) -> Result<Identity, Error> {
        let presented = Presented::parse(header)?;
        self.authenticate(presented.as_ref()).await
    }

    /// Issues a token for `identity`, valid for `ttl_secs` (clamped to
    /// `[1, max]`; `None` means the maximum).
    pub fn issue(&self, identity: Identity, ttl_secs: Option<i64>) -> String {
        let ttl = ttl_secs
            .unwrap_or(self.max_ttl_secs)
            .clamp(MIN_TOKEN_TTL_SECS, self.max_ttl_secs);
        self.signer.sign(&Claims::new(identity, now_secs(), ttl))
    }

    /// A validator for other HTTP surfaces (the files server): takes the
    /// `Authorization` header value and returns the caller.
    pub fn validator(&self) -> TokenValidator {
        let auth = self.clone();
        Arc::new(move |header: Option<String>| {
            let auth = auth.clone();
            Box::pin(async move { auth.authenticate_header(header.as_deref()).await })
        })
    }
}

/// Authenticates an `Authorization` header value (Bearer token or Basic key
/// pair); errors are `missing_credentials`, `invalid_credentials` or
/// `invalid_token`.
pub type TokenValidator =
    Arc<dyn Fn(Option<String>) -> BoxFuture<'static, Result<Identity, Error>> + Send + Sync>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_generated_once_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create_secret(dir.path()).unwrap();
        let second = load_or_create_secret(dir.path()).unwrap();
        assert_eq!(first, second);
        assert_eq!(first.len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join(TOKEN_SECRET_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[tokio::test]
    async fn login_token_and_revocation() {
        let dir = tempfile::tempdir().unwrap();
        let store = CredentialStore::in_data_dir(dir.path());
        let cred = store.create().await.unwrap();
        let auth = Authenticator::new(dir.path(), b"s", 3600);
        let basic = format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", cred.access_key, cred.secret_key))
        );
        let identity = auth.authenticate_header(Some(&basic)).await.unwrap();
        assert_eq!(identity.user, cred.access_key);
        let token = auth.issue(identity, Some(60));
        let bearer = format!("Bearer {token}");
        assert!(auth.authenticate_header(Some(&bearer)).await.is_ok());

        let code = |r: Result<Identity, Error>| r.unwrap_err().code();
        assert_eq!(
            code(auth.authenticate_header(None).await),
            ErrorCode::MissingCredentials
        );
        let wrong = format!(
            "Basic {}",
            STANDARD.encode(format!("{}:nope", cred.access_key))
        );
        assert_eq!(
            code(auth.authenticate_header(Some(&wrong)).await),
            ErrorCode::InvalidCredentials
        );
        assert_eq!(
            code(auth.authenticate_header(Some("Bearer x.y.z")).await),
            ErrorCode::InvalidToken
        );
        assert_eq!(
            code(auth.authenticate_header(Some("Digest abc")).await),
            ErrorCode::InvalidCredentials
        );

        // Revoking the credential invalidates its tokens.
        store.revoke(&cred.access_key).await.unwrap();
        assert_eq!(
            code(auth.authenticate_header(Some(&bearer)).await),
            ErrorCode::InvalidToken
        );
    }
    /// A Redis that restarted empty under a running gateway: the configured
    /// credential comes back on its next use (login and tokens), a revoked
    /// one stays revoked, and no other key is let in.
    #[tokio::test]
    async fn configured_credential_survives_an_emptied_redis() {
        use redis::AsyncCommands as _;
        let Some(url) = tasklab_db::testing::require_env(
            "TASKLAB_TEST_REDIS_URL",
            "Redis",
            "configured_credential_survives_an_emptied_redis",
        ) else {
            return;
        };
        let key = format!("tasklab:test:credentials:restore:{}", uuid::Uuid::new_v4());
        let store = CredentialStore::redis_with_key(&url, &key).unwrap();
        store
            .ensure_first(Some(("AK", "first-secret")))
            .await
            .unwrap();
        let other = store.create().await.unwrap();
        let auth = Authenticator::with_store(store.clone(), b"s", 3600)
            .with_configured("AK", "first-secret");
        let basic = |a: &str, s: &str| format!("Basic {}", STANDARD.encode(format!("{a}:{s}")));
        let identity = auth
            .authenticate_header(Some(&basic("AK", "first-secret")))
            .await
            .unwrap();
        let bearer = format!("Bearer {}", auth.issue(identity, Some(60)));
        let other_bearer = format!(
            "Bearer {}",
            auth.issue(Identity::for_access_key(&other.access_key), Some(60))
        );

        // Redis loses everything.
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        conn.del::<_, ()>(&key).await.unwrap();

        // A token of the configured key is still good, and restores it.
        assert!(auth.authenticate_header(Some(&bearer)).await.is_ok());
        assert!(store.verify("AK", "first-secret").await.unwrap());
        conn.del::<_, ()>(&key).await.unwrap();
        // So is a login with the configured pair; a wrong secret is not.
        let code = |r: Result<Identity, Error>| r.unwrap_err().code();
        assert_eq!(
            code(auth.authenticate_header(Some(&basic("AK", "wrong"))).await),
            ErrorCode::InvalidCredentials
        );
        assert!(store.get("AK").await.unwrap().is_none());
        assert!(
            auth.authenticate_header(Some(&basic("AK", "first-secret")))
                .await
                .is_ok()
        );
        // A credential that was not configured is gone for good.
        assert_eq!(
            code(auth.authenticate_header(Some(&other_bearer)).await),
            ErrorCode::InvalidToken
        );
        assert_eq!(
            code(
                auth.authenticate_header(Some(&basic(&other.access_key, &other.secret_key)))
                    .await
            ),
            ErrorCode::InvalidCredentials
        );
        // A revoked configured credential is not brought back.
        store.revoke("AK").await.unwrap();
        assert_eq!(
            code(auth.authenticate_header(Some(&bearer)).await),
            ErrorCode::InvalidToken
        );
        assert_eq!(
            code(
                auth.authenticate_header(Some(&basic("AK", "first-secret")))
                    .await
            ),
            ErrorCode::InvalidCredentials
        );
        conn.del::<_, ()>(&key).await.unwrap();
    }
}
