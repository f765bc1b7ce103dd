//! The `tasklab` binary's runtime: how the services are assembled into
//! processes.
//!
//! * **Embedded** ([`run_embedded`]): every domain service and the gateway in
//!   one process, on SQLite files and local blobs under the data directory.
//!   The API port serves the ClearML REST API and the public gRPC API; the
//!   files port serves the ClearML files server.
//! * **One service** ([`run_service`]): a single service on its own port and
//!   its configured PostgreSQL/Redis, as containers run it.
//!
//! Both take already-bound listeners and a shutdown future, so `main` and the
//! end-to-end tests run exactly the same code.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context as _;
use tasklab_config::{ServiceName, Settings};
use tasklab_gateway::{Channels, Gateway, GatewayConfig};
use tasklab_server::Server;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The default port of each service when run alone.
pub fn default_service_addr(name: ServiceName) -> SocketAddr {
    let port = match name {
        ServiceName::Tasks => 50051,
        ServiceName::Projects => 50052,
        ServiceName::Queues => 50053,
        ServiceName::Artifacts => 50054,
        ServiceName::Metrics => 50055,
        ServiceName::Gateway => 8008,
    };
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The database of a domain service: its configured URL, else a SQLite file
/// `<data_dir>/<service>.db`.
pub fn database_url(settings: &Settings, name: ServiceName) -> String {
    settings
        .services
        .get(name)
        .and_then(|s| s.database_url.clone())
        .unwrap_or_else(|| {
            tasklab_db::sqlite_url(&settings.data_dir.join(format!("{}.db", name.as_str())))
        })
}

async fn with_domain_service(
    server: Server,
    settings: &Settings,
    name: ServiceName,
) -> anyhow::Result<Server> {
    let url = database_url(settings, name);
    let server = match name {
        ServiceName::Tasks => tasklab_tasks::mount(server, settings, &url).await,
        ServiceName::Projects => tasklab_projects::mount(server, settings, &url).await,
        ServiceName::Queues => tasklab_queues::mount(server, settings, &url).await,
        ServiceName::Artifacts => tasklab_artifacts::mount(server, settings, &url).await,
        ServiceName::Metrics => tasklab_metrics::mount(server, settings, &url).await,
        ServiceName::Gateway => Ok(server),
    };
    server.with_context(|| format!("starting the {name} service"))
}

/// The gateway over the given domain-service channels.
fn gateway(settings: &Settings, channels: Channels) -> anyhow::Result<Gateway> {
    Gateway::new(GatewayConfig::from_settings(settings), channels)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("starting the gateway")
}

/// The API server: the gateway's ClearML REST router and public gRPC API.
fn api_server(settings: &Settings, gateway: &Gateway) -> Server {
    gateway.mount_grpc(Server::new(&settings.grpc).with_http(gateway.api_router()))
}

/// Runs every service and the gateway in this process until `shutdown`
/// resolves.
///
/// The domain services listen on an internal listener bound to
/// `127.0.0.1:0`; the gateway reaches them over gRPC channels exactly as in
/// distributed mode. On shutdown the public listeners drain first, then the
/// internal one, so in-flight API calls can still reach the services.
pub async fn run_embedded(
    settings: Settings,
    api: TcpListener,
    files: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&settings.data_dir).with_context(|| {
        format!(
            "cannot create data directory {}",
            settings.data_dir.display()
        )
    })?;

    let internal = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .context("cannot bind the internal service listener")?;
    let internal_addr = internal.local_addr().context("internal listener address")?;
    let mut domain = Server::new(&settings.grpc);
    for name in ServiceName::ALL {
        domain = with_domain_service(domain, &settings, name).await?;
    }
    let channels =
        Channels::all_at(&format!("http://{internal_addr}")).map_err(|e| anyhow::anyhow!("{e}"))?;
    let gateway = gateway(&settings, channels)?;
    let api_server = api_server(&settings, &gateway);
    let files_server = Server::http_only(&settings.grpc, gateway.files_router());

    let services_token = CancellationToken::new();
    let public_token = CancellationToken::new();
    let domain_task =
        tokio::spawn(domain.serve(internal, services_token.clone().cancelled_owned()));
    let api_task = tokio::spawn(api_server.serve(api, public_token.clone().cancelled_owned()));
    let files_task =
        tokio::spawn(files_server.serve(files, public_token.clone().cancelled_owned()));
    let background = gateway.spawn_background(public_token.clone());
    tracing::info!(
        data_dir = %settings.data_dir.display(),
        internal = %internal_addr,
        "tasklab is ready"
    );

    shutdown.await;
    public_token.cancel();
    let (api_result, files_result, _) = tokio::join!(api_task, files_task, background);
    services_token.cancel();
    let domain_result = domain_task.await;
    api_result
        .context("API server task")?
        .context("API server")?;
    files_result
        .context("files server task")?
        .context("files server")?;
    domain_result
        .context("domain services task")?
        .context("domain services")?;
    tracing::info!("tasklab stopped");
    Ok(())
}

