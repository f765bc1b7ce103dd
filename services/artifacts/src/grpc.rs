//! gRPC surface of the artifacts service: converts `tasklab.artifacts.v1`
//! messages to the domain core's types and back, applies field masks, and
//! turns domain errors into statuses with `.into()`. No rule lives here.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt as _};
use prost_types::{FieldMask, Timestamp};
use tasklab_error::{Error, ErrorCode, Result};
use tasklab_proto::artifacts::v1::{self as pb, upload_blob_request::Part};
use tasklab_proto::common::v1 as common;
use tonic::{Request, Response, Status, Streaming};

use crate::artifacts::{
    Artifact, ArtifactQuery, ArtifactService, DeleteArtifacts, Mode, NewArtifact, count,
};
use crate::blobs::{BlobCleanup, BlobInfo, BlobStore, UploadHeader};
use crate::models::{
    DeleteModel, DeleteModelsOfTask, Failure, KeptReason, MetadataItem, Model, ModelChanges,
    ModelQuery, ModelService, TagFilter,
};
use crate::paging::{OrderBy, PageRequest};
use crate::store::ModelCandidates;

/// gRPC metadata entry in which the gateway passes the id of the
/// authenticated caller; it becomes the `user_id` of created models when
/// the model names none.
pub(crate) const USER_METADATA_KEY: &str = "tasklab-user-id";

const ARTIFACT_FIELDS: &[&str] = &[
    "task_id",
    "key",
    "mode",
    "type",
    "uri",
    "hash",
    "content_size",
    "timestamp",
    "preview",
    "content_type",
    "data_hash",
    "metadata",
    "display_data",
    "blob_path",
    "updated",
];

const MODEL_FIELDS: &[&str] = &[
    "id",
    "name",
    "project_id",
    "task_id",
    "comment",
    "tags",
    "system_tags",
    "framework",
    "design",
    "labels",
    "uri",
    "blob_path",
    "ready",
    "published",
    "metadata",
    "iteration",
    "user_id",
    "created",
    "last_update",
    "parent_id",
];

/// Serves `ArtifactsService`, `ModelsService` and `BlobsService`.
#[derive(Debug, Clone)]
pub(crate) struct ArtifactsGrpc {
    artifacts: ArtifactService,
    models: ModelService,
    blobs: BlobStore,
}

impl ArtifactsGrpc {
    pub(crate) fn new(artifacts: ArtifactService, models: ModelService, blobs: BlobStore) -> Self {
        ArtifactsGrpc {
            artifacts,
            models,
            blobs,
        }
    }
}

// ---------------------------------------------------------------- artifacts

#[tonic::async_trait]
impl pb::artifacts_service_server::ArtifactsService for ArtifactsGrpc {
    async fn upsert_artifacts(
        &self,
        request: Request<pb::UpsertArtifactsRequest>,
    ) -> Result<Response<pb::UpsertArtifactsResponse>, Status> {
        let req = request.into_inner();
        let batch = req
            .artifacts
            .into_iter()
            .enumerate()
            .map(|(i, a)| new_artifact(a, i))
            .collect::<Result<Vec<_>>>()?;
        let done = self.artifacts.upsert(&req.task_id, batch).await?;
        Ok(Response::new(pb::UpsertArtifactsResponse {
            created: done.created,
            updated: done.updated,
            artifacts: done.artifacts.into_iter().map(artifact_pb).collect(),
        }))
    }

    async fn list_artifacts(
        &self,
        request: Request<pb::ListArtifactsRequest>,
    ) -> Result<Response<pb::ListArtifactsResponse>, Status> {
        let req = request.into_inner();
        let mask = Mask::parse(req.read_mask, ARTIFACT_FIELDS, "Artifact")?;
        let page = self
            .artifacts
            .list(ArtifactQuery {
                task_ids: req.task_ids,
                mode: mode_filter(req.mode, "mode")?,
                keys: req.keys,
                order_by: order_by(req.order_by),
                page: page_request(req.page),
            })
            .await?;
        Ok(Response::new(pb::ListArtifactsResponse {
            artifacts: page
                .items
                .into_iter()
                .map(|a| mask.artifact(artifact_pb(a)))
                .collect(),
            page: Some(common::PageResponse {
                next_page_token: page.next_page_token,
                total_size: page.total_size,
            }),
        }))
    }

