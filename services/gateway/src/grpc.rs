//! The public gRPC API on the API port.
//!
//! Every domain service is reachable under its own name
//! (`tasklab.<domain>.v1.<Service>`), authenticated: each call must carry
//! `authorization: Bearer <token>` (a token from ClearML's `auth.login`) or
//! `authorization: Basic base64(access_key:secret_key)` metadata; a missing
//! or bad one is `UNAUTHENTICATED`. The caller's id is passed on to the
//! services in `tasklab-user-id`, replacing any value the client sent.
//!
//! * `tasklab.tasks.v1.TasksService` is implemented here: the RPCs that
//!   cross services (enqueue, dequeue, reset, delete, clone, status changes
//!   that leave a queue, reads that join metrics and artifacts) are composed
//!   as the contract's "Gateway:" notes say; the others are forwarded.
//! * `tasklab.projects.v1.ProjectsService` is implemented in `projects.rs`:
//!   merge and delete are composed with the tasks and artifacts services, the
//!   other RPCs are forwarded.
//! * Every other service is a transparent proxy: the HTTP/2 request is sent
//!   as is (streams included) over the service's channel.
//!
//! gRPC health and reflection (added by the server bootstrap) stay open.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use futures::future::BoxFuture;
use http::{Request, Response};
use tasklab_error::{Error, ErrorCode};
use tasklab_proto::tasks::v1 as tpb;
use tasklab_proto::tasks::v1::tasks_service_server::{TasksService, TasksServiceServer};
use tonic::server::NamedService;
use tonic::transport::Channel;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};
use tower::Service;

use crate::Inner;
use crate::auth::Authenticator;
use crate::clients::{MAX_RECEIVE_BYTES, MAX_SEND_BYTES, USER_METADATA_KEY};

/// A gRPC error response (trailers-only) for `err`.
fn error_response(err: Error) -> Response<tonic::body::Body> {
    let (parts, ()) = Status::from(err).into_http::<()>().into_parts();
    Response::from_parts(parts, tonic::body::Body::empty())
}

/// Authenticates every request, then hands it to `S` with the caller's id.
#[derive(Debug, Clone)]
pub struct Authenticated<S> {
    auth: Authenticator,
    inner: S,
}

impl<S> Authenticated<S> {
    /// Wraps `inner`.
    pub fn new(auth: Authenticator, inner: S) -> Self {
        Authenticated { auth, inner }
    }
}

impl<S: NamedService> NamedService for Authenticated<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<Request<Body>> for Authenticated<S>
where
    S: Service<Request<Body>, Response = Response<tonic::body::Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let header = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let auth = self.auth.clone();
        let mut inner = self.inner.clone();
        Box::pin(async move {
            let identity = match auth.authenticate_header(header.as_deref()).await {
                Ok(identity) => identity,
                Err(err) => {
                    tracing::debug!(path = %req.uri().path(), code = %err.code(), "gRPC call rejected");
                    return Ok(error_response(err));
                }
            };
            let headers = req.headers_mut();
            headers.remove(USER_METADATA_KEY);
            headers.remove(http::header::AUTHORIZATION);
            match http::HeaderValue::from_str(&identity.user) {
                Ok(value) => {
                    headers.insert(USER_METADATA_KEY, value);
                }
                Err(_) => {
                    return Ok(error_response(Error::new(
                        ErrorCode::InvalidCredentials,
                        "user id is not a valid header value",
                    )));
                }
            }
            futures::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
            inner.call(req).await
        })
    }
}

/// Forwards a gRPC request to a channel as is.
async fn forward(
    mut channel: Channel,
    req: Request<Body>,
) -> Result<Response<tonic::body::Body>, Infallible> {
    let req = req.map(tonic::body::Body::new);
    if let Err(e) = futures::future::poll_fn(|cx| Service::poll_ready(&mut channel, cx)).await {
        return Ok(error_response(Error::unavailable("domain service", e)));
    }
    match Service::call(&mut channel, req).await {
        Ok(response) => Ok(response),
        Err(e) => Ok(error_response(Error::unavailable("domain service", e))),
    }
}

