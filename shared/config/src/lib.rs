//! tasklab's settings: defaults, overlaid by an optional TOML file, overlaid
//! by `TASKLAB_*` environment variables.
//!
//! Environment variables map onto the TOML structure: the prefix `TASKLAB_` is
//! dropped, the rest is lowercased and `__` separates nesting levels, so
//! `TASKLAB_QUEUES__LEASE_TTL_SECS=30` sets `[queues] lease_ttl_secs = 30`.
//! Values are parsed as TOML scalars (`true`, `42`, `1.5`) and fall back to
//! strings. Two short aliases exist for the first credential:
//! `TASKLAB_ACCESS_KEY` and `TASKLAB_SECRET_KEY`.
//!
//! Loading never reads the process environment by itself: callers pass the
//! variables in ([`Settings::load`]), so tests stay free of global state.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors while loading settings.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The settings file could not be read.
    #[error("cannot read settings file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The settings file or an environment variable does not parse.
    #[error("invalid settings: {0}")]
    Invalid(String),
}

/// The name of a domain service, as used by `tasklab serve --service NAME`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceName {
    /// Tasks: the Task model and its lifecycle.
    Tasks,
    /// Projects: nested projects.
    Projects,
    /// Queues: execution queues and workers.
    Queues,
    /// Artifacts: artifacts, models and blobs.
    Artifacts,
    /// Metrics: metric events.
    Metrics,
    /// Gateway: the ClearML REST API, the files server and the public gRPC API.
    Gateway,
}

impl ServiceName {
    /// Every service, domain services first.
    pub const ALL: [ServiceName; 6] = [
        ServiceName::Tasks,
        ServiceName::Projects,
        ServiceName::Queues,
        ServiceName::Artifacts,
        ServiceName::Metrics,
        ServiceName::Gateway,
    ];

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceName::Tasks => "tasks",
            ServiceName::Projects => "projects",
            ServiceName::Queues => "queues",
            ServiceName::Artifacts => "artifacts",
            ServiceName::Metrics => "metrics",
            ServiceName::Gateway => "gateway",
        }
    }

    /// Parses a lowercase name.
    pub fn parse(name: &str) -> Option<ServiceName> {
        ServiceName::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl std::fmt::Display for ServiceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable, for terminals.
    #[default]
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

/// All settings. Every field has a default that suits `tasklab serve` on a laptop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Directory for embedded storage: SQLite files, blobs, generated secrets.
    pub data_dir: PathBuf,
    /// Address of the API port: ClearML REST and the public gRPC API.
    pub api_addr: SocketAddr,
    /// Address of the ClearML-compatible files server.
    pub files_addr: SocketAddr,
    /// Public URL of the files server written into artifact and model URIs;
    /// defaults to `http://<files_addr>`.
    pub files_url: Option<String>,
    /// Logging.
    pub log: LogSettings,
    /// gRPC serving limits.
    pub grpc: GrpcSettings,
    /// Authentication.
    pub auth: AuthSettings,
    /// Per-service listen addresses, storage and peer endpoints (distributed mode).
    pub services: ServicesSettings,
    /// Queue behaviour.
    pub queues: QueueSettings,
    /// Redis URL for the Redis queue backend (`redis://127.0.0.1:6379/0`).
    pub redis_url: Option<String>,
    /// Blob storage.
    pub blobs: BlobSettings,
    /// Testing hook, never set in production: comma-separated names of
    /// fault-injection points that make the process abort when reached
    /// (`TASKLAB_FAILPOINTS=enqueue-between-steps`). The names are listed
    /// in the gateway's `failpoints` module; the gateway refuses to start on
    /// an unknown one. Empty by default.
    pub failpoints: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            data_dir: PathBuf::from(".tasklab"),
            api_addr: SocketAddr::from(([127, 0, 0, 1], 8008)),
            files_addr: SocketAddr::from(([127, 0, 0, 1], 8081)),
            files_url: None,
            log: LogSettings::default(),
            grpc: GrpcSettings::default(),
            auth: AuthSettings::default(),
            services: ServicesSettings::default(),
            queues: QueueSettings::default(),
            redis_url: None,
            blobs: BlobSettings::default(),
            failpoints: String::new(),
        }
    }
}

/// Logging settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `pretty` or `json`.
    pub format: LogFormat,
    /// A `tracing` filter directive, e.g. `info,tasklab_tasks=debug`.
    pub filter: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::Pretty,
            filter: "info".to_owned(),
        }
    }
}

/// gRPC serving limits applied by the server bootstrap to every service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcSettings {
    /// A request running longer than this is answered `DEADLINE_EXCEEDED`.
    /// Streaming RPCs (log tail, blob transfer) are exempt.
    pub request_timeout_secs: u64,
    /// In-flight requests per server; further requests wait.
    pub concurrency_limit: usize,
    /// Time given to in-flight requests after SIGTERM before the process exits.
    pub shutdown_grace_secs: u64,
}

impl Default for GrpcSettings {
    fn default() -> Self {
        GrpcSettings {
            request_timeout_secs: 30,
            concurrency_limit: 1024,
            shutdown_grace_secs: 4,
        }
    }
}