    async fn delete_artifacts(
        &self,
        request: Request<pb::DeleteArtifactsRequest>,
    ) -> Result<Response<pb::DeleteArtifactsResponse>, Status> {
        let req = request.into_inner();
        let keys = req
            .artifacts
            .into_iter()
            .map(|k| Ok((k.key, mode_filter(k.mode, "artifacts.mode")?)))
            .collect::<Result<Vec<_>>>()?;
        let done = self
            .artifacts
            .delete(DeleteArtifacts {
                task_id: req.task_id,
                keys,
                all: req.all,
                mode: mode_filter(req.mode, "mode")?,
                delete_blobs: req.delete_blobs,
            })
            .await?;
        Ok(Response::new(pb::DeleteArtifactsResponse {
            deleted: count(done.removed.len()),
            removed: done
                .removed
                .into_iter()
                .map(|r| pb::RemovedArtifact {
                    key: r.key,
                    mode: mode_pb(r.mode),
                    uri: r.uri,
                    blob_path: r.blob_path,
                    blob: cleanup_pb(r.blob),
                })
                .collect(),
            stored_blob_paths: done.stored_blob_paths,
            external_uris: done.external_uris,
        }))
    }

    async fn copy_input_artifacts(
        &self,
        request: Request<pb::CopyInputArtifactsRequest>,
    ) -> Result<Response<pb::CopyInputArtifactsResponse>, Status> {
        let req = request.into_inner();
        let copies = self
            .artifacts
            .copy_inputs(&req.source_task_id, &req.target_task_id, req.replace)
            .await?;
        Ok(Response::new(pb::CopyInputArtifactsResponse {
            copied: count(copies.len()),
            artifacts: copies.into_iter().map(artifact_pb).collect(),
        }))
    }
}

fn new_artifact(a: pb::Artifact, index: usize) -> Result<NewArtifact> {
    Ok(NewArtifact {
        mode: mode_filter(a.mode, &format!("artifacts[{index}].mode"))?,
        timestamp: a.timestamp.map(time).transpose()?,
        metadata: a.metadata.into_iter().collect(),
        display_data: a
            .display_data
            .into_iter()
            .map(|kv| (kv.key, kv.value))
            .collect(),
        task_id: a.task_id,
        key: a.key,
        kind: a.r#type,
        uri: a.uri,
        hash: a.hash,
        content_size: a.content_size,
        preview: a.preview,
        content_type: a.content_type,
        data_hash: a.data_hash,
    })
}

fn artifact_pb(a: Artifact) -> pb::Artifact {
    pb::Artifact {
        task_id: a.task_id,
        key: a.key,
        mode: mode_pb(a.mode),
        r#type: a.kind,
        uri: a.uri,
        hash: a.hash,
        content_size: a.content_size,
        timestamp: Some(timestamp(a.timestamp)),
        preview: a.preview,
        content_type: a.content_type,
        data_hash: a.data_hash,
        metadata: a.metadata.into_iter().collect(),
        display_data: a
            .display_data
            .into_iter()
            .map(|(key, value)| pb::KeyValue { key, value })
            .collect(),
        blob_path: a.blob_path,
        updated: Some(timestamp(a.updated)),
    }
}

/// `None` for unspecified (a filter matching both, or output on write).
fn mode_filter(mode: i32, field: &str) -> Result<Option<Mode>> {
    match pb::ArtifactMode::try_from(mode) {
        Ok(pb::ArtifactMode::Unspecified) => Ok(None),
        Ok(pb::ArtifactMode::Input) => Ok(Some(Mode::Input)),
        Ok(pb::ArtifactMode::Output) => Ok(Some(Mode::Output)),
        Err(_) => Err(
            Error::invalid(format!("{field} has the unknown value {mode}"))
                .with_field("field", field),
        ),
    }
}

fn mode_pb(mode: Mode) -> i32 {
    match mode {
        Mode::Input => pb::ArtifactMode::Input as i32,
        Mode::Output => pb::ArtifactMode::Output as i32,
    }
}

