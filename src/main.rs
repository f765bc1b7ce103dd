//! `tasklab`: the command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tasklab_config::{ServiceName, Settings};
use tasklab_gateway::auth::{CredentialStore, GeneratedCredential};

/// tasklab: an experiment manager server implementing ClearML's Task model.
///
/// Point the ClearML SDK at it with CLEARML_API_HOST=http://127.0.0.1:8008 and
/// CLEARML_FILES_HOST=http://127.0.0.1:8081.
#[derive(Debug, Parser)]
#[command(name = "tasklab", version, propagate_version = true)]
struct Cli {
    /// Settings file (TOML). TASKLAB_* environment variables override it.
    #[arg(long, global = true, env = "TASKLAB_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run tasklab: every service and the gateway in one process on embedded
    /// storage (default), or one service alone with --service.
    Serve(ServeArgs),
    /// Manage API credentials (access key / secret key): in Redis when
    /// `redis_url` is set (every gateway replica shares them), else in the
    /// data directory.
    Credentials {
        /// Directory holding `credentials.json` (default: the configured data
        /// directory); unused when `redis_url` is set.
        #[arg(long, value_name = "DIR", global = true)]
        data_dir: Option<PathBuf>,
        #[command(subcommand)]
        action: CredentialsAction,
    },
    /// Check a running tasklab over gRPC health; exit 0 when SERVING (for
    /// container health checks). Opens no database.
    Health {
        /// Probe the listener of this service as `serve --service NAME` would
        /// bind it (default: the API port).
        #[arg(long, value_name = "NAME", value_parser = parse_service)]
        service: Option<ServiceName>,
        /// Probe this address instead of the configured one.
        #[arg(long, value_name = "ADDR")]
        addr: Option<SocketAddr>,
        /// A gRPC service name to check (default: the whole server).
        #[arg(long, value_name = "NAME", default_value = "")]
        grpc_service: String,
        /// Seconds to wait for an answer.
        #[arg(long, value_name = "SECS", default_value_t = 3)]
        timeout: u64,
    },
    /// Apply a service's database migrations and exit (run before upgrades).
    Migrate {
        /// The service whose database to migrate.
        #[arg(long, value_name = "NAME", value_parser = parse_service)]
        service: ServiceName,
    },
    /// Print the version.
    Version,
}

#[derive(Debug, Subcommand)]
enum CredentialsAction {
    /// Create a credential and print its secret (shown once).
    Create,
    /// List credentials (access keys, creation time, revoked or not).
    List,
    /// Revoke a credential: it never authenticates again.
    Revoke {
        /// The access key to revoke.
        access_key: String,
    },
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Directory for embedded storage (SQLite files, blobs, secrets).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Address of the API port (ClearML REST API and public gRPC API).
    #[arg(long, value_name = "ADDR")]
    api_addr: Option<SocketAddr>,
    /// Address of the ClearML-compatible files server.
    #[arg(long, value_name = "ADDR")]
    files_addr: Option<SocketAddr>,
    /// Run only this service (tasks, projects, queues, artifacts, metrics,
    /// gateway) on its configured listen address, PostgreSQL and Redis.
    #[arg(long, value_name = "NAME", value_parser = parse_service)]
    service: Option<ServiceName>,
    /// Listen address when running one service (default: its
    /// `services.<name>.listen_addr`, else 127.0.0.1:5005x).
    #[arg(long, value_name = "ADDR", requires = "service")]
    listen_addr: Option<SocketAddr>,
}

fn parse_service(name: &str) -> Result<ServiceName, String> {
    ServiceName::parse(name).ok_or_else(|| {
        let names: Vec<&str> = ServiceName::ALL.iter().map(|s| s.as_str()).collect();
        format!(
            "unknown service {name:?}; expected one of {}",
            names.join(", ")
        )
    })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            #[allow(clippy::print_stdout)]
            {
                println!("tasklab {}", env!("CARGO_PKG_VERSION"));
            }
            Ok(())
        }
        Command::Health {
            service,
            addr,
            grpc_service,
            timeout,
        } => {
            let settings = Settings::load(cli.config.as_deref(), std::env::vars())
                .context("loading settings")?;
            let mut addr = addr.unwrap_or_else(|| listen_addr(&settings, service, None));
            if addr.ip().is_unspecified() {
                // A server listening on every interface is probed on loopback.
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(health(
                addr,
                grpc_service,
                std::time::Duration::from_secs(timeout),
            ))
        }
        Command::Migrate { service } => {
            let settings = Settings::load(cli.config.as_deref(), std::env::vars())
                .context("loading settings")?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let result = runtime.block_on(tasklab::migrate(&settings, service));
            runtime.shutdown_timeout(std::time::Duration::from_millis(200));
            result
        }
        Command::Credentials { data_dir, action } => {
            let settings = Settings::load(cli.config.as_deref(), std::env::vars())
                .context("loading settings")?;
            let dir = data_dir.unwrap_or_else(|| settings.data_dir.clone());
            let store = CredentialStore::for_settings(settings.redis_url.as_deref(), &dir)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(credentials(&store, action))
        }
        Command::Serve(args) => {
            let mut settings = Settings::load(cli.config.as_deref(), std::env::vars())
                .context("loading settings")?;
            if let Some(dir) = args.data_dir {
                settings.data_dir = dir;
            }
            if let Some(addr) = args.api_addr {
                settings.api_addr = addr;
            }
            if let Some(addr) = args.files_addr {
                settings.files_addr = addr;
            }
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let result = runtime.block_on(serve(settings, args.service, args.listen_addr));
            // Everything that matters was drained inside `serve`; don't wait
            // on idle background tasks (pool reapers, blocking readers).
            runtime.shutdown_timeout(std::time::Duration::from_millis(200));
            result
        }
    }
}

