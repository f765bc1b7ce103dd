//! Artifacts and the model registry through the generated gRPC clients, on
//! SQLite and PostgreSQL.

mod common;

use std::collections::HashMap;

use common::{FILES_URL, code, start_local};
use prost_types::FieldMask;
use tasklab_db::testing::TestDb;
use tasklab_error::ErrorCode;
use tasklab_proto::artifacts::v1::*;
use tasklab_proto::common::v1::{OrderBy, PageRequest, TagFilter};

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let db = tasklab_db::testing::TestDb::sqlite();
                    super::$name(&db.url).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(db) = tasklab_db::testing::TestDb::postgres(stringify!($name)).await
                    else {
                        return;
                    };
                    super::$name(&db.url).await;
                }
            )*
        }
    };
}

on_both!(
    artifacts_upsert_list_and_replace,
    artifacts_bad_input_changes_nothing,
    artifacts_reset_delete_and_clone,
    models_create_filter_order_and_page,
    models_edit_publish_archive,
    models_delete_refused_while_in_use,
    models_of_task_cleanup,
);

// Keep the unused import lint quiet when only one backend runs.
const _: fn() -> TestDb = TestDb::sqlite;

fn artifact(key: &str, mode: ArtifactMode, uri: &str) -> Artifact {
    Artifact {
        key: key.to_owned(),
        mode: mode as i32,
        r#type: "dict".to_owned(),
        uri: uri.to_owned(),
        hash: "abc".to_owned(),
        content_size: 14,
        preview: format!("preview of {key}"),
        content_type: "application/json".to_owned(),
        metadata: HashMap::from([("k".to_owned(), "v".to_owned())]),
        display_data: vec![KeyValue {
            key: "rows".to_owned(),
            value: "3".to_owned(),
        }],
        ..Artifact::default()
    }
}

