//! The blob store on the local file system, through the generated client.

mod common;

use common::{header, start_local, suite, upload_generated};
use futures::StreamExt as _;
use tasklab_db::testing::TestDb;

async fn local() -> (common::Service, TestDb) {
    let db = TestDb::sqlite();
    (start_local(&db.url).await, db)
}

#[tokio::test]
async fn round_trip() {
    let (mut svc, _db) = local().await;
    suite::round_trip(&mut svc).await;
}

#[tokio::test]
async fn hash_and_size_mismatches_store_nothing() {
    let (mut svc, _db) = local().await;
    suite::mismatches_store_nothing(&mut svc).await;
    // Not even a staging file is left in the blob directory.
    let mut files = Vec::new();
    let mut dirs = vec![svc.data_dir.path().join("blobs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                dirs.push(entry.path());
            } else {
                files.push(entry.path());
            }
        }
    }
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].ends_with("m/good.bin"));
}

#[tokio::test]
async fn paths_are_confined_to_the_root() {
    let (mut svc, _db) = local().await;
    // Something outside the root that an escape would reach.
    let outside = svc.data_dir.path().join("secret");
    std::fs::write(&outside, b"secret").unwrap();
    suite::paths_are_confined(&mut svc).await;
    assert_eq!(std::fs::read(&outside).unwrap(), b"secret");
    let blobs = svc.data_dir.path().join("blobs");
    assert_eq!(std::fs::read_dir(blobs).unwrap().count(), 0);
}

#[tokio::test]
async fn list_and_delete() {
    let (mut svc, _db) = local().await;
    suite::list_and_delete(&mut svc).await;
}

#[tokio::test]
async fn reset_and_delete_clean_up_blobs() {
    let (mut svc, _db) = local().await;
    suite::reset_and_delete_clean_up_blobs(&mut svc).await;
}

#[tokio::test]
async fn cancelled_upload_leaves_nothing() {
    let (mut svc, _db) = local().await;
    // The stream errors half way: the client aborts the call.
    let first = futures::stream::once(async {
        tasklab_proto::artifacts::v1::UploadBlobRequest {
            part: Some(
                tasklab_proto::artifacts::v1::upload_blob_request::Part::Header(header("c/x")),
            ),
        }
    });
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let body = first.chain(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut client = svc.blobs.clone();
    let call = tokio::spawn(async move { client.upload_blob(body).await });
    tx.send(tasklab_proto::artifacts::v1::UploadBlobRequest {
        part: Some(
            tasklab_proto::artifacts::v1::upload_blob_request::Part::Chunk(vec![1; 1 << 20]),
        ),
    })
    .await
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    call.abort();
    drop(tx);
    let _ = call.await;
    // The server notices the reset and drops the staging file.
    let blobs = svc.data_dir.path().join("blobs");
    let mut left = usize::MAX;
    for _ in 0..50 {
        left = walk(&blobs);
        if left == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "staging files left behind");
    let err = common::download(&mut svc.blobs, "c/x").await.unwrap_err();
    assert_eq!(common::code(&err), tasklab_error::ErrorCode::BlobNotFound);
    // And the store still works.
    upload_generated(&mut svc.blobs, header("c/x"), 3, 10, 4)
        .await
        .unwrap();
}

#[tokio::test]
async fn uncommitted_uploads_store_nothing() {
    let (mut svc, _db) = local().await;
    suite::uncommitted_uploads_store_nothing(&mut svc).await;
    // No staging file is left either: only the three committed blobs.
    let blobs = svc.data_dir.path().join("blobs");
    let mut left = usize::MAX;
    for _ in 0..50 {
        left = walk(&blobs);
        if left == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(left, 3, "staging files left behind");
}

fn walk(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                walk(&e.path())
            } else {
                1
            }
        })
        .sum()
}
