//! The gateway's connections to the domain services.
//!
//! [`Channels`] holds one `tonic` channel per domain service: to the internal
//! listener in embedded mode, to `services.<name>.endpoint` in distributed
//! mode (the same code path either way). [`Clients`] wraps them in the
//! generated clients, each with the W3C trace-context interceptor and a
//! 64 MiB receive limit (chart and log reads can be large).
//!
//! Every call made on behalf of a user carries the caller's id in the
//! `tasklab-user-id` metadata entry ([`USER_METADATA_KEY`]), which the
//! services read as the `user` of what they create.

use tasklab_error::{Error, ErrorCode};
use tasklab_proto::artifacts::v1::artifacts_service_client::ArtifactsServiceClient;
use tasklab_proto::artifacts::v1::blobs_service_client::BlobsServiceClient;
use tasklab_proto::artifacts::v1::models_service_client::ModelsServiceClient;
use tasklab_proto::metrics::v1::metrics_service_client::MetricsServiceClient;
use tasklab_proto::projects::v1::projects_service_client::ProjectsServiceClient;
use tasklab_proto::queues::v1::queues_service_client::QueuesServiceClient;
use tasklab_proto::queues::v1::workers_service_client::WorkersServiceClient;
use tasklab_proto::tasks::v1::tasks_service_client::TasksServiceClient;
use tasklab_telemetry::TraceContextInterceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// gRPC metadata entry carrying the authenticated caller's id to the domain
/// services (the key every tasklab service reads).
pub const USER_METADATA_KEY: &str = "tasklab-user-id";

/// Largest message a client accepts from a service.
pub(crate) const MAX_RECEIVE_BYTES: usize = 64 * 1024 * 1024;

/// Largest message a client sends to a service.
pub(crate) const MAX_SEND_BYTES: usize = 64 * 1024 * 1024;

/// One channel per domain service.
#[derive(Debug, Clone)]
pub struct Channels {
    /// The tasks service.
    pub tasks: Channel,
    /// The projects service.
    pub projects: Channel,
    /// The queues service (queues and workers).
    pub queues: Channel,
    /// The artifacts service (artifacts, models, blobs).
    pub artifacts: Channel,
    /// The metrics service.
    pub metrics: Channel,
}

impl Channels {
    /// Lazily connected channels to the given endpoint URLs
    /// (`http://host:port`). Nothing is dialled until the first call, so the
    /// gateway may start before the services.
    pub fn lazy(
        tasks: &str,
        projects: &str,
        queues: &str,
        artifacts: &str,
        metrics: &str,
    ) -> Result<Channels, Error> {
        Ok(Channels {
            tasks: lazy_channel(tasks)?,
            projects: lazy_channel(projects)?,
            queues: lazy_channel(queues)?,
            artifacts: lazy_channel(artifacts)?,
            metrics: lazy_channel(metrics)?,
        })
    }

    /// Every domain service behind one address (embedded mode).
    pub fn all_at(url: &str) -> Result<Channels, Error> {
        let channel = lazy_channel(url)?;
        Ok(Channels {
            tasks: channel.clone(),
            projects: channel.clone(),
            queues: channel.clone(),
            artifacts: channel.clone(),
            metrics: channel,
        })
    }
}

/// A lazily connected channel with keep-alive and connect timeouts suited to
/// a service mesh.
pub fn lazy_channel(url: &str) -> Result<Channel, Error> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| {
            Error::new(
                ErrorCode::InvalidArgument,
                format!("invalid service endpoint {url:?}: {e}"),
            )
        })?
        .connect_timeout(std::time::Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(std::time::Duration::from_secs(30))
        .keep_alive_while_idle(true);
    Ok(endpoint.connect_lazy())
}

/// A channel with the trace-context interceptor.
pub type Traced = InterceptedService<Channel, TraceContextInterceptor>;

/// Generated clients of every domain service.
#[derive(Debug, Clone)]
pub struct Clients {
    /// `tasklab.tasks.v1.TasksService`.
    pub tasks: TasksServiceClient<Traced>,
    /// `tasklab.projects.v1.ProjectsService`.
    pub projects: ProjectsServiceClient<Traced>,
    /// `tasklab.queues.v1.QueuesService`.
    pub queues: QueuesServiceClient<Traced>,
    /// `tasklab.queues.v1.WorkersService`.
    pub workers: WorkersServiceClient<Traced>,
    /// `tasklab.artifacts.v1.ArtifactsService`.
    pub artifacts: ArtifactsServiceClient<Traced>,
    /// `tasklab.artifacts.v1.ModelsService`.
    pub models: ModelsServiceClient<Traced>,
    /// `tasklab.artifacts.v1.BlobsService`.
    pub blobs: BlobsServiceClient<Traced>,
    /// `tasklab.metrics.v1.MetricsService`.
    pub metrics: MetricsServiceClient<Traced>,
}

macro_rules! client {
    ($ty:ident, $channel:expr) => {
        $ty::with_interceptor($channel.clone(), TraceContextInterceptor)
            .max_decoding_message_size(MAX_RECEIVE_BYTES)
            .max_encoding_message_size(MAX_SEND_BYTES)
    };
}

impl Clients {
    /// Clients over the given channels.
    pub fn new(channels: &Channels) -> Clients {
        Clients {
            tasks: client!(TasksServiceClient, channels.tasks),
            projects: client!(ProjectsServiceClient, channels.projects),
            queues: client!(QueuesServiceClient, channels.queues),
            workers: client!(WorkersServiceClient, channels.queues),
            artifacts: client!(ArtifactsServiceClient, channels.artifacts),
            models: client!(ModelsServiceClient, channels.artifacts),
            blobs: client!(BlobsServiceClient, channels.artifacts),
            metrics: client!(MetricsServiceClient, channels.metrics),
        }
    }
}

/// A request carrying the caller's id.
pub(crate) fn request<T>(user: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = user.parse() {
        request.metadata_mut().insert(USER_METADATA_KEY, value);
    }
    request
}

/// Converts a service's status into the error it carries.
pub(crate) fn status(status: tonic::Status) -> Error {
    Error::from_status(&status)
}

/// Shorthand: call a client method with the caller's id and map the status.
///
/// `call!(clients.tasks, get_task, user, GetTaskRequest { .. })` evaluates to
/// `Result<GetTaskResponse, Error>`.
macro_rules! call {
    ($client:expr, $method:ident, $user:expr, $msg:expr) => {
        $client
            .clone()
            .$method($crate::clients::request($user, $msg))
            .await
            .map(tonic::Response::into_inner)
            .map_err($crate::clients::status)
    };
}