#[allow(clippy::print_stdout)]
async fn health(
    addr: SocketAddr,
    service: String,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let check = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        let reply = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.clone(),
            })
            .await?
            .into_inner();
        anyhow::Ok(reply.status)
    };
    let status = tokio::time::timeout(timeout, check)
        .await
        .map_err(|_| anyhow::anyhow!("no health answer from {addr} within {timeout:?}"))??;
    let name = ServingStatus::try_from(status).map_or("UNKNOWN", |s| s.as_str_name());
    println!("{name}");
    anyhow::ensure!(status == ServingStatus::Serving as i32, "{addr} is {name}");
    Ok(())
}

#[allow(clippy::print_stdout)]
async fn credentials(store: &CredentialStore, action: CredentialsAction) -> anyhow::Result<()> {
    match action {
        CredentialsAction::Create => print_generated(&store.create().await?),
        CredentialsAction::List => {
            for c in store.list().await? {
                let state = if c.revoked { "revoked" } else { "active" };
                println!("{}\t{}\tcreated={}", c.access_key, state, c.created);
            }
        }
        CredentialsAction::Revoke { access_key } => {
            store.revoke(&access_key).await?;
            println!("revoked {access_key}");
        }
    }
    Ok(())
}

#[allow(clippy::print_stdout)]
fn print_generated(c: &GeneratedCredential) {
    println!("access key: {}", c.access_key);
    println!("secret key: {}", c.secret_key);
    println!("(the secret is shown once and stored only as a salted hash)");
}

/// The first credential: the configured pair, else one generated and printed
/// once for a store (the data directory's file, or Redis with `redis_url`)
/// that has none.
#[allow(clippy::print_stdout)]
async fn ensure_first_credential(settings: &Settings) -> anyhow::Result<()> {
    std::fs::create_dir_all(&settings.data_dir).with_context(|| {
        format!(
            "cannot create data directory {}",
            settings.data_dir.display()
        )
    })?;
    let store = CredentialStore::for_settings(settings.redis_url.as_deref(), &settings.data_dir)?;
    let configured = settings
        .auth
        .access_key
        .as_deref()
        .zip(settings.auth.secret_key.as_deref());
    if let Some(generated) = store.ensure_first(configured).await? {
        println!("tasklab generated its first API credential:");
        print_generated(&generated);
        println!(
            "use it as CLEARML_API_ACCESS_KEY / CLEARML_API_SECRET_KEY; `tasklab credentials create` makes more"
        );
    }
    Ok(())
}

async fn serve(
    settings: Settings,
    service: Option<ServiceName>,
    listen_addr: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let otlp = std::env::var(tasklab_telemetry::OTLP_ENDPOINT_ENV).ok();
    let process = service.map_or("serve", ServiceName::as_str);
    let _telemetry = tasklab_telemetry::init(&settings.log, process, otlp.as_deref())
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    match service {
        None => {
            ensure_first_credential(&settings).await?;
            let api = bind(settings.api_addr, "API").await?;
            let files = bind(settings.files_addr, "files").await?;
            tasklab::run_embedded(settings, api, files, tasklab_server::shutdown_signal()).await
        }
        Some(name) => {
            if name == ServiceName::Gateway {
                ensure_first_credential(&settings).await?;
            }
            let addr = self::listen_addr(&settings, Some(name), listen_addr);
            let listener = bind(addr, name.as_str()).await?;
            tasklab::run_service(name, settings, listener, tasklab_server::shutdown_signal()).await
        }
    }
}

/// Where `serve` listens: the API port for the embedded server and the
/// gateway, else the service's configured or default address.
fn listen_addr(
    settings: &Settings,
    service: Option<ServiceName>,
    flag: Option<SocketAddr>,
) -> SocketAddr {
    match service {
        None | Some(ServiceName::Gateway) => flag.unwrap_or(settings.api_addr),
        Some(name) => flag
            .or_else(|| settings.services.get(name).and_then(|s| s.listen_addr))
            .unwrap_or_else(|| tasklab::default_service_addr(name)),
    }
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for the {what} port"))
}
