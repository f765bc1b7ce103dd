//! The gateway: what users and agents talk to.
//!
//! It serves the ClearML REST API (for the unmodified `clearml` SDK and
//! `clearml-agent`) and the public gRPC API on the API port, and the
//! ClearML-compatible files server on the files port. It composes the domain
//! services through their generated gRPC clients and owns no domain tables.
//!
//! Layout:
//! * `clients.rs` — channels and generated clients of the domain services;
//! * `auth/` — credentials (hashed), token signing and checking;
//! * `compose.rs` — the flows that cross services (enqueue, dequeue, reset,
//!   delete, clone, joined task reads, status changes that touch queues);
//! * `projects.rs` — project delete, merge and statistics, which concern
//!   tasks and models, and the gateway's `ProjectsService`;
//! * `http/` — the ClearML REST API: envelope, lenient decoding, dispatch
//!   table, one module per ClearML service;
//! * `grpc.rs` — the public gRPC API: authentication, a transparent proxy to
//!   the domain services, and `TasksService` composed by the gateway;
//! * `reconcile.rs` — the background reconciler of queues and lost workers;
//! * `files.rs` — the files server;
//! * `failpoints.rs` — a testing hook: fault-injection points in the composed
//!   flows that abort the process, armed only by the `failpoints` setting
//!   (`TASKLAB_FAILPOINTS`), never by a request; inert by default.
//!
//! [`Gateway`] ties them together; the `tasklab` binary builds one from the
//! settings and the domain-service channels, in embedded and distributed
//! mode alike.

#[macro_use]
mod clients;
pub mod auth;
mod compose;
mod failpoints;
mod files;
pub mod grpc;
pub mod http;
mod projects;
mod reconcile;

use std::path::PathBuf;
use std::sync::Arc;

pub use clients::{Channels, Clients, Traced, USER_METADATA_KEY, lazy_channel};
pub use files::{TokenValidator, blob_files_router, files_router};
use tasklab_config::{QueueSettings, Settings};
use tasklab_error::Error;
use tokio_util::sync::CancellationToken;

use auth::Authenticator;

/// Default limit of a ClearML REST request body: 32 MiB (the SDK splits
/// event batches at 15 MB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// What the gateway needs from the settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Data directory (credentials without `redis_url`, generated token
    /// secret).
    pub data_dir: PathBuf,
    /// Token signing secret; generated into the data directory when unset.
    pub token_secret: Option<String>,
    /// Longest token lifetime, seconds.
    pub token_ttl_secs: u64,
    /// Largest REST request body, bytes; larger ones get a 413 envelope.
    pub max_body_bytes: usize,
    /// Queue and worker behaviour (reconciler interval, lost-worker action).
    pub queues: QueueSettings,
    /// Redis holding the credentials (hash `tasklab:credentials`) and the
    /// background loop's lease (several gateway replicas); without it the
    /// credentials are a data-directory file and the loop runs unleased
    /// (one process).
    pub redis_url: Option<String>,
    /// Testing hook: fault-injection points to arm (the `failpoints`
    /// setting); empty in production.
    pub failpoints: String,
    /// The configured first credential (access key, secret key), restored
    /// when the credential store lost it.
    pub configured_credential: Option<(String, String)>,
}

impl GatewayConfig {
    /// The gateway's part of the settings.
    pub fn from_settings(settings: &Settings) -> GatewayConfig {
        GatewayConfig {
            data_dir: settings.data_dir.clone(),
            token_secret: settings.auth.token_secret.clone(),
            token_ttl_secs: settings.auth.token_ttl_secs,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            queues: settings.queues.clone(),
            redis_url: settings.redis_url.clone(),
            failpoints: settings.failpoints.clone(),
            configured_credential: settings
                .auth
                .access_key
                .clone()
                .zip(settings.auth.secret_key.clone()),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) clients: Clients,
    pub(crate) channels: Channels,
    pub(crate) auth: Authenticator,
    pub(crate) config: GatewayConfig,
    pub(crate) failpoints: failpoints::FailPoints,
}

/// The gateway: REST router, public gRPC services and background work over
/// one set of domain-service clients.
#[derive(Debug, Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

impl Gateway {
    /// A gateway over `channels`. Loads (or creates) the token secret.
    /// An unknown name in `failpoints` is an error.
    pub fn new(config: GatewayConfig, channels: Channels) -> Result<Gateway, Error> {
        let failpoints = failpoints::FailPoints::parse(&config.failpoints)?;
        let secret = match config.token_secret.as_deref().filter(|s| !s.is_empty()) {
            Some(secret) => secret.as_bytes().to_vec(),
            None => auth::load_or_create_secret(&config.data_dir)?,
        };
        let store =
            auth::CredentialStore::for_settings(config.redis_url.as_deref(), &config.data_dir)?;
        let mut auth = Authenticator::with_store(store, &secret, config.token_ttl_secs);
        if let Some((access_key, secret_key)) = &config.configured_credential {
            auth = auth.with_configured(access_key, secret_key);
        }
        Ok(Gateway {
            inner: Arc::new(Inner {
                clients: Clients::new(&channels),
                channels,
                auth,
                config,
                failpoints,
            }),
        })
    }

    /// The ClearML REST router of the API port.
    pub fn api_router(&self) -> axum::Router {
        http::router(self.inner.clone())
    }

    /// Adds the public gRPC API (every domain service, authenticated) to a
    /// server.
    pub fn mount_grpc(&self, server: tasklab_server::Server) -> tasklab_server::Server {
        grpc::mount(self.inner.clone(), server)
    }

    /// Checks an `Authorization` header value the way the API does; for the
    /// files server.
    pub fn token_validator(&self) -> auth::TokenValidator {
        self.inner.auth.validator()
    }

    /// The files server (`CLEARML_FILES_HOST`) over the artifacts service's
    /// blob store; every request but the ping needs a valid API token, which
    /// the SDK sends to its files host.
    pub fn files_router(&self) -> axum::Router {
        let auth = self.inner.auth.clone();
        let validator: files::TokenValidator = Arc::new(move |token: String| {
            let auth = auth.clone();
            Box::pin(async move { auth.check_token(&token).await.is_ok() })
        });
        files::blob_files_router(
            tasklab_proto::artifacts::v1::blobs_service_client::BlobsServiceClient::new(
                self.inner.channels.artifacts.clone(),
            ),
            Some(validator),
        )
    }

    /// The authenticator (credentials and tokens).
    pub fn authenticator(&self) -> &Authenticator {
        &self.inner.auth
    }

    /// Starts the background reconciler (queued tasks vs queue entries, lost
    /// workers) until `shutdown` is cancelled. With `redis_url` it runs only
    /// while this replica holds the Redis lease `tasklab:lease:gateway-reconciler`.
    pub fn spawn_background(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(reconcile::run(self.inner.clone(), shutdown))
    }
}
