//! Memory stays flat while a blob much larger than the test's memory limit
//! streams up and down through gRPC. Alone in its own test binary, so the
//! process's peak RSS measures this transfer only.

mod common;

use std::sync::{Arc, Mutex};

use futures::StreamExt as _;
use sha2::{Digest as _, Sha256};
use tasklab_db::testing::TestDb;
use tasklab_proto::artifacts::v1::upload_blob_request::Part;
use tasklab_proto::artifacts::v1::{DownloadBlobRequest, UploadBlobCommit, UploadBlobRequest};

const MIB: u64 = 1024 * 1024;
/// The blob streamed up and down.
const BLOB_SIZE: u64 = 128 * MIB;
/// How much the process's peak RSS may grow during both transfers.
const MEMORY_LIMIT: u64 = 48 * MIB;

/// Chunk `index` of the content: a fixed pseudo-random MiB stamped with
/// its index, so chunks differ and cost only a copy to produce.
fn chunk(block: &[u8], index: u64) -> Vec<u8> {
    let mut data = block.to_vec();
    data[..8].copy_from_slice(&index.to_le_bytes());
    data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_blob_streams_with_flat_memory() {
    let db = TestDb::sqlite();
    let mut svc = common::start_local(&db.url).await;
    let block = Arc::new(common::content_chunk(7, 0, MIB as usize));
    // Warm up allocator pools and connections with a small transfer.
    common::upload_bytes(&mut svc.blobs, common::header("warm/up"), &block)
        .await
        .unwrap();
    common::download(&mut svc.blobs, "warm/up").await.unwrap();
    let before = common::peak_rss();

    let sent = Arc::new(Mutex::new(Sha256::new()));
    let header = futures::stream::once(async {
        UploadBlobRequest {
            part: Some(Part::Header(common::header("big/blob.bin"))),
        }
    });
    let (hasher, data) = (sent.clone(), block.clone());
    let body = futures::stream::iter(0..BLOB_SIZE / MIB).map(move |i| {
        let data = chunk(&data, i);
        hasher.lock().unwrap().update(&data);
        UploadBlobRequest {
            part: Some(Part::Chunk(data)),
        }
    });
    let commit = futures::stream::once(async {
        UploadBlobRequest {
            part: Some(Part::Commit(UploadBlobCommit {})),
        }
    });
    let uploaded = svc
        .blobs
        .upload_blob(header.chain(body).chain(commit))
        .await
        .unwrap()
        .into_inner();
    let sent = hex::encode(sent.lock().unwrap().clone().finalize());
    assert_eq!(uploaded.size, BLOB_SIZE);
    assert_eq!(uploaded.sha256, sent);

    let mut stream = svc
        .blobs
        .download_blob(DownloadBlobRequest {
            path: "big/blob.bin".to_owned(),
            chunk_size: MIB as u32,
            ..DownloadBlobRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut received = Sha256::new();
    let mut size = 0u64;
    let mut announced = String::new();
    while let Some(message) = stream.next().await {
        let message = message.unwrap();
        if let Some(info) = message.info {
            announced = info.sha256;
        }
        assert_eq!(message.offset, size);
        size += message.data.len() as u64;
        received.update(&message.data);
    }
    assert_eq!(size, BLOB_SIZE);
    assert_eq!(hex::encode(received.finalize()), sent);
    assert_eq!(announced, sent);

    let growth = common::peak_rss().saturating_sub(before);
    eprintln!(
        "peak RSS grew by {} MiB while streaming {} MiB up and down",
        growth / MIB,
        BLOB_SIZE / MIB
    );
    assert!(
        growth < MEMORY_LIMIT,
        "peak RSS grew by {growth} bytes, over the {MEMORY_LIMIT}-byte limit"
    );
}
