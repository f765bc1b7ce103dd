//! The blob store's behaviour, written once and run against every storage
//! backend (local directory, S3-compatible server).

use std::collections::HashMap;

use tasklab_error::ErrorCode;
use tasklab_proto::artifacts::v1::*;
use tasklab_proto::common::v1::PageRequest;

use super::{
    FILES_URL, Service, code, commit, content_chunk, content_sha256, download, download_range,
    header, upload_bytes, upload_generated, upload_messages,
};

pub async fn round_trip(svc: &mut Service) {
    let size = 3 * 1024 * 1024 + 17;
    let sha = content_sha256(1, size);
    let res = upload_generated(
        &mut svc.blobs,
        UploadBlobHeader {
            expected_sha256: Some(sha.to_uppercase()),
            expected_size: Some(size),
            ..header("proj/exp.t1/models/model.bin")
        },
        1,
        size,
        1 << 20,
    )
    .await
    .unwrap();
    assert_eq!(res.path, "proj/exp.t1/models/model.bin");
    assert_eq!(res.uri, format!("{FILES_URL}/proj/exp.t1/models/model.bin"));
    assert_eq!((res.size, res.sha256.as_str()), (size, sha.as_str()));
    assert_eq!(res.content_type, "application/octet-stream");
    assert!(!res.replaced);

    let stat = svc
        .blobs
        .stat_blob(StatBlobRequest {
            path: res.path.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .blob
        .unwrap();
    assert_eq!((stat.size, stat.sha256.as_str()), (size, sha.as_str()));

    let data = download(&mut svc.blobs, &res.path).await.unwrap();
    assert_eq!(data.len() as u64, size);
    assert_eq!(data, content_chunk(1, 0, size as usize));
    let part = download_range(&mut svc.blobs, &res.path, Some(1000), Some(300_000))
        .await
        .unwrap();
    assert_eq!(part, content_chunk(1, 1000, 300_000));
    let tail = download_range(&mut svc.blobs, &res.path, Some(size - 5), Some(100))
        .await
        .unwrap();
    assert_eq!(tail.len(), 5);
    let empty = download_range(&mut svc.blobs, &res.path, Some(size), None)
        .await
        .unwrap();
    assert!(empty.is_empty());
    let err = download_range(&mut svc.blobs, &res.path, Some(size + 1), None)
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::InvalidArgument);

    // Replace; then refuse with fail_if_exists and keep the content.
    let res = upload_bytes(
        &mut svc.blobs,
        header("proj/exp.t1/models/model.bin"),
        b"v2",
    )
    .await
    .unwrap();
    assert!(res.replaced);
    let err = upload_bytes(
        &mut svc.blobs,
        UploadBlobHeader {
            fail_if_exists: true,
            ..header("proj/exp.t1/models/model.bin")
        },
        b"v3",
    )
    .await
    .unwrap_err();
    assert_eq!(code(&err), ErrorCode::AlreadyExists);
    assert_eq!(
        download(&mut svc.blobs, "proj/exp.t1/models/model.bin")
            .await
            .unwrap(),
        b"v2"
    );

    // Empty blob; content type from the header or the extension.
    let res = upload_bytes(&mut svc.blobs, header("a/empty.json"), b"")
        .await
        .unwrap();
    assert_eq!(res.size, 0);
    assert_eq!(res.content_type, "application/json");
    assert!(
        download(&mut svc.blobs, "a/empty.json")
            .await
            .unwrap()
            .is_empty()
    );
    let res = upload_bytes(
        &mut svc.blobs,
        UploadBlobHeader {
            content_type: "text/x-custom".to_owned(),
            ..header("a/odd name ü#?%.txt")
        },
        b"hello",
    )
    .await
    .unwrap();
    assert_eq!(res.content_type, "text/x-custom");
    assert_eq!(
        download(&mut svc.blobs, "a/odd name ü#?%.txt")
            .await
            .unwrap(),
        b"hello"
    );
    let err = download(&mut svc.blobs, "a/missing").await.unwrap_err();
    assert_eq!(code(&err), ErrorCode::BlobNotFound);
}

pub async fn mismatches_store_nothing(svc: &mut Service) {
    let size = 2 * 1024 * 1024 + 3;
    let wrong = content_sha256(9, size);
    let err = upload_generated(
        &mut svc.blobs,
        UploadBlobHeader {
            expected_sha256: Some(wrong),
            ..header("m/bad.bin")
        },
        1,
        size,
        1 << 20,
    )
    .await
    .unwrap_err();
    assert_eq!(code(&err), ErrorCode::HashMismatch);
    assert_eq!(err.code(), tonic::Code::DataLoss);
    for expected_size in [size - 1, size + 1] {
        let err = upload_generated(
            &mut svc.blobs,
            UploadBlobHeader {
                expected_size: Some(expected_size),
                ..header("m/bad.bin")
            },
            1,
            size,
            1 << 20,
        )
        .await
        .unwrap_err();
        assert_eq!(code(&err), ErrorCode::HashMismatch, "{expected_size}");
    }
    let err = svc
        .blobs
        .stat_blob(StatBlobRequest {
            path: "m/bad.bin".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::BlobNotFound);

    // A failed replacement keeps the old content.
    upload_bytes(&mut svc.blobs, header("m/good.bin"), b"old")
        .await
        .unwrap();
    let err = upload_bytes(
        &mut svc.blobs,
        UploadBlobHeader {
            expected_sha256: Some("0".repeat(64)),
            ..header("m/good.bin")
        },
        b"new",
    )
    .await
    .unwrap_err();
    assert_eq!(code(&err), ErrorCode::HashMismatch);
    assert_eq!(
        download(&mut svc.blobs, "m/good.bin").await.unwrap(),
        b"old"
    );

    // Malformed streams.
    let err = upload_bytes(
        &mut svc.blobs,
        UploadBlobHeader {
            expected_sha256: Some("xyz".to_owned()),
            ..header("m/x")
        },
        b"a",
    )
    .await
    .unwrap_err();
    assert_eq!(code(&err), ErrorCode::InvalidArgument);
    let chunk_only = futures::stream::iter(vec![UploadBlobRequest {
        part: Some(upload_blob_request::Part::Chunk(b"data".to_vec())),
    }]);
    let err = svc.blobs.upload_blob(chunk_only).await.unwrap_err();
    assert_eq!(code(&err), ErrorCode::InvalidArgument);
    let oversized = futures::stream::iter(vec![
        UploadBlobRequest {
            part: Some(upload_blob_request::Part::Header(header("m/big"))),
        },
        UploadBlobRequest {
            part: Some(upload_blob_request::Part::Chunk(vec![
                0;
                2 * 1024 * 1024 + 1
            ])),
        },
    ]);
    let err = svc.blobs.upload_blob(oversized).await.unwrap_err();
    assert_eq!(code(&err), ErrorCode::InvalidArgument);
    let err = upload_bytes(
        &mut svc.blobs,
        UploadBlobHeader {
            expected_size: Some(6 * 1024 * 1024 * 1024),
            ..header("m/huge")
        },
        b"",
    )
    .await
    .unwrap_err();
    assert_eq!(code(&err), ErrorCode::TooLarge);

    let listed = svc
        .blobs
        .list_blobs(ListBlobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let paths: Vec<String> = listed.blobs.into_iter().map(|b| b.path).collect();
    assert_eq!(paths, vec!["m/good.bin"]);
}

/// Paths that must never reach the storage backend.
pub const BAD_PATHS: &[&str] = &[
    "",
    "/etc/passwd",
    "../etc/passwd",
    "a/../../etc/passwd",
    "..",
    ".",
    "a/./b",
    "a//b",
    "a/",
    "..\\..\\windows",
    "a\\b",
    "a\0b",
    "a\nb",
];

pub async fn paths_are_confined(svc: &mut Service) {
    for path in BAD_PATHS {
        let err = upload_bytes(&mut svc.blobs, header(path), b"x")
            .await
            .unwrap_err();
        assert_eq!(code(&err), ErrorCode::InvalidPath, "upload {path:?}");
        let err = download(&mut svc.blobs, path).await.unwrap_err();
        assert_eq!(code(&err), ErrorCode::InvalidPath, "download {path:?}");
        let err = svc
            .blobs
            .stat_blob(StatBlobRequest {
                path: (*path).to_owned(),
            })
            .await
            .unwrap_err();
        assert_eq!(code(&err), ErrorCode::InvalidPath, "stat {path:?}");
        let err = svc
            .blobs
            .delete_blobs(DeleteBlobsRequest {
                paths: vec![(*path).to_owned()],
                ..DeleteBlobsRequest::default()
            })
            .await
            .unwrap_err();
        assert_eq!(code(&err), ErrorCode::InvalidPath, "delete {path:?}");
    }
    let err = svc
        .blobs
        .list_blobs(ListBlobsRequest {
            prefix: "../".to_owned(),
            ..ListBlobsRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::InvalidPath);
    // A URI that decodes to an escape is external, never touched.
    let res = svc
        .blobs
        .delete_blobs(DeleteBlobsRequest {
            uris: vec![format!("{FILES_URL}/%2e%2e/%2e%2e/etc/passwd")],
            ..DeleteBlobsRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(res.deleted.is_empty());
    assert_eq!(res.external_uris.len(), 1);
    let listed = svc
        .blobs
        .list_blobs(ListBlobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.blobs.is_empty(), "nothing was written: {listed:?}");
}

pub async fn list_and_delete(svc: &mut Service) {
    for path in ["a/x", "a/y/z", "a/yy", "b/w", "b/v/u"] {
        upload_bytes(&mut svc.blobs, header(path), path.as_bytes())
            .await
            .unwrap();
    }
    let list = |prefix: &str, delimited: bool, size: u32, token: String| ListBlobsRequest {
        prefix: prefix.to_owned(),
        delimited,
        page: Some(PageRequest {
            page_size: size,
            page_token: token,
            include_total: false,
        }),
    };
    let res = svc
        .blobs
        .list_blobs(list("a/", false, 0, String::new()))
        .await
        .unwrap()
        .into_inner();
    let paths: Vec<&str> = res.blobs.iter().map(|b| b.path.as_str()).collect();
    assert_eq!(paths, ["a/x", "a/y/z", "a/yy"]);
    assert!(res.blobs.iter().all(|b| b.sha256.len() == 64));
    let res = svc
        .blobs
        .list_blobs(list("a/", true, 0, String::new()))
        .await
        .unwrap()
        .into_inner();
    let paths: Vec<&str> = res.blobs.iter().map(|b| b.path.as_str()).collect();
    assert_eq!(paths, ["a/x", "a/yy"]);
    assert_eq!(res.common_prefixes, ["a/y/"]);
    let res = svc
        .blobs
        .list_blobs(list("a/y", false, 0, String::new()))
        .await
        .unwrap()
        .into_inner();
    let paths: Vec<&str> = res.blobs.iter().map(|b| b.path.as_str()).collect();
    assert_eq!(paths, ["a/y/z", "a/yy"]);
    let res = svc
        .blobs
        .list_blobs(list("", true, 0, String::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(res.common_prefixes, ["a/", "b/"]);
    // Paging.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let res = svc
            .blobs
            .list_blobs(list("", false, 2, token))
            .await
            .unwrap()
            .into_inner();
        seen.extend(res.blobs.into_iter().map(|b| b.path));
        token = res.page.unwrap().next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(seen, ["a/x", "a/y/z", "a/yy", "b/v/u", "b/w"]);

    let res = svc
        .blobs
        .delete_blobs(DeleteBlobsRequest {
            paths: vec!["a/x".to_owned(), "a/missing".to_owned()],
            uris: vec![format!("{FILES_URL}/a/yy"), "s3://elsewhere/k".to_owned()],
            prefixes: vec!["b/".to_owned()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(res.deleted, ["a/x", "a/yy"]);
    assert_eq!(res.not_found, ["a/missing"]);
    assert_eq!(res.external_uris, ["s3://elsewhere/k"]);
    assert_eq!(res.deleted_under_prefixes, 2);
    assert!(res.failures.is_empty());
    let res = svc
        .blobs
        .list_blobs(ListBlobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let paths: Vec<&str> = res.blobs.iter().map(|b| b.path.as_str()).collect();
    assert_eq!(paths, ["a/y/z"]);
    let err = svc
        .blobs
        .delete_blobs(DeleteBlobsRequest {
            prefixes: vec!["a".to_owned()],
            ..DeleteBlobsRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::InvalidPath);
}

fn output(key: &str, uri: &str, mode: ArtifactMode) -> Artifact {
    Artifact {
        key: key.to_owned(),
        uri: uri.to_owned(),
        mode: mode as i32,
        ..Artifact::default()
    }
}

async fn exists(svc: &mut Service, path: &str) -> bool {
    match svc
        .blobs
        .stat_blob(StatBlobRequest {
            path: path.to_owned(),
        })
        .await
    {
        Ok(_) => true,
        Err(err) if code(&err) == ErrorCode::BlobNotFound => false,
        Err(err) => panic!("{err:?}"),
    }
}

pub async fn reset_and_delete_clean_up_blobs(svc: &mut Service) {
    for path in ["t/out.bin", "t/shared.bin", "t/model.pt"] {
        upload_bytes(&mut svc.blobs, header(path), b"content")
            .await
            .unwrap();
    }
    let uri = |p: &str| format!("{FILES_URL}/{p}");
    svc.artifacts
        .upsert_artifacts(UpsertArtifactsRequest {
            task_id: "t".to_owned(),
            artifacts: vec![
                output("out", &uri("t/out.bin"), ArtifactMode::Output),
                output("shared", &uri("t/shared.bin"), ArtifactMode::Output),
                output("ext", "s3://other/x", ArtifactMode::Output),
                output("gone", &uri("t/never-uploaded"), ArtifactMode::Output),
                output("in", &uri("t/shared.bin"), ArtifactMode::Input),
            ],
        })
        .await
        .unwrap();
    svc.artifacts
        .copy_input_artifacts(CopyInputArtifactsRequest {
            source_task_id: "t".to_owned(),
            target_task_id: "clone".to_owned(),
            replace: false,
        })
        .await
        .unwrap();

    // Reset: outputs go with their files, unless still referenced.
    let res = svc
        .artifacts
        .delete_artifacts(DeleteArtifactsRequest {
            task_id: "t".to_owned(),
            all: true,
            mode: ArtifactMode::Output as i32,
            delete_blobs: true,
            ..DeleteArtifactsRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let outcome: HashMap<String, i32> = res
        .removed
        .iter()
        .map(|r| (r.key.clone(), r.blob))
        .collect();
    assert_eq!(outcome["out"], BlobCleanup::Deleted as i32);
    assert_eq!(outcome["shared"], BlobCleanup::KeptReferenced as i32);
    assert_eq!(outcome["ext"], BlobCleanup::External as i32);
    assert_eq!(outcome["gone"], BlobCleanup::NotFound as i32);
    assert_eq!(res.external_uris, ["s3://other/x"]);
    assert!(!exists(svc, "t/out.bin").await);
    assert!(exists(svc, "t/shared.bin").await);

    // Delete: input artifacts never delete their files.
    let res = svc
        .artifacts
        .delete_artifacts(DeleteArtifactsRequest {
            task_id: "clone".to_owned(),
            all: true,
            delete_blobs: true,
            ..DeleteArtifactsRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(res.removed[0].blob, BlobCleanup::KeptReferenced as i32);
    assert!(exists(svc, "t/shared.bin").await);

    // A model's file goes with it unless an artifact refers to it.
    let model = svc
        .models
        .create_model(CreateModelRequest {
            model: Some(Model {
                name: "m".to_owned(),
                uri: uri("t/model.pt"),
                task_id: "t".to_owned(),
                ..Model::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .model
        .unwrap();
    let shared_model = svc
        .models
        .create_model(CreateModelRequest {
            model: Some(Model {
                name: "m2".to_owned(),
                uri: uri("t/shared.bin"),
                ..Model::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .model
        .unwrap();
    let res = svc
        .models
        .delete_models_of_task(DeleteModelsOfTaskRequest {
            task_id: "t".to_owned(),
            delete_blobs: true,
            ..DeleteModelsOfTaskRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(res.deleted.len(), 1);
    assert_eq!(res.deleted[0].model_id, model.id);
    assert_eq!(res.deleted[0].blob_path, "t/model.pt");
    assert_eq!(res.deleted[0].blob, BlobCleanup::Deleted as i32);
    assert!(!exists(svc, "t/model.pt").await);
    let res = svc
        .models
        .delete_model(DeleteModelRequest {
            model_id: shared_model.id,
            delete_blob: true,
            ..DeleteModelRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        res.blob,
        BlobCleanup::KeptReferenced as i32,
        "the input artifact of t"
    );
    assert!(exists(svc, "t/shared.bin").await);
}

/// Paths of every blob under `prefix`.
async fn listed(svc: &mut Service, prefix: &str) -> Vec<String> {
    svc.blobs
        .list_blobs(ListBlobsRequest {
            prefix: prefix.to_owned(),
            ..ListBlobsRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .blobs
        .into_iter()
        .map(|b| b.path)
        .collect()
}

/// An upload is committed only by its final commit message: a stream that
/// ends without it, or a client that goes away midway, stores nothing and
/// leaves an existing blob untouched; with the commit, uploads work.
pub async fn uncommitted_uploads_store_nothing(svc: &mut Service) {
    let uncommitted = |err: &tonic::Status| {
        let err = tasklab_error::Error::from_status(err);
        assert_eq!(err.code(), ErrorCode::InvalidArgument, "{err:?}");
        assert_eq!(
            err.fields().get("reason").map(String::as_str),
            Some("upload_not_committed"),
            "{err:?}"
        );
        assert_eq!(
            err.fields().get("field").map(String::as_str),
            Some("commit")
        );
    };

    // A stream that ends cleanly after its data but without the commit.
    let messages = upload_messages(header("u/data.bin"), &content_chunk(5, 0, 3 << 20));
    let err = svc
        .blobs
        .upload_blob(futures::stream::iter(messages))
        .await
        .unwrap_err();
    uncommitted(&err);
    // The header alone: the truncated 0-byte blob of the original bug.
    let messages = upload_messages(header("u/empty.bin"), b"");
    let err = svc
        .blobs
        .upload_blob(futures::stream::iter(messages))
        .await
        .unwrap_err();
    uncommitted(&err);
    assert_eq!(listed(svc, "u/").await, Vec::<String>::new());
    for path in ["u/data.bin", "u/empty.bin"] {
        let err = download(&mut svc.blobs, path).await.unwrap_err();
        assert_eq!(code(&err), ErrorCode::BlobNotFound, "{path}");
    }

    // An uncommitted replacement leaves the old blob as it was.
    upload_bytes(&mut svc.blobs, header("u/kept.txt"), b"old")
        .await
        .unwrap();
    let messages = upload_messages(header("u/kept.txt"), b"new but never committed");
    let err = svc
        .blobs
        .upload_blob(futures::stream::iter(messages))
        .await
        .unwrap_err();
    uncommitted(&err);
    assert_eq!(
        download(&mut svc.blobs, "u/kept.txt").await.unwrap(),
        b"old"
    );

    // Nothing may follow the commit.
    let mut messages = upload_messages(header("u/after.bin"), b"data");
    messages.push(commit());
    messages.push(UploadBlobRequest {
        part: Some(upload_blob_request::Part::Chunk(b"more".to_vec())),
    });
    let err = svc
        .blobs
        .upload_blob(futures::stream::iter(messages))
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::InvalidArgument);
    // Nor may a message carry no part.
    let mut messages = upload_messages(header("u/after.bin"), b"data");
    messages.push(UploadBlobRequest { part: None });
    messages.push(commit());
    let err = svc
        .blobs
        .upload_blob(futures::stream::iter(messages))
        .await
        .unwrap_err();
    assert_eq!(code(&err), ErrorCode::InvalidArgument);

    // A client that drops the call midway, after some data.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut client = svc.blobs.clone();
    let call = tokio::spawn(async move {
        client
            .upload_blob(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    for message in upload_messages(header("u/dropped.bin"), &content_chunk(6, 0, 2 << 20)) {
        tx.send(message).await.unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    call.abort();
    drop(tx);
    let _ = call.await;
    // A client whose sender gives up midway: the request stream ends
    // without the commit.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut client = svc.blobs.clone();
    let call = tokio::spawn(async move {
        client
            .upload_blob(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    for message in upload_messages(header("u/gave-up.bin"), &content_chunk(7, 0, 1 << 20)) {
        tx.send(message).await.unwrap();
    }
    drop(tx);
    uncommitted(&call.await.unwrap().unwrap_err());
    // Give the server time to act on the dropped call.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(listed(svc, "u/").await, vec!["u/kept.txt"]);
    for path in ["u/after.bin", "u/dropped.bin", "u/gave-up.bin"] {
        let err = download(&mut svc.blobs, path).await.unwrap_err();
        assert_eq!(code(&err), ErrorCode::BlobNotFound, "{path}");
    }

    // With the commit, uploads work, empty ones included.
    let size = 3 * 1024 * 1024 + 5;
    let res = upload_generated(&mut svc.blobs, header("u/data.bin"), 5, size, 1 << 20)
        .await
        .unwrap();
    assert_eq!(res.size, size);
    assert_eq!(res.sha256, content_sha256(5, size));
    let mut messages = upload_messages(header("u/empty.bin"), b"");
    messages.push(commit());
    let res = svc
        .blobs
        .upload_blob(futures::stream::iter(messages))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(res.size, 0);
    assert_eq!(download(&mut svc.blobs, "u/empty.bin").await.unwrap(), b"");
    assert_eq!(
        listed(svc, "u/").await,
        vec!["u/data.bin", "u/empty.bin", "u/kept.txt"]
    );
}
