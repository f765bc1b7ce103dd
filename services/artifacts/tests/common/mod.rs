//! Shared test helpers: a running artifacts service on loopback, its
//! generated clients, and blob streaming helpers.

#![allow(dead_code, unreachable_pub)]

pub mod suite;

use futures::StreamExt as _;
use sha2::{Digest as _, Sha256};
use tasklab_config::Settings;
use tasklab_error::{Error, ErrorCode};
use tasklab_proto::artifacts::v1::artifacts_service_client::ArtifactsServiceClient;
use tasklab_proto::artifacts::v1::blobs_service_client::BlobsServiceClient;
use tasklab_proto::artifacts::v1::models_service_client::ModelsServiceClient;
use tasklab_proto::artifacts::v1::upload_blob_request::Part;
use tasklab_proto::artifacts::v1::{
    DownloadBlobRequest, UploadBlobCommit, UploadBlobHeader, UploadBlobRequest, UploadBlobResponse,
};
use tasklab_server::Server;
use tasklab_testkit::Running;
use tonic::transport::Channel;

pub const FILES_URL: &str = "http://files.test:8081";

/// A running artifacts service with clients.
pub struct Service {
    pub running: Running,
    pub artifacts: ArtifactsServiceClient<Channel>,
    pub models: ModelsServiceClient<Channel>,
    pub blobs: BlobsServiceClient<Channel>,
    pub data_dir: tempfile::TempDir,
}

/// Settings with local blobs under a fresh data directory.
pub fn local_settings() -> (Settings, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        data_dir: dir.path().to_owned(),
        files_url: Some(FILES_URL.to_owned()),
        ..Settings::default()
    };
    (settings, dir)
}

pub async fn start(settings: Settings, dir: tempfile::TempDir, db_url: &str) -> Service {
    let server = tasklab_artifacts::mount(
        Server::new(&tasklab_testkit::test_grpc_settings()),
        &settings,
        db_url,
    )
    .await
    .unwrap();
    let running = tasklab_testkit::spawn(server).await;
    let channel = running.channel().await;
    Service {
        artifacts: ArtifactsServiceClient::new(channel.clone()),
        models: ModelsServiceClient::new(channel.clone()),
        blobs: BlobsServiceClient::new(channel)
            .max_decoding_message_size(8 << 20)
            .max_encoding_message_size(8 << 20),
        running,
        data_dir: dir,
    }
}

/// Starts the service on local blobs and `db_url`.
pub async fn start_local(db_url: &str) -> Service {
    let (settings, dir) = local_settings();
    start(settings, dir, db_url).await
}

/// The stable code of a failed call.
pub fn code(status: &tonic::Status) -> ErrorCode {
    Error::from_status(status).code()
}

/// Deterministic content: byte `i` of the stream is a function of `i` and
/// `seed`, so nothing has to be kept in memory to produce or check it.
pub fn content_chunk(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| {
            let x = ((offset + i) ^ seed.wrapping_mul(0xD6E8_FEB8_6659_FD93))
                .wrapping_mul(0x9E37_79B9_7F4A_7C15);
            (x >> 29) as u8
        })
        .collect()
}

/// SHA-256 of `size` bytes of [`content_chunk`] content.
pub fn content_sha256(seed: u64, size: u64) -> String {
    let mut hasher = Sha256::new();
    let mut offset = 0;
    while offset < size {
        let n = (size - offset).min(1 << 20) as usize;
        hasher.update(content_chunk(seed, offset, n));
        offset += n as u64;
    }
    hex::encode(hasher.finalize())
}

pub fn header(path: &str) -> UploadBlobHeader {
    UploadBlobHeader {
        path: path.to_owned(),
        ..UploadBlobHeader::default()
    }
}

/// Uploads `size` bytes of generated content, produced lazily in `chunk`
/// pieces.
pub async fn upload_generated(
    client: &mut BlobsServiceClient<Channel>,
    header: UploadBlobHeader,
    seed: u64,
    size: u64,
    chunk: usize,
) -> Result<UploadBlobResponse, tonic::Status> {
    let first = futures::stream::once(async move {
        UploadBlobRequest {
            part: Some(Part::Header(header)),
        }
    });
    let chunks = futures::stream::unfold(0u64, move |offset| async move {
        if offset >= size {
            return None;
        }
        let n = (size - offset).min(chunk as u64) as usize;
        let data = content_chunk(seed, offset, n);
        Some((
            UploadBlobRequest {
                part: Some(Part::Chunk(data)),
            },
            offset + n as u64,
        ))
    });
    client
        .upload_blob(
            first
                .chain(chunks)
                .chain(futures::stream::once(async { commit() })),
        )
        .await
        .map(|r| r.into_inner())
}

/// The final message of an upload: without it nothing is stored.
pub fn commit() -> UploadBlobRequest {
    UploadBlobRequest {
        part: Some(Part::Commit(UploadBlobCommit {})),
    }
}

/// The messages of an upload of `data` (header, chunks of at most 1 MiB),
/// without the commit.
pub fn upload_messages(header: UploadBlobHeader, data: &[u8]) -> Vec<UploadBlobRequest> {
    let mut messages = vec![UploadBlobRequest {
        part: Some(Part::Header(header)),
    }];
    for piece in data.chunks(1 << 20) {
        messages.push(UploadBlobRequest {
            part: Some(Part::Chunk(piece.to_vec())),
        });
    }
    messages
}

/// Uploads `data` in chunks of at most 1 MiB.
pub async fn upload_bytes(
    client: &mut BlobsServiceClient<Channel>,
    header: UploadBlobHeader,
    data: &[u8],
) -> Result<UploadBlobResponse, tonic::Status> {
    let mut messages = upload_messages(header, data);
    messages.push(commit());
    client
        .upload_blob(futures::stream::iter(messages))
        .await
        .map(|r| r.into_inner())
}

/// Downloads a whole blob into memory (small blobs only).
pub async fn download(
    client: &mut BlobsServiceClient<Channel>,
    path: &str,
) -> Result<Vec<u8>, tonic::Status> {
    download_range(client, path, None, None).await
}

pub async fn download_range(
    client: &mut BlobsServiceClient<Channel>,
    path: &str,
    offset: Option<u64>,
    length: Option<u64>,
) -> Result<Vec<u8>, tonic::Status> {
    let mut stream = client
        .download_blob(DownloadBlobRequest {
            path: path.to_owned(),
            offset,
            length,
            chunk_size: 0,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    let mut first = true;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        assert_eq!(
            chunk.info.is_some(),
            first,
            "metadata on the first chunk only"
        );
        assert_eq!(chunk.offset, offset.unwrap_or(0) + out.len() as u64);
        first = false;
        out.extend_from_slice(&chunk.data);
    }
    assert!(!first, "a download has at least one message");
    Ok(out)
}

/// Peak resident set size of this process, in bytes.
pub fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/self/status");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}