macro_rules! proxies {
    ($($ty:ident => $name:path),* $(,)?) => {$(
        /// A transparent proxy to one domain service.
        #[derive(Debug, Clone)]
        pub struct $ty(Channel);

        impl NamedService for $ty {
            const NAME: &'static str = $name;
        }

        impl Service<Request<Body>> for $ty {
            type Response = Response<tonic::body::Body>;
            type Error = Infallible;
            type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

            fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
                Poll::Ready(Ok(()))
            }

            fn call(&mut self, req: Request<Body>) -> Self::Future {
                Box::pin(forward(self.0.clone(), req))
            }
        }
    )*};
}

proxies! {
    QueuesProxy => tasklab_proto::queues::v1::queues_service_server::SERVICE_NAME,
    WorkersProxy => tasklab_proto::queues::v1::workers_service_server::SERVICE_NAME,
    ArtifactsProxy => tasklab_proto::artifacts::v1::artifacts_service_server::SERVICE_NAME,
    ModelsProxy => tasklab_proto::artifacts::v1::models_service_server::SERVICE_NAME,
    BlobsProxy => tasklab_proto::artifacts::v1::blobs_service_server::SERVICE_NAME,
    MetricsProxy => tasklab_proto::metrics::v1::metrics_service_server::SERVICE_NAME,
}

/// Adds every public gRPC service to `server`.
pub(crate) fn mount(inner: Arc<Inner>, server: tasklab_server::Server) -> tasklab_server::Server {
    let auth = inner.auth.clone();
    let ch = inner.channels.clone();
    let projects =
        tasklab_proto::projects::v1::projects_service_server::ProjectsServiceServer::new(
            crate::projects::GatewayProjects {
                inner: inner.clone(),
            },
        )
        .max_decoding_message_size(MAX_RECEIVE_BYTES)
        .max_encoding_message_size(MAX_SEND_BYTES);
    let tasks = TasksServiceServer::new(GatewayTasks { inner })
        .max_decoding_message_size(MAX_RECEIVE_BYTES)
        .max_encoding_message_size(MAX_SEND_BYTES);
    server
        .add_service(Authenticated::new(auth.clone(), tasks))
        .add_service(Authenticated::new(auth.clone(), projects))
        .add_service(Authenticated::new(
            auth.clone(),
            QueuesProxy(ch.queues.clone()),
        ))
        .add_service(Authenticated::new(auth.clone(), WorkersProxy(ch.queues)))
        .add_service(Authenticated::new(
            auth.clone(),
            ArtifactsProxy(ch.artifacts.clone()),
        ))
        .add_service(Authenticated::new(
            auth.clone(),
            ModelsProxy(ch.artifacts.clone()),
        ))
        .add_service(Authenticated::new(auth.clone(), BlobsProxy(ch.artifacts)))
        .add_service(Authenticated::new(auth, MetricsProxy(ch.metrics)))
}

/// `TasksService` as the gateway serves it.
#[derive(Debug, Clone)]
struct GatewayTasks {
    inner: Arc<Inner>,
}