fn cleanup_pb(c: BlobCleanup) -> i32 {
    (match c {
        BlobCleanup::NotRequested => pb::BlobCleanup::NotRequested,
        BlobCleanup::Deleted => pb::BlobCleanup::Deleted,
        BlobCleanup::KeptReferenced => pb::BlobCleanup::KeptReferenced,
        BlobCleanup::NotFound => pb::BlobCleanup::NotFound,
        BlobCleanup::External => pb::BlobCleanup::External,
        BlobCleanup::Failed => pb::BlobCleanup::Failed,
        BlobCleanup::NoUri => pb::BlobCleanup::NoUri,
    }) as i32
}

// ---------------------------------------------------------------- models

#[tonic::async_trait]
impl pb::models_service_server::ModelsService for ArtifactsGrpc {
    async fn create_model(
        &self,
        request: Request<pb::CreateModelRequest>,
    ) -> Result<Response<pb::CreateModelResponse>, Status> {
        let user = caller(&request);
        let m = request.into_inner().model.unwrap_or_default();
        let mut fields = model_fields(m)?;
        if fields.user_id.is_empty() {
            fields.user_id = user;
        }
        let model = self.models.create(fields).await?;
        Ok(Response::new(pb::CreateModelResponse {
            model: Some(model_pb(model)),
        }))
    }

    async fn get_model(
        &self,
        request: Request<pb::GetModelRequest>,
    ) -> Result<Response<pb::GetModelResponse>, Status> {
        let req = request.into_inner();
        let mask = Mask::parse(req.read_mask, MODEL_FIELDS, "Model")?;
        let model = self.models.get(&req.model_id).await?;
        Ok(Response::new(pb::GetModelResponse {
            model: Some(mask.model(model_pb(model))),
        }))
    }

    async fn list_models(
        &self,
        request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let req = request.into_inner();
        let mask = Mask::parse(req.read_mask, MODEL_FIELDS, "Model")?;
        let page = self
            .models
            .list(ModelQuery {
                candidates: ModelCandidates {
                    ids: req.ids,
                    project_ids: req.project_ids,
                    task_ids: req.task_ids,
                    user_ids: req.user_ids,
                    frameworks: req.frameworks,
                    ready: req.ready,
                    published: req.published,
                },
                name_pattern: req.name_pattern,
                tags: tag_filter(req.tags),
                system_tags: tag_filter(req.system_tags),
                include_archived: req.include_archived,
                order_by: order_by(req.order_by),
                page: page_request(req.page),
            })
            .await?;
        Ok(Response::new(pb::ListModelsResponse {
            models: page
                .items
                .into_iter()
                .map(|m| mask.model(model_pb(m)))
                .collect(),
            page: Some(common::PageResponse {
                next_page_token: page.next_page_token,
                total_size: page.total_size,
            }),
        }))
    }

    async fn update_model(
        &self,
        request: Request<pb::UpdateModelRequest>,
    ) -> Result<Response<pb::UpdateModelResponse>, Status> {
        let req = request.into_inner();
        let m = req.model.unwrap_or_default();
        let paths = req.update_mask.map(|mask| mask.paths).unwrap_or_default();
        if paths.is_empty() {
            return Err(
                Error::invalid("update_mask must name at least one field to update")
                    .with_field("field", "update_mask")
                    .into(),
            );
        }
        let id = m.id.clone();
        let changes = model_changes(m, &paths)?;
        let model = self.models.update(&id, changes).await?;
        Ok(Response::new(pb::UpdateModelResponse {
            model: Some(model_pb(model)),
        }))
    }

    async fn set_model_ready(
        &self,
        request: Request<pb::SetModelReadyRequest>,
    ) -> Result<Response<pb::SetModelReadyResponse>, Status> {
        let model = self
            .models
            .set_ready(&request.into_inner().model_id)
            .await?;
        Ok(Response::new(pb::SetModelReadyResponse {
            model: Some(model_pb(model)),
        }))
    }

    async fn publish_model(
        &self,
        request: Request<pb::PublishModelRequest>,
    ) -> Result<Response<pb::PublishModelResponse>, Status> {
        let (model, already) = self.models.publish(&request.into_inner().model_id).await?;
        Ok(Response::new(pb::PublishModelResponse {
            model: Some(model_pb(model)),
            already_published: already,
        }))
    }