/// The endpoint of a domain service for the gateway in distributed mode:
/// `services.<name>.endpoint`, else the service's default local address.
pub fn service_endpoint(settings: &Settings, name: ServiceName) -> String {
    settings
        .services
        .get(name)
        .and_then(|s| s.endpoint.clone())
        .unwrap_or_else(|| {
            let url = format!("http://{}", default_service_addr(name));
            tracing::warn!(service = %name, endpoint = %url, "no services.{name}.endpoint configured; using the default address");
            url
        })
}

/// Runs one service alone until `shutdown` resolves.
pub async fn run_service(
    name: ServiceName,
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if name == ServiceName::Gateway {
        let endpoint = |n| service_endpoint(&settings, n);
        let channels = Channels::lazy(
            &endpoint(ServiceName::Tasks),
            &endpoint(ServiceName::Projects),
            &endpoint(ServiceName::Queues),
            &endpoint(ServiceName::Artifacts),
            &endpoint(ServiceName::Metrics),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let gateway = gateway(&settings, channels)?;
        let server = api_server(&settings, &gateway);
        // The gateway also serves the files port (CLEARML_FILES_HOST).
        let files = TcpListener::bind(settings.files_addr)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} for the files port",
                    settings.files_addr
                )
            })?;
        let files_server = Server::http_only(&settings.grpc, gateway.files_router());
        let token = CancellationToken::new();
        let files_task = tokio::spawn(files_server.serve(files, token.clone().cancelled_owned()));
        let background = gateway.spawn_background(token.clone());
        tracing::info!(service = %name, "tasklab service is ready");
        let result = server.serve(listener, shutdown).await;
        token.cancel();
        let _ = background.await;
        files_task
            .await
            .context("files server task")?
            .context("files server")?;
        return result.with_context(|| format!("{name} server"));
    }
    let server = with_domain_service(Server::new(&settings.grpc), &settings, name).await?;
    tracing::info!(service = %name, "tasklab service is ready");
    server
        .serve(listener, shutdown)
        .await
        .with_context(|| format!("{name} server"))
}

/// Applies the database migrations of a domain service and returns.
///
/// Every service also migrates at start; this exists so a deployment can run
/// migrations once, before new replicas roll out (the Helm pre-upgrade Job).
pub async fn migrate(settings: &Settings, name: ServiceName) -> anyhow::Result<()> {
    use tasklab_db::connect_and_migrate as up;
    let url = database_url(settings, name);
    // Only the migrator runs: no server, no background jobs, no Redis.
    let db = match name {
        ServiceName::Tasks => up::<tasklab_tasks::migration::Migrator>(&url).await,
        ServiceName::Projects => up::<tasklab_projects::migration::Migrator>(&url).await,
        ServiceName::Queues => up::<tasklab_queues::migration::Migrator>(&url).await,
        ServiceName::Artifacts => up::<tasklab_artifacts::migration::Migrator>(&url).await,
        ServiceName::Metrics => up::<tasklab_metrics::migration::Migrator>(&url).await,
        ServiceName::Gateway => anyhow::bail!("the gateway owns no database"),
    }
    .with_context(|| format!("migrating the {name} database at {}", redact(&url)))?;
    db.close().await.ok();
    tracing::info!(service = %name, database = %redact(&url), "migrations applied");
    Ok(())
}

/// A database URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..scheme + 3], user, &url[at..])
        }
        _ => url.to_owned(),
    }
}