fn caller<T>(request: &GrpcRequest<T>) -> String {
    request
        .metadata()
        .get(USER_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

type GrpcResult<T> = Result<GrpcResponse<T>, Status>;

fn reply<T>(result: Result<T, Error>) -> GrpcResult<T> {
    result.map(GrpcResponse::new).map_err(Status::from)
}

/// The impl of `TasksService`: the RPCs listed first are forwarded to the
/// tasks service as they are, the rest are written out. (`async_trait` must
/// see the forwarded methods expanded, so the whole impl is generated.)
macro_rules! tasks_service_impl {
    (forward { $($method:ident($req:ty) -> $resp:ty;)* } $($rest:tt)*) => {
        #[tonic::async_trait]
        impl TasksService for GatewayTasks {
            $(
                async fn $method(&self, request: GrpcRequest<$req>) -> GrpcResult<$resp> {
                    let user = caller(&request);
                    reply(call!(self.inner.clients.tasks, $method, &user, request.into_inner()))
                }
            )*
            $($rest)*
        }
    };
}

tasks_service_impl! {
    forward {
        update_task(tpb::UpdateTaskRequest) -> tpb::UpdateTaskResponse;
        edit_task(tpb::EditTaskRequest) -> tpb::EditTaskResponse;
        set_hyper_params(tpb::SetHyperParamsRequest) -> tpb::SetHyperParamsResponse;
        delete_hyper_params(tpb::DeleteHyperParamsRequest) -> tpb::DeleteHyperParamsResponse;
        set_configuration(tpb::SetConfigurationRequest) -> tpb::SetConfigurationResponse;
        delete_configuration(tpb::DeleteConfigurationRequest) -> tpb::DeleteConfigurationResponse;
        set_user_properties(tpb::SetUserPropertiesRequest) -> tpb::SetUserPropertiesResponse;
        delete_user_properties(tpb::DeleteUserPropertiesRequest) -> tpb::DeleteUserPropertiesResponse;
        set_requirements(tpb::SetRequirementsRequest) -> tpb::SetRequirementsResponse;
        set_output_destination(tpb::SetOutputDestinationRequest) -> tpb::SetOutputDestinationResponse;
        set_models(tpb::SetModelsRequest) -> tpb::SetModelsResponse;
        delete_models(tpb::DeleteModelsRequest) -> tpb::DeleteModelsResponse;
        add_tags(tpb::AddTagsRequest) -> tpb::AddTagsResponse;
        remove_tags(tpb::RemoveTagsRequest) -> tpb::RemoveTagsResponse;
        move_tasks(tpb::MoveTasksRequest) -> tpb::MoveTasksResponse;
        unarchive_tasks(tpb::UnarchiveTasksRequest) -> tpb::UnarchiveTasksResponse;
        ping_task(tpb::PingTaskRequest) -> tpb::PingTaskResponse;
    }

    async fn create_task(
        &self,
        request: GrpcRequest<tpb::CreateTaskRequest>,
    ) -> GrpcResult<tpb::CreateTaskResponse> {
        let user = caller(&request);
        reply(self.inner.create_task(&user, request.into_inner()).await)
    }

    async fn get_task(
        &self,
        request: GrpcRequest<tpb::GetTaskRequest>,
    ) -> GrpcResult<tpb::GetTaskResponse> {
        let user = caller(&request);
        let req = request.into_inner();
        let task = self.inner.get_task(&user, &req.id, req.read_mask).await;
        reply(task.map(|task| tpb::GetTaskResponse { task: Some(task) }))
    }

    async fn get_task_by_name(
        &self,
        request: GrpcRequest<tpb::GetTaskByNameRequest>,
    ) -> GrpcResult<tpb::GetTaskByNameResponse> {
        let user = caller(&request);
        reply(self.inner.get_task_by_name(&user, request.into_inner()).await)
    }

    async fn list_tasks(
        &self,
        request: GrpcRequest<tpb::ListTasksRequest>,
    ) -> GrpcResult<tpb::ListTasksResponse> {
        let user = caller(&request);
        reply(self.inner.list_tasks(&user, request.into_inner()).await)
    }

    async fn start_task(
        &self,
        request: GrpcRequest<tpb::StartTaskRequest>,
    ) -> GrpcResult<tpb::StartTaskResponse> {
        let user = caller(&request);
        reply(self.inner.start(&user, request.into_inner()).await)
    }

    async fn stop_task(
        &self,
        request: GrpcRequest<tpb::StopTaskRequest>,
    ) -> GrpcResult<tpb::StopTaskResponse> {
        let user = caller(&request);
        reply(self.inner.stop(&user, request.into_inner()).await)
    }

    async fn fail_task(
        &self,
        request: GrpcRequest<tpb::FailTaskRequest>,
    ) -> GrpcResult<tpb::FailTaskResponse> {
        let user = caller(&request);
        reply(self.inner.fail(&user, request.into_inner()).await)
    }

    async fn complete_task(
        &self,
        request: GrpcRequest<tpb::CompleteTaskRequest>,
    ) -> GrpcResult<tpb::CompleteTaskResponse> {
        let user = caller(&request);
        reply(self.inner.complete(&user, request.into_inner()).await)
    }

    async fn close_task(
        &self,
        request: GrpcRequest<tpb::CloseTaskRequest>,
    ) -> GrpcResult<tpb::CloseTaskResponse> {
        let user = caller(&request);
        reply(self.inner.close(&user, request.into_inner()).await)
    }

    async fn publish_task(
        &self,
        request: GrpcRequest<tpb::PublishTaskRequest>,
    ) -> GrpcResult<tpb::PublishTaskResponse> {
        let user = caller(&request);
        reply(self.inner.publish(&user, request.into_inner()).await)
    }

    async fn request_stop(
        &self,
        request: GrpcRequest<tpb::RequestStopRequest>,
    ) -> GrpcResult<tpb::RequestStopResponse> {
        let user = caller(&request);
        reply(self.inner.request_stop(&user, request.into_inner()).await)
    }

    async fn reset_task(
        &self,
        request: GrpcRequest<tpb::ResetTaskRequest>,
    ) -> GrpcResult<tpb::ResetTaskResponse> {
        let user = caller(&request);
        reply(
            self.inner
                .reset(&user, request.into_inner())
                .await
                .map(|(r, _)| r),
        )
    }

    async fn archive_tasks(
        &self,
        request: GrpcRequest<tpb::ArchiveTasksRequest>,
    ) -> GrpcResult<tpb::ArchiveTasksResponse> {
        let user = caller(&request);
        reply(self.inner.archive(&user, request.into_inner()).await)
    }

    async fn delete_task(
        &self,
        request: GrpcRequest<tpb::DeleteTaskRequest>,
    ) -> GrpcResult<tpb::DeleteTaskResponse> {
        let user = caller(&request);
        reply(
            self.inner
                .delete(&user, request.into_inner())
                .await
                .map(|(r, _)| r),
        )
    }

    async fn clone_task(
        &self,
        request: GrpcRequest<tpb::CloneTaskRequest>,
    ) -> GrpcResult<tpb::CloneTaskResponse> {
        let user = caller(&request);
        reply(self.inner.clone_task(&user, request.into_inner()).await)
    }

    async fn enqueue_task(
        &self,
        request: GrpcRequest<tpb::EnqueueTaskRequest>,
    ) -> GrpcResult<tpb::EnqueueTaskResponse> {
        let user = caller(&request);
        reply(self.inner.enqueue(&user, request.into_inner(), None).await)
    }

    async fn dequeue_task(
        &self,
        request: GrpcRequest<tpb::DequeueTaskRequest>,
    ) -> GrpcResult<tpb::DequeueTaskResponse> {
        let user = caller(&request);
        reply(
            self.inner
                .dequeue(&user, request.into_inner())
                .await
                .map(|(r, _)| r),
        )
    }

    async fn get_task_stats(
        &self,
        request: GrpcRequest<tpb::GetTaskStatsRequest>,
    ) -> GrpcResult<tpb::GetTaskStatsResponse> {
        let user = caller(&request);
        let mut req = request.into_inner();
        for group in &mut req.groups {
            if group.include_subprojects {
                match self.inner.expand_projects(&user, &group.project_ids).await {
                    Ok(ids) => group.project_ids = ids,
                    Err(e) => return Err(Status::from(e)),
                }
                group.include_subprojects = false;
            }
        }
        reply(call!(self.inner.clients.tasks, get_task_stats, &user, req))
    }
}