    async fn archive_models(
        &self,
        request: Request<pb::ArchiveModelsRequest>,
    ) -> Result<Response<pb::ArchiveModelsResponse>, Status> {
        let ids = request.into_inner().model_ids;
        let (updated, failures) = self.models.set_archived(&ids, true).await?;
        Ok(Response::new(pb::ArchiveModelsResponse {
            updated,
            failures: failures.into_iter().map(failure_pb).collect(),
        }))
    }

    async fn unarchive_models(
        &self,
        request: Request<pb::UnarchiveModelsRequest>,
    ) -> Result<Response<pb::UnarchiveModelsResponse>, Status> {
        let ids = request.into_inner().model_ids;
        let (updated, failures) = self.models.set_archived(&ids, false).await?;
        Ok(Response::new(pb::UnarchiveModelsResponse {
            updated,
            failures: failures.into_iter().map(failure_pb).collect(),
        }))
    }

    async fn delete_model(
        &self,
        request: Request<pb::DeleteModelRequest>,
    ) -> Result<Response<pb::DeleteModelResponse>, Status> {
        let req = request.into_inner();
        let (model, blob) = self
            .models
            .delete(DeleteModel {
                id: req.model_id,
                force: req.force,
                delete_blob: req.delete_blob,
                used_by_task_ids: req.used_by_task_ids,
            })
            .await?;
        Ok(Response::new(pb::DeleteModelResponse {
            model: Some(model_pb(model)),
            blob: cleanup_pb(blob),
        }))
    }

    async fn delete_models_of_task(
        &self,
        request: Request<pb::DeleteModelsOfTaskRequest>,
    ) -> Result<Response<pb::DeleteModelsOfTaskResponse>, Status> {
        let req = request.into_inner();
        let done = self
            .models
            .delete_of_task(DeleteModelsOfTask {
                task_id: req.task_id,
                output_model_ids: req.output_model_ids,
                in_use_model_ids: req.in_use_model_ids,
                delete_published: req.delete_published,
                delete_in_use: req.delete_in_use,
                delete_blobs: req.delete_blobs,
            })
            .await?;
        Ok(Response::new(pb::DeleteModelsOfTaskResponse {
            deleted: done
                .deleted
                .into_iter()
                .map(|d| pb::DeletedModel {
                    model_id: d.id,
                    uri: d.uri,
                    blob_path: d.blob_path,
                    blob: cleanup_pb(d.blob),
                })
                .collect(),
            kept: done
                .kept
                .into_iter()
                .map(|(model_id, reason)| pb::KeptModel {
                    model_id,
                    reason: match reason {
                        KeptReason::Published => pb::KeptReason::Published,
                        KeptReason::InUse => pb::KeptReason::InUse,
                    } as i32,
                })
                .collect(),
            model_uris: done.model_uris,
        }))
    }
}

fn model_fields(m: pb::Model) -> Result<Model> {
    Ok(Model {
        name: m.name,
        project_id: m.project_id,
        task_id: m.task_id,
        comment: m.comment,
        tags: m.tags,
        system_tags: m.system_tags,
        framework: m.framework,
        design: m.design,
        labels: m.labels.into_iter().collect(),
        uri: m.uri,
        ready: m.ready,
        metadata: metadata(m.metadata)?,
        iteration: m.iteration,
        user_id: m.user_id,
        parent_id: m.parent_id,
        ..Model::default()
    })
}

fn metadata(
    items: std::collections::HashMap<String, pb::MetadataItem>,
) -> Result<BTreeMap<String, MetadataItem>> {
    items
        .into_iter()
        .map(|(key, item)| {
            if !item.key.is_empty() && item.key != key {
                return Err(Error::invalid(format!(
                    "metadata entry {key:?} carries the different key {:?}",
                    item.key
                ))
                .with_field("field", "metadata"));
            }
            Ok((
                key,
                MetadataItem {
                    kind: item.r#type,
                    value: item.value,
                },
            ))
        })
        .collect()
}