async fn list_all(
    svc: &mut common::Service,
    task_ids: &[&str],
    mode: ArtifactMode,
) -> Vec<Artifact> {
    svc.artifacts
        .list_artifacts(ListArtifactsRequest {
            task_ids: task_ids.iter().map(|s| (*s).to_owned()).collect(),
            mode: mode as i32,
            ..ListArtifactsRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .artifacts
}

async fn artifacts_upsert_list_and_replace(url: &str) {
    let mut svc = start_local(url).await;
    let stored_uri = format!("{FILES_URL}/proj/exp.t1/artifacts/my%20art/my.json");
    let res = svc
        .artifacts
        .upsert_artifacts(UpsertArtifactsRequest {
            task_id: "t1".to_owned(),
            artifacts: vec![
                artifact("b", ArtifactMode::Unspecified, &stored_uri),
                artifact("a", ArtifactMode::Input, "s3://bucket/data.csv"),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((res.created, res.updated), (2, 0));
    assert_eq!(res.artifacts[0].mode, ArtifactMode::Output as i32);
    assert_eq!(
        res.artifacts[0].blob_path,
        "proj/exp.t1/artifacts/my art/my.json"
    );
    assert_eq!(res.artifacts[1].blob_path, "");
    assert!(res.artifacts[0].timestamp.is_some() && res.artifacts[0].updated.is_some());

    // Same identity again: every field replaced; a new key: created.
    let mut replaced = artifact("b", ArtifactMode::Output, "");
    replaced.preview = "new".to_owned();
    replaced.metadata.clear();
    let res = svc
        .artifacts
        .upsert_artifacts(UpsertArtifactsRequest {
            task_id: "t1".to_owned(),
            artifacts: vec![replaced, artifact("b", ArtifactMode::Input, "")],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((res.created, res.updated), (1, 1));

    let all = list_all(&mut svc, &["t1"], ArtifactMode::Unspecified).await;
    let ids: Vec<(String, i32)> = all.iter().map(|a| (a.key.clone(), a.mode)).collect();
    assert_eq!(
        ids,
        vec![
            ("a".to_owned(), ArtifactMode::Input as i32),
            ("b".to_owned(), ArtifactMode::Input as i32),
            ("b".to_owned(), ArtifactMode::Output as i32),
        ]
    );
    let b_out = &all[2];
    assert_eq!(b_out.preview, "new");
    assert!(b_out.metadata.is_empty());
    assert_eq!(b_out.uri, "");
    assert_eq!(b_out.display_data[0].value, "3");

    // Filters, read mask, ordering, paging.
    let page = svc
        .artifacts
        .list_artifacts(ListArtifactsRequest {
            task_ids: vec!["t1".to_owned()],
            mode: ArtifactMode::Input as i32,
            order_by: vec![OrderBy {
                field: "key".to_owned(),
                descending: true,
            }],
            read_mask: Some(FieldMask {
                paths: vec!["key".to_owned()],
            }),
            page: Some(PageRequest {
                page_size: 1,
                include_total: true,
                ..PageRequest::default()
            }),
            ..ListArtifactsRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.artifacts.len(), 1);
    assert_eq!(page.artifacts[0].key, "b");
    assert_eq!(page.artifacts[0].preview, "", "masked out");
    let info = page.page.unwrap();
    assert_eq!(info.total_size, Some(2));
    let next = svc
        .artifacts
        .list_artifacts(ListArtifactsRequest {
            task_ids: vec!["t1".to_owned()],
            mode: ArtifactMode::Input as i32,
            order_by: vec![OrderBy {
                field: "key".to_owned(),
                descending: true,
            }],
            read_mask: Some(FieldMask {
                paths: vec!["key".to_owned()],
            }),
            page: Some(PageRequest {
                page_size: 1,
                page_token: info.next_page_token,
                ..PageRequest::default()
            }),
            ..ListArtifactsRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.artifacts[0].key, "a");
    assert!(next.page.unwrap().next_page_token.is_empty());

    let keys = svc
        .artifacts
        .list_artifacts(ListArtifactsRequest {
            task_ids: vec!["t1".to_owned(), "other".to_owned()],
            keys: vec!["a".to_owned()],
            ..ListArtifactsRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(keys.artifacts.len(), 1);
}

async fn artifacts_bad_input_changes_nothing(url: &str) {
    let mut svc = start_local(url).await;
    svc.artifacts
        .upsert_artifacts(UpsertArtifactsRequest {
            task_id: "t1".to_owned(),
            artifacts: vec![artifact("keep", ArtifactMode::Output, "")],
        })
        .await
        .unwrap();
    let before = list_all(&mut svc, &["t1"], ArtifactMode::Unspecified).await;

    let mut too_long_preview = artifact("x", ArtifactMode::Output, "");
    too_long_preview.preview = "p".repeat(256 * 1024 + 1);
    let mut foreign = artifact("y", ArtifactMode::Output, "");
    foreign.task_id = "t2".to_owned();
    let mut nul = artifact("z", ArtifactMode::Output, "");
    nul.uri = "a\0b".to_owned();
    let cases: Vec<(Vec<Artifact>, &str, ErrorCode)> = vec![
        (
            vec![
                artifact("ok", ArtifactMode::Output, ""),
                artifact("", ArtifactMode::Output, ""),
            ],
            "t1",
            ErrorCode::InvalidArgument,
        ),
        (
            vec![artifact("ok", ArtifactMode::Output, ""), too_long_preview],
            "t1",
            ErrorCode::InvalidArgument,
        ),
        (vec![foreign], "t1", ErrorCode::InvalidArgument),
        (vec![nul], "t1", ErrorCode::InvalidArgument),
        (
            vec![artifact("k", ArtifactMode::Output, "")],
            "",
            ErrorCode::MissingField,
        ),
        (
            (0..1001)
                .map(|i| artifact(&format!("k{i}"), ArtifactMode::Output, ""))
                .collect(),
            "t1",
            ErrorCode::TooLarge,
        ),
    ];
    for (artifacts, task_id, expected) in cases {
        let err = svc
            .artifacts
            .upsert_artifacts(UpsertArtifactsRequest {
                task_id: task_id.to_owned(),
                artifacts,
            })
            .await
            .unwrap_err();
        assert_eq!(code(&err), expected, "{err:?}");
    }
    assert_eq!(
        list_all(&mut svc, &["t1"], ArtifactMode::Unspecified).await,
        before
    );

    let err = svc
        .artifacts
        .list_artifacts(ListArtifactsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::MissingField);
    let err = svc
        .artifacts
        .list_artifacts(ListArtifactsRequest {
            task_ids: vec!["t1".to_owned()],
            order_by: vec![OrderBy {
                field: "size".to_owned(),
                descending: false,
            }],
            ..ListArtifactsRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::InvalidOrderBy);
    let err = svc
        .artifacts
        .delete_artifacts(DeleteArtifactsRequest {
            task_id: "t1".to_owned(),
            all: true,
            artifacts: vec![ArtifactKey {
                key: "keep".to_owned(),
                mode: 0,
            }],
            ..DeleteArtifactsRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::InvalidArgument);
    let err = svc
        .artifacts
        .copy_input_artifacts(CopyInputArtifactsRequest {
            source_task_id: "t1".to_owned(),
            target_task_id: "t1".to_owned(),
            replace: false,
        })
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::InvalidArgument);
    assert_eq!(
        list_all(&mut svc, &["t1"], ArtifactMode::Unspecified).await,
        before
    );
}

async fn artifacts_reset_delete_and_clone(url: &str) {
    let mut svc = start_local(url).await;
    let stored = format!("{FILES_URL}/p/t/artifacts/out/out.bin");
    svc.artifacts
        .upsert_artifacts(UpsertArtifactsRequest {
            task_id: "src".to_owned(),
            artifacts: vec![
                artifact("in1", ArtifactMode::Input, "s3://b/in1"),
                artifact("in2", ArtifactMode::Input, ""),
                artifact("out", ArtifactMode::Output, &stored),
                artifact("ext", ArtifactMode::Output, "gs://b/ext"),
            ],
        })
        .await
        .unwrap();

    // Clone: inputs are copied, outputs are not.
    let copied = svc
        .artifacts
        .copy_input_artifacts(CopyInputArtifactsRequest {
            source_task_id: "src".to_owned(),
            target_task_id: "clone".to_owned(),
            replace: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(copied.copied, 2);
    let clone = list_all(&mut svc, &["clone"], ArtifactMode::Unspecified).await;
    assert_eq!(clone.len(), 2);
    assert!(clone.iter().all(|a| a.mode == ArtifactMode::Input as i32));
    assert_eq!(clone[0].uri, "s3://b/in1");

    // Reset: outputs go, inputs stay.
    let res = svc
        .artifacts
        .delete_artifacts(DeleteArtifactsRequest {
            task_id: "src".to_owned(),
            all: true,
            mode: ArtifactMode::Output as i32,
            delete_blobs: false,
            ..DeleteArtifactsRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(res.deleted, 2);
    assert_eq!(res.stored_blob_paths, vec!["p/t/artifacts/out/out.bin"]);
    assert_eq!(res.external_uris, vec!["gs://b/ext"]);
    let outcome: HashMap<String, i32> = res
        .removed
        .iter()
        .map(|r| (r.key.clone(), r.blob))
        .collect();
    assert_eq!(outcome["out"], BlobCleanup::NotRequested as i32);
    assert_eq!(outcome["ext"], BlobCleanup::External as i32);
    let left = list_all(&mut svc, &["src"], ArtifactMode::Unspecified).await;
    assert_eq!(left.len(), 2);
    assert!(left.iter().all(|a| a.mode == ArtifactMode::Input as i32));

    // Named delete: missing keys are skipped; then delete everything.
    let res = svc
        .artifacts
        .delete_artifacts(DeleteArtifactsRequest {
            task_id: "src".to_owned(),
            artifacts: vec![
                ArtifactKey {
                    key: "in2".to_owned(),
                    mode: ArtifactMode::Input as i32,
                },
                ArtifactKey {
                    key: "nope".to_owned(),
                    mode: 0,
                },
            ],
            ..DeleteArtifactsRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(res.deleted, 1);
    assert_eq!(res.removed[0].blob, BlobCleanup::NoUri as i32);
    let res = svc
        .artifacts
        .delete_artifacts(DeleteArtifactsRequest {
            task_id: "src".to_owned(),
            all: true,
            ..DeleteArtifactsRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(res.deleted, 1);
    assert!(
        list_all(&mut svc, &["src"], ArtifactMode::Unspecified)
            .await
            .is_empty()
    );
    assert_eq!(
        list_all(&mut svc, &["clone"], ArtifactMode::Unspecified)
            .await
            .len(),
        2
    );
}

fn model(name: &str) -> Model {
    Model {
        name: name.to_owned(),
        ..Model::default()
    }
}

async fn create(svc: &mut common::Service, m: Model) -> Model {
    svc.models
        .create_model(CreateModelRequest { model: Some(m) })
        .await
        .unwrap()
        .into_inner()
        .model
        .unwrap()
}

async fn names(svc: &mut common::Service, req: ListModelsRequest) -> Vec<String> {
    svc.models
        .list_models(req)
        .await
        .unwrap()
        .into_inner()
        .models
        .into_iter()
        .map(|m| m.name)
        .collect()
}

async fn models_create_filter_order_and_page(url: &str) {
    let mut svc = start_local(url).await;
    let a = create(
        &mut svc,
        Model {
            project_id: "p1".to_owned(),
            framework: "PyTorch".to_owned(),
            tags: vec!["best".to_owned(), "best".to_owned(), "a".to_owned()],
            task_id: "t1".to_owned(),
            iteration: Some(3),
            ..model("resnet-a")
        },
    )
    .await;
    assert_eq!(a.id.len(), 32);
    assert_eq!(a.tags, vec!["a", "best"]);
    assert!(a.published.is_none() && a.created.is_some());
    let b = create(
        &mut svc,
        Model {
            project_id: "p1".to_owned(),
            framework: "TensorFlow".to_owned(),
            tags: vec!["old".to_owned()],
            ready: true,
            ..model("resnet-b")
        },
    )
    .await;
    let _c = create(
        &mut svc,
        Model {
            project_id: "p2".to_owned(),
            framework: "PyTorch".to_owned(),
            ..model("bert")
        },
    )
    .await;
    svc.models
        .archive_models(ArchiveModelsRequest {
            model_ids: vec![b.id.clone()],
        })
        .await
        .unwrap();

    let all = ListModelsRequest {
        include_archived: true,
        ..ListModelsRequest::default()
    };
    // Default order: newest first.
    assert_eq!(
        names(&mut svc, all.clone()).await,
        ["bert", "resnet-b", "resnet-a"]
    );
    assert_eq!(
        names(&mut svc, ListModelsRequest::default()).await,
        ["bert", "resnet-a"],
        "archived models are hidden by default"
    );
    let cases: Vec<(ListModelsRequest, Vec<&str>)> = vec![
        (
            ListModelsRequest {
                project_ids: vec!["p1".to_owned()],
                ..all.clone()
            },
            vec!["resnet-b", "resnet-a"],
        ),
        (
            ListModelsRequest {
                name_pattern: "^res.*-a$".to_owned(),
                ..all.clone()
            },
            vec!["resnet-a"],
        ),
        (
            ListModelsRequest {
                tags: Some(TagFilter {
                    none_of: vec!["old".to_owned()],
                    ..TagFilter::default()
                }),
                ..all.clone()
            },
            vec!["bert", "resnet-a"],
        ),
        (
            ListModelsRequest {
                frameworks: vec!["PyTorch".to_owned()],
                ..all.clone()
            },
            vec!["bert", "resnet-a"],
        ),
        (
            ListModelsRequest {
                ready: Some(true),
                ..all.clone()
            },
            vec!["resnet-b"],
        ),
        (
            ListModelsRequest {
                task_ids: vec!["t1".to_owned()],
                ..all.clone()
            },
            vec!["resnet-a"],
        ),
        (
            ListModelsRequest {
                published: Some(true),
                ..all.clone()
            },
            vec![],
        ),
        (
            ListModelsRequest {
                system_tags: Some(TagFilter {
                    any_of: vec!["archived".to_owned()],
                    ..TagFilter::default()
                }),
                ..ListModelsRequest::default()
            },
            vec!["resnet-b"],
        ),
        (
            ListModelsRequest {
                order_by: vec![OrderBy {
                    field: "name".to_owned(),
                    descending: false,
                }],
                ..all.clone()
            },
            vec!["bert", "resnet-a", "resnet-b"],
        ),
        (
            ListModelsRequest {
                order_by: vec![OrderBy {
                    field: "iteration".to_owned(),
                    descending: true,
                }],
                page: Some(PageRequest {
                    page_size: 1,
                    ..PageRequest::default()
                }),
                ..all.clone()
            },
            vec!["resnet-a"],
        ),
    ];
    for (req, expected) in cases {
        assert_eq!(names(&mut svc, req.clone()).await, expected, "{req:?}");
    }

    // Paging walks every model once.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let res = svc
            .models
            .list_models(ListModelsRequest {
                page: Some(PageRequest {
                    page_size: 2,
                    page_token: token.clone(),
                    ..PageRequest::default()
                }),
                ..all.clone()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(res.models.into_iter().map(|m| m.name));
        token = res.page.unwrap().next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(seen, ["bert", "resnet-b", "resnet-a"]);

    let err = svc
        .models
        .list_models(ListModelsRequest {
            name_pattern: "(".to_owned(),
            ..ListModelsRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::InvalidRegex);
    let err = svc
        .models
        .list_models(ListModelsRequest {
            order_by: vec![OrderBy {
                field: "uri".to_owned(),
                descending: false,
            }],
            ..ListModelsRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::InvalidOrderBy);
    let err = svc
        .models
        .create_model(CreateModelRequest {
            model: Some(model("")),
        })
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::MissingField);
    let err = svc
        .models
        .get_model(GetModelRequest {
            model_id: "0123456789abcdef0123456789abcdef".to_owned(),
            read_mask: None,
        })
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::ModelNotFound);
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert_eq!(names(&mut svc, all).await.len(), 3);
}

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

async fn get(svc: &mut common::Service, id: &str) -> Model {
    svc.models
        .get_model(GetModelRequest {
            model_id: id.to_owned(),
            read_mask: None,
        })
        .await
        .unwrap()
        .into_inner()
        .model
        .unwrap()
}

async fn models_edit_publish_archive(url: &str) {
    let mut svc = start_local(url).await;
    let m = create(
        &mut svc,
        Model {
            uri: format!("{FILES_URL}/uploading_file"),
            labels: HashMap::from([("cat".to_owned(), 0), ("dog".to_owned(), 1)]),
            ..model("Anonymous model")
        },
    )
    .await;
    assert_eq!(m.blob_path, "uploading_file");

    // The SDK's models.edit after the upload.
    let edited = svc
        .models
        .update_model(UpdateModelRequest {
            model: Some(Model {
                id: m.id.clone(),
                name: "m1".to_owned(),
                uri: "s3://bucket/m1.pt".to_owned(),
                framework: "PyTorch".to_owned(),
                design: "layers: 3".to_owned(),
                iteration: Some(3),
                labels: HashMap::from([("bird".to_owned(), 2)]),
                metadata: HashMap::from([(
                    "epochs".to_owned(),
                    MetadataItem {
                        key: "epochs".to_owned(),
                        r#type: "int".to_owned(),
                        value: "10".to_owned(),
                    },
                )]),
                ..Model::default()
            }),
            update_mask: mask(&[
                "name",
                "uri",
                "framework",
                "design",
                "iteration",
                "labels.bird",
                "labels.cat",
                "metadata.epochs",
            ]),
        })
        .await
        .unwrap()
        .into_inner()
        .model
        .unwrap();
    assert_eq!(edited.name, "m1");
    assert_eq!(edited.blob_path, "", "external uri");
    assert_eq!(edited.iteration, Some(3));
    assert_eq!(
        edited.labels,
        HashMap::from([("dog".to_owned(), 1), ("bird".to_owned(), 2)])
    );
    assert_eq!(edited.metadata["epochs"].value, "10");
    assert_eq!(get(&mut svc, &m.id).await, edited);

    for (paths, expected) in [
        (vec![], ErrorCode::InvalidArgument),
        (vec!["id"], ErrorCode::InvalidArgument),
        (vec!["published"], ErrorCode::InvalidArgument),
        (vec!["nope"], ErrorCode::InvalidArgument),
    ] {
        let err = svc
            .models
            .update_model(UpdateModelRequest {
                model: Some(Model {
                    id: m.id.clone(),
                    ..Model::default()
                }),
                update_mask: mask(&paths),
            })
            .await
            .unwrap_err();
        assert_eq!(code(&err), expected, "{paths:?}");
    }
    let err = svc
        .models
        .update_model(UpdateModelRequest {
            model: Some(Model {
                id: "missing".to_owned(),
                name: "x".to_owned(),
                ..Model::default()
            }),
            update_mask: mask(&["name"]),
        })
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::ModelNotFound);

    let ready = svc
        .models
        .set_model_ready(SetModelReadyRequest {
            model_id: m.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .model
        .unwrap();
    assert!(ready.ready);

    let published = svc
        .models
        .publish_model(PublishModelRequest {
            model_id: m.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!published.already_published);
    assert!(published.model.unwrap().published.is_some());
    let again = svc
        .models
        .publish_model(PublishModelRequest {
            model_id: m.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(again.already_published);

    // Published: read-only except name, comment and tags.
    let before = get(&mut svc, &m.id).await;
    for path in ["uri", "framework", "labels", "metadata.epochs", "ready"] {
        let err = svc
            .models
            .update_model(UpdateModelRequest {
                model: Some(Model {
                    id: m.id.clone(),
                    name: "renamed".to_owned(),
                    ..Model::default()
                }),
                update_mask: mask(&["name", path]),
            })
            .await
            .unwrap_err();
        assert_eq!(code(&err), ErrorCode::ModelPublished, "{path}");
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    }
    assert_eq!(get(&mut svc, &m.id).await, before);
    let renamed = svc
        .models
        .update_model(UpdateModelRequest {
            model: Some(Model {
                id: m.id.clone(),
                name: "renamed".to_owned(),
                comment: "final".to_owned(),
                tags: vec!["prod".to_owned()],
                ..Model::default()
            }),
            update_mask: mask(&["name", "comment", "tags"]),
        })
        .await
        .unwrap()
        .into_inner()
        .model
        .unwrap();
    assert_eq!(
        (renamed.name.as_str(), renamed.comment.as_str()),
        ("renamed", "final")
    );

    // Archive and unarchive, with a per-model failure for an unknown id.
    let res = svc
        .models
        .archive_models(ArchiveModelsRequest {
            model_ids: vec![m.id.clone(), "unknown".to_owned()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(res.updated, 1);
    assert_eq!(res.failures.len(), 1);
    assert_eq!(res.failures[0].code, "model_not_found");
    assert_eq!(get(&mut svc, &m.id).await.system_tags, vec!["archived"]);
    let res = svc
        .models
        .archive_models(ArchiveModelsRequest {
            model_ids: vec![m.id.clone()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(res.updated, 0, "already archived");
    let res = svc
        .models
        .unarchive_models(UnarchiveModelsRequest {
            model_ids: vec![m.id.clone()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(res.updated, 1);
    assert!(get(&mut svc, &m.id).await.system_tags.is_empty());
    let err = svc
        .models
        .archive_models(ArchiveModelsRequest { model_ids: vec![] })
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::EmptyBatch);
}

async fn models_delete_refused_while_in_use(url: &str) {
    let mut svc = start_local(url).await;
    let m = create(&mut svc, model("shared")).await;
    let err = svc
        .models
        .delete_model(DeleteModelRequest {
            model_id: m.id.clone(),
            used_by_task_ids: vec!["other-task".to_owned()],
            ..DeleteModelRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::ModelInUse);
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert_eq!(get(&mut svc, &m.id).await, m, "nothing changed");

    let p = create(&mut svc, model("published")).await;
    svc.models
        .publish_model(PublishModelRequest {
            model_id: p.id.clone(),
        })
        .await
        .unwrap();
    let err = svc
        .models
        .delete_model(DeleteModelRequest {
            model_id: p.id.clone(),
            ..DeleteModelRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::ModelPublished);
    get(&mut svc, &p.id).await;

    let res = svc
        .models
        .delete_model(DeleteModelRequest {
            model_id: m.id.clone(),
            force: true,
            used_by_task_ids: vec!["other-task".to_owned()],
            ..DeleteModelRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(res.model.unwrap().id, m.id);
    assert_eq!(res.blob, BlobCleanup::NoUri as i32);
    let err = svc
        .models
        .get_model(GetModelRequest {
            model_id: m.id.clone(),
            read_mask: None,
        })
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::ModelNotFound);
    let err = svc
        .models
        .delete_model(DeleteModelRequest {
            model_id: m.id.clone(),
            ..DeleteModelRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::ModelNotFound);
}

async fn models_of_task_cleanup(url: &str) {
    let mut svc = start_local(url).await;
    let own = create(
        &mut svc,
        Model {
            task_id: "t".to_owned(),
            uri: "s3://b/own.pt".to_owned(),
            ..model("own")
        },
    )
    .await;
    let published = create(
        &mut svc,
        Model {
            task_id: "t".to_owned(),
            ..model("published")
        },
    )
    .await;
    svc.models
        .publish_model(PublishModelRequest {
            model_id: published.id.clone(),
        })
        .await
        .unwrap();
    let used = create(
        &mut svc,
        Model {
            task_id: "t".to_owned(),
            ..model("used")
        },
    )
    .await;
    let referenced = create(&mut svc, model("listed in models.output")).await;
    let unrelated = create(
        &mut svc,
        Model {
            task_id: "other".to_owned(),
            ..model("unrelated")
        },
    )
    .await;

    let res = svc
        .models
        .delete_models_of_task(DeleteModelsOfTaskRequest {
            task_id: "t".to_owned(),
            output_model_ids: vec![referenced.id.clone(), "unknown".to_owned()],
            in_use_model_ids: vec![used.id.clone()],
            delete_blobs: true,
            ..DeleteModelsOfTaskRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut deleted: Vec<String> = res.deleted.iter().map(|d| d.model_id.clone()).collect();
    deleted.sort();
    let mut expected = vec![own.id.clone(), referenced.id.clone()];
    expected.sort();
    assert_eq!(deleted, expected);
    assert_eq!(res.model_uris, vec!["s3://b/own.pt"]);
    let own_result = res.deleted.iter().find(|d| d.model_id == own.id).unwrap();
    assert_eq!(own_result.blob, BlobCleanup::External as i32);
    let mut kept: Vec<(String, i32)> = res
        .kept
        .iter()
        .map(|k| (k.model_id.clone(), k.reason))
        .collect();
    kept.sort();
    let mut expected_kept = vec![
        (published.id.clone(), KeptReason::Published as i32),
        (used.id.clone(), KeptReason::InUse as i32),
    ];
    expected_kept.sort();
    assert_eq!(kept, expected_kept);
    get(&mut svc, &unrelated.id).await;
    get(&mut svc, &used.id).await;

    let err = svc
        .models
        .delete_models_of_task(DeleteModelsOfTaskRequest::default())
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::MissingField);
}