/// Authentication settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// Access key of the first credential (alias `TASKLAB_ACCESS_KEY`).
    pub access_key: Option<String>,
    /// Secret key of the first credential (alias `TASKLAB_SECRET_KEY`).
    pub secret_key: Option<String>,
    /// Secret that signs tokens; generated into the data directory when unset.
    pub token_secret: Option<String>,
    /// Lifetime of issued tokens.
    pub token_ttl_secs: u64,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            access_key: None,
            secret_key: None,
            token_secret: None,
            token_ttl_secs: 30 * 24 * 3600,
        }
    }
}

/// Settings of one domain service in distributed mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceSettings {
    /// Address the service listens on when run alone.
    pub listen_addr: Option<SocketAddr>,
    /// Database URL (`postgres://…` or `sqlite://…`); embedded mode uses a
    /// SQLite file in the data directory when unset.
    pub database_url: Option<String>,
    /// URL other services and the gateway use to reach this one
    /// (`http://tasks:50051`).
    pub endpoint: Option<String>,
}

/// Per-service settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ServicesSettings {
    /// The tasks service.
    pub tasks: ServiceSettings,
    /// The projects service.
    pub projects: ServiceSettings,
    /// The queues service.
    pub queues: ServiceSettings,
    /// The artifacts service.
    pub artifacts: ServiceSettings,
    /// The metrics service.
    pub metrics: ServiceSettings,
}

impl ServicesSettings {
    /// The settings of one domain service (`None` for the gateway).
    pub fn get(&self, name: ServiceName) -> Option<&ServiceSettings> {
        match name {
            ServiceName::Tasks => Some(&self.tasks),
            ServiceName::Projects => Some(&self.projects),
            ServiceName::Queues => Some(&self.queues),
            ServiceName::Artifacts => Some(&self.artifacts),
            ServiceName::Metrics => Some(&self.metrics),
            ServiceName::Gateway => None,
        }
    }
}

/// Queue backend choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum QueueBackendKind {
    /// Entries in the queues service's own SQL database (embedded default).
    #[default]
    Sql,
    /// Entries in Redis (distributed default).
    Redis,
}

/// What happens to a started task whose worker went silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LostWorkerAction {
    /// Mark the task failed.
    #[default]
    Fail,
    /// Mark the task stopped.
    Stop,
}

/// Queue and worker behaviour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueSettings {
    /// Backend for queue entries.
    pub backend: QueueBackendKind,
    /// How long a popped entry stays leased without the task starting.
    pub lease_ttl_secs: u64,
    /// A worker silent for this long is expired and its running task is lost.
    pub worker_timeout_secs: u64,
    /// What to do with a started task whose worker was lost.
    pub lost_worker_action: LostWorkerAction,
    /// How often the reaper and the reconciler run.
    pub reaper_interval_secs: u64,
    /// Prefix of every Redis key (and channel) of the Redis queue backend,
    /// so deployments sharing one Redis database keep apart.
    pub redis_prefix: String,
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            backend: QueueBackendKind::Sql,
            lease_ttl_secs: 30,
            worker_timeout_secs: 45,
            lost_worker_action: LostWorkerAction::Fail,
            reaper_interval_secs: 5,
            redis_prefix: "tasklab:queues".to_owned(),
        }
    }
}

/// Blob storage backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct BlobSettings {
    /// `local` (under `<data_dir>/blobs`) or `s3`.
    pub backend: Option<String>,
    /// S3 endpoint URL for S3-compatible stores.
    pub s3_endpoint: Option<String>,
    /// S3 bucket.
    pub s3_bucket: Option<String>,
    /// S3 region.
    pub s3_region: Option<String>,
    /// S3 access key id.
    pub s3_access_key_id: Option<String>,
    /// S3 secret access key.
    pub s3_secret_access_key: Option<String>,
}

const ENV_PREFIX: &str = "TASKLAB_";

impl Settings {
    /// Loads settings: defaults, then `file` (when given), then the
    /// `TASKLAB_*` variables among `env`.
    pub fn load<I, K, V>(file: Option<&Path>, env: I) -> Result<Settings, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Invalid(format!("{}: {e}", path.display())))?
            }
            None => toml::Table::new(),
        };
        for (key, value) in env {
            let Some(rest) = key.as_ref().strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let path: Vec<String> = match rest {
                "ACCESS_KEY" => vec!["auth".into(), "access_key".into()],
                "SECRET_KEY" => vec!["auth".into(), "secret_key".into()],
                // Variables read elsewhere (the settings file, tests, benches), not settings.
                "CONFIG" | "VENV" => continue,
                _ if rest.starts_with("TEST_") || rest.starts_with("BENCH_") => continue,
                _ => rest.split("__").map(str::to_ascii_lowercase).collect(),
            };
            let value = if is_string_field(&path) {
                toml::Value::String(value.as_ref().to_owned())
            } else {
                parse_scalar(value.as_ref())
            };
            set_path(&mut table, &path, value)
                .map_err(|e| ConfigError::Invalid(format!("{}: {e}", key.as_ref())))?;
        }
        Settings::deserialize(toml::Value::Table(table))
            .map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    /// The files server URL as written into artifact and model URIs.
    pub fn files_url(&self) -> String {
        self.files_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.files_addr))
    }
}