fn model_changes(m: pb::Model, paths: &[String]) -> Result<ModelChanges> {
    let mut c = ModelChanges::default();
    let mut labels = m.labels;
    let mut meta = metadata(m.metadata)?;
    for path in paths {
        match path.as_str() {
            "name" => c.name = Some(m.name.clone()),
            "project_id" => c.project_id = Some(m.project_id.clone()),
            "task_id" => c.task_id = Some(m.task_id.clone()),
            "comment" => c.comment = Some(m.comment.clone()),
            "tags" => c.tags = Some(m.tags.clone()),
            "system_tags" => c.system_tags = Some(m.system_tags.clone()),
            "framework" => c.framework = Some(m.framework.clone()),
            "design" => c.design = Some(m.design.clone()),
            "labels" => c.labels = Some(labels.clone().into_iter().collect()),
            "uri" => c.uri = Some(m.uri.clone()),
            "ready" => c.ready = Some(m.ready),
            "metadata" => c.metadata = Some(meta.clone()),
            "iteration" => c.iteration = Some(m.iteration),
            "parent_id" => c.parent_id = Some(m.parent_id.clone()),
            other => {
                if let Some(name) = other.strip_prefix("labels.").filter(|n| !n.is_empty()) {
                    c.label_entries.push((name.to_owned(), labels.remove(name)));
                } else if let Some(key) = other.strip_prefix("metadata.").filter(|k| !k.is_empty())
                {
                    c.metadata_entries.push((key.to_owned(), meta.remove(key)));
                } else {
                    return Err(Error::invalid(format!(
                        "update_mask path {other:?} cannot be updated; supported: name, \
                         project_id, task_id, comment, tags, system_tags, framework, design, \
                         labels, labels.<name>, uri, ready, metadata, metadata.<key>, \
                         iteration, parent_id"
                    ))
                    .with_field("field", "update_mask")
                    .with_field("path", other));
                }
            }
        }
    }
    Ok(c)
}

fn model_pb(m: Model) -> pb::Model {
    pb::Model {
        id: m.id,
        name: m.name,
        project_id: m.project_id,
        task_id: m.task_id,
        comment: m.comment,
        tags: m.tags,
        system_tags: m.system_tags,
        framework: m.framework,
        design: m.design,
        labels: m.labels.into_iter().collect(),
        uri: m.uri,
        blob_path: m.blob_path,
        ready: m.ready,
        published: m.published.map(timestamp),
        metadata: m
            .metadata
            .into_iter()
            .map(|(key, item)| {
                (
                    key.clone(),
                    pb::MetadataItem {
                        key,
                        r#type: item.kind,
                        value: item.value,
                    },
                )
            })
            .collect(),
        iteration: m.iteration,
        user_id: m.user_id,
        created: Some(timestamp(m.created)),
        last_update: Some(timestamp(m.last_update)),
        parent_id: m.parent_id,
    }
}

fn failure_pb(f: Failure) -> pb::BatchFailure {
    pb::BatchFailure {
        id: f.id,
        code: f.code.as_str().to_owned(),
        message: f.message,
    }
}

fn tag_filter(filter: Option<common::TagFilter>) -> TagFilter {
    let filter = filter.unwrap_or_default();
    TagFilter {
        any_of: filter.any_of,
        all_of: filter.all_of,
        none_of: filter.none_of,
    }
}

// ---------------------------------------------------------------- blobs

/// The data of an upload stream after its header: the chunks, in order,
/// ending cleanly only when the commit message came last. A stream that ends
/// without the commit, a message after it, a second header or a transport
/// error yields an error instead, so the upload is aborted and nothing is
/// stored: the end of the request stream alone never commits, because a
/// cancelled client can look like a clean end to the server.
fn upload_chunks(
    stream: Streaming<pb::UploadBlobRequest>,
) -> impl Stream<Item = Result<Bytes>> + Send {
    futures::stream::unfold(Some(stream), |state| async move {
        let mut stream = state?;
        let failed = |err: Error| Some((Err(err), None));
        match stream.next().await {
            Some(Ok(pb::UploadBlobRequest {
                part: Some(Part::Chunk(data)),
            })) => Some((Ok(Bytes::from(data)), Some(stream))),
            Some(Ok(pb::UploadBlobRequest {
                part: Some(Part::Commit(_)),
            })) => match stream.next().await {
                None => None,
                Some(Ok(_)) => failed(
                    Error::invalid("the commit must be the last message of an upload")
                        .with_field("field", "commit"),
                ),
                Some(Err(status)) => failed(Error::from_status(&status)),
            },
            Some(Ok(pb::UploadBlobRequest {
                part: Some(Part::Header(_)),
            })) => failed(
                Error::invalid("only the first message of an upload may be a header")
                    .with_field("field", "header"),
            ),
            Some(Ok(pb::UploadBlobRequest { part: None })) => failed(
                Error::invalid("an upload message carries no part").with_field("field", "part"),
            ),
            Some(Err(status)) => failed(Error::from_status(&status)),
            None => failed(
                Error::invalid(
                    "the upload stream ended without a commit message; nothing was stored",
                )
                .with_field("field", "commit")
                .with_field("reason", "upload_not_committed"),
            ),
        }
    })
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::DownloadBlobChunk, Status>> + Send>>;

#[tonic::async_trait]
impl pb::blobs_service_server::BlobsService for ArtifactsGrpc {
    async fn upload_blob(
        &self,
        request: Request<Streaming<pb::UploadBlobRequest>>,
    ) -> Result<Response<pb::UploadBlobResponse>, Status> {
        let mut stream = request.into_inner();
        let header = match stream.next().await {
            Some(Ok(pb::UploadBlobRequest {
                part: Some(Part::Header(header)),
            })) => header,
            Some(Err(status)) => return Err(status),
            _ => {
                return Err(
                    Error::invalid("the first message of an upload must be its header")
                        .with_field("field", "header")
                        .into(),
                );
            }
        };
        let chunks = Box::pin(upload_chunks(stream));
        let done = self
            .blobs
            .upload(
                UploadHeader {
                    path: header.path,
                    content_type: header.content_type,
                    expected_sha256: header.expected_sha256,
                    expected_size: header.expected_size,
                    fail_if_exists: header.fail_if_exists,
                },
                chunks,
            )
            .await?;
        Ok(Response::new(pb::UploadBlobResponse {
            path: done.info.path,
            uri: done.info.uri,
            size: done.info.size,
            sha256: done.info.sha256,
            content_type: done.info.content_type,
            replaced: done.replaced,
        }))
    }

    async fn download_blob(
        &self,
        request: Request<pb::DownloadBlobRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let req = request.into_inner();
        let download = self
            .blobs
            .download(&req.path, req.offset, req.length, req.chunk_size)
            .await?;
        let start = req.offset.unwrap_or(0);
        let first = pb::DownloadBlobChunk {
            info: Some(blob_pb(download.info)),
            offset: start,
            data: Vec::new(),
        };
        // The metadata rides on the first data chunk when there is one.
        let empty = download.len == 0;
        let mut first = Some(first);
        let mut lead = if empty { None } else { first.take() };
        let chunks = download.chunks.map(move |chunk| match chunk {
            Ok((offset, data)) => {
                let mut message = lead.take().unwrap_or_default();
                message.offset = offset;
                message.data = Vec::from(data);
                Ok(message)
            }
            Err(err) => Err(Status::from(err)),
        });
        let stream: ChunkStream = if empty {
            Box::pin(futures::stream::iter(first.map(Ok)))
        } else {
            Box::pin(chunks)
        };
        Ok(Response::new(stream))
    }

    async fn stat_blob(
        &self,
        request: Request<pb::StatBlobRequest>,
    ) -> Result<Response<pb::StatBlobResponse>, Status> {
        let info = self.blobs.stat(&request.into_inner().path).await?;
        Ok(Response::new(pb::StatBlobResponse {
            blob: Some(blob_pb(info)),
        }))
    }

    async fn list_blobs(
        &self,
        request: Request<pb::ListBlobsRequest>,
    ) -> Result<Response<pb::ListBlobsResponse>, Status> {
        let req = request.into_inner();
        let (blobs, common_prefixes, page) = self
            .blobs
            .list(&req.prefix, req.delimited, &page_request(req.page))
            .await?;
        Ok(Response::new(pb::ListBlobsResponse {
            blobs: blobs.into_iter().map(blob_pb).collect(),
            common_prefixes,
            page: Some(common::PageResponse {
                next_page_token: page.next_page_token,
                total_size: page.total_size,
            }),
        }))
    }

    async fn delete_blobs(
        &self,
        request: Request<pb::DeleteBlobsRequest>,
    ) -> Result<Response<pb::DeleteBlobsResponse>, Status> {
        let req = request.into_inner();
        let done = self
            .blobs
            .delete(&req.paths, &req.uris, &req.prefixes)
            .await?;
        Ok(Response::new(pb::DeleteBlobsResponse {
            deleted: done.deleted,
            not_found: done.not_found,
            external_uris: done.external_uris,
            deleted_under_prefixes: done.deleted_under_prefixes,
            failures: done
                .failures
                .into_iter()
                .map(|(id, message)| pb::BatchFailure {
                    id,
                    code: ErrorCode::Unavailable.as_str().to_owned(),
                    message,
                })
                .collect(),
        }))
    }
}

fn blob_pb(b: BlobInfo) -> pb::BlobInfo {
    pb::BlobInfo {
        path: b.path,
        uri: b.uri,
        size: b.size,
        sha256: b.sha256,
        content_type: b.content_type,
        created: Some(timestamp(b.created)),
    }
}

// ---------------------------------------------------------------- common

/// The authenticated caller's id, as passed by the gateway.
fn caller<T>(request: &Request<T>) -> String {
    request
        .metadata()
        .get(USER_METADATA_KEY)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn order_by(order: Vec<common::OrderBy>) -> Vec<OrderBy> {
    order
        .into_iter()
        .map(|o| OrderBy {
            field: o.field,
            descending: o.descending,
        })
        .collect()
}

fn page_request(page: Option<common::PageRequest>) -> PageRequest {
    let page = page.unwrap_or_default();
    PageRequest {
        page_size: page.page_size,
        page_token: page.page_token,
        include_total: page.include_total,
    }
}

/// The fields of a message to return; `None` means all of them.
#[derive(Debug, Clone, Default)]
struct Mask(Option<BTreeSet<String>>);

impl Mask {
    fn parse(mask: Option<FieldMask>, fields: &[&str], message: &str) -> Result<Mask> {
        let paths = mask.map(|m| m.paths).unwrap_or_default();
        if paths.is_empty() {
            return Ok(Mask(None));
        }
        for path in &paths {
            if !fields.contains(&path.as_str()) {
                return Err(Error::invalid(format!(
                    "read_mask path {path:?} is not a field of {message}"
                ))
                .with_field("field", "read_mask")
                .with_field("path", path));
            }
        }
        Ok(Mask(Some(paths.into_iter().collect())))
    }

    fn has(&self, field: &str) -> bool {
        self.0.as_ref().is_none_or(|f| f.contains(field))
    }

    fn artifact(&self, a: pb::Artifact) -> pb::Artifact {
        if self.0.is_none() {
            return a;
        }
        let d = pb::Artifact::default();
        macro_rules! keep {
            ($($f:ident : $name:literal),*) => {
                pb::Artifact { $($f: if self.has($name) { a.$f } else { d.$f },)* }
            };
        }
        keep!(task_id: "task_id", key: "key", mode: "mode", r#type: "type", uri: "uri",
            hash: "hash", content_size: "content_size", timestamp: "timestamp",
            preview: "preview", content_type: "content_type", data_hash: "data_hash",
            metadata: "metadata", display_data: "display_data", blob_path: "blob_path",
            updated: "updated")
    }

    fn model(&self, m: pb::Model) -> pb::Model {
        if self.0.is_none() {
            return m;
        }
        let d = pb::Model::default();
        macro_rules! keep {
            ($($f:ident),*) => {
                pb::Model { $($f: if self.has(stringify!($f)) { m.$f } else { d.$f },)* }
            };
        }
        keep!(
            id,
            name,
            project_id,
            task_id,
            comment,
            tags,
            system_tags,
            framework,
            design,
            labels,
            uri,
            blob_path,
            ready,
            published,
            metadata,
            iteration,
            user_id,
            created,
            last_update,
            parent_id
        )
    }
}

fn timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

fn time(t: Timestamp) -> Result<DateTime<Utc>> {
    u32::try_from(t.nanos)
        .ok()
        .and_then(|nanos| DateTime::from_timestamp(t.seconds, nanos))
        .ok_or_else(|| {
            Error::invalid("a timestamp is out of range").with_field("field", "timestamp")
        })
}