/// Fields whose values are text even when they look like numbers (a secret
/// of digits, a bucket called `2024`).
fn is_string_field(path: &[String]) -> bool {
    const TEXT_SUFFIXES: &[&str] = &[
        "key", "secret", "url", "endpoint", "bucket", "region", "filter", "dir", "key_id", "prefix",
    ];
    path.last()
        .is_some_and(|last| TEXT_SUFFIXES.iter().any(|s| last.ends_with(s)))
}

fn parse_scalar(text: &str) -> toml::Value {
    // Parse `x = <text>` so TOML decides between bool, integer, float and
    // arrays; anything that is not a valid TOML value is a plain string.
    match format!("x = {text}").parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("x")
            .unwrap_or_else(|| toml::Value::String(text.to_owned())),
        Err(_) => toml::Value::String(text.to_owned()),
    }
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty variable name")?;
    let mut current = table;
    for part in parents {
        let entry = current
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| format!("{part} is not a section"))?;
    }
    current.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_match_clearml_ports() {
        let s = Settings::load(None, env(&[])).unwrap();
        assert_eq!(s.api_addr.to_string(), "127.0.0.1:8008");
        assert_eq!(s.files_addr.to_string(), "127.0.0.1:8081");
        assert_eq!(s.files_url(), "http://127.0.0.1:8081");
        assert_eq!(s.queues.backend, QueueBackendKind::Sql);
        assert!(s.queues.worker_timeout_secs <= 60);
    }

    #[test]
    fn file_then_env_overlay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasklab.toml");
        std::fs::write(
            &path,
            "data_dir = \"/srv/tasklab\"\n[queues]\nbackend = \"redis\"\nlease_ttl_secs = 10\n",
        )
        .unwrap();
        let s = Settings::load(
            Some(&path),
            env(&[
                ("TASKLAB_QUEUES__LEASE_TTL_SECS", "30"),
                (
                    "TASKLAB_SERVICES__TASKS__DATABASE_URL",
                    "postgres://db/tasks",
                ),
                ("TASKLAB_ACCESS_KEY", "AK"),
                ("TASKLAB_SECRET_KEY", "12345"),
                ("TASKLAB_LOG__FORMAT", "json"),
                ("HOME", "/root"),
                ("TASKLAB_TEST_PYTHON", "/usr/bin/python3"),
                ("TASKLAB_BENCH_MLFLOW", "1"),
            ]),
        )
        .unwrap();
        assert_eq!(s.data_dir, PathBuf::from("/srv/tasklab"));
        assert_eq!(s.queues.backend, QueueBackendKind::Redis);
        assert_eq!(s.queues.lease_ttl_secs, 30);
        assert_eq!(
            s.services.tasks.database_url.as_deref(),
            Some("postgres://db/tasks")
        );
        assert_eq!(s.auth.access_key.as_deref(), Some("AK"));
        assert_eq!(s.auth.secret_key.as_deref(), Some("12345"));
        assert_eq!(s.log.format, LogFormat::Json);
    }

    #[test]
    fn unknown_keys_and_bad_types_are_errors() {
        let err = Settings::load(None, env(&[("TASKLAB_NO_SUCH_THING", "1")])).unwrap_err();
        assert!(err.to_string().contains("no_such_thing"), "{err}");
        let err =
            Settings::load(None, env(&[("TASKLAB_QUEUES__LEASE_TTL_SECS", "soon")])).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid(_)), "{err}");
    }

    #[test]
    fn failpoints_are_read_from_the_environment() {
        assert_eq!(Settings::default().failpoints, "");
        let s = Settings::load(
            None,
            env(&[(
                "TASKLAB_FAILPOINTS",
                "enqueue-between-steps,dequeue-between-steps",
            )]),
        )
        .unwrap();
        assert_eq!(s.failpoints, "enqueue-between-steps,dequeue-between-steps");
    }

    #[test]
    fn queues_redis_prefix_defaults_and_overlays() {
        assert_eq!(Settings::default().queues.redis_prefix, "tasklab:queues");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasklab.toml");
        std::fs::write(&path, "[queues]\nredis_prefix = \"tasklab:staging\"\n").unwrap();
        let s = Settings::load(Some(&path), env(&[])).unwrap();
        assert_eq!(s.queues.redis_prefix, "tasklab:staging");
        // Text even when it looks like a number.
        let s = Settings::load(
            Some(&path),
            env(&[("TASKLAB_QUEUES__REDIS_PREFIX", "2024")]),
        )
        .unwrap();
        assert_eq!(s.queues.redis_prefix, "2024");
    }

    #[test]
    fn service_names_round_trip() {
        for name in ServiceName::ALL {
            assert_eq!(ServiceName::parse(name.as_str()), Some(name));
        }
        assert_eq!(ServiceName::parse("nope"), None);
    }
}
