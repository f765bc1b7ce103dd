//! Blob transfer throughput through gRPC, against a plain file copy on the
//! same disk, and the process's peak memory.
//!
//! `cargo bench -p tasklab-artifacts --bench blobs` streams a 1 GiB file
//! (`TASKLAB_BENCH_BLOB_MIB` to change) from disk up through `UploadBlob`
//! into local blob storage, then down through `DownloadBlob` into a file,
//! with the client and the service in this process on loopback.

#![allow(clippy::print_stdout)]

use std::io::Write as _;

use futures::StreamExt as _;
use tasklab_proto::artifacts::v1::blobs_service_client::BlobsServiceClient;
use tasklab_proto::artifacts::v1::upload_blob_request::Part;
use tasklab_proto::artifacts::v1::{
    DownloadBlobRequest, UploadBlobCommit, UploadBlobHeader, UploadBlobRequest,
};
use tasklab_server::Server;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::Instant;

const MIB: u64 = 1024 * 1024;

fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024)
}

fn rate(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / MIB as f64 / secs
}

fn main() {
    let mib: u64 = std::env::var("TASKLAB_BENCH_BLOB_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(mib * MIB));
}

async fn run(size: u64) {
    let dir = tempfile::tempdir_in(std::env::temp_dir()).expect("temporary directory");
    let source = dir.path().join("source.bin");
    {
        let mut file = std::fs::File::create(&source).expect("create source");
        let mut block = vec![0u8; MIB as usize];
        for (i, b) in block.iter_mut().enumerate() {
            *b = (i as u64)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .rotate_left(17) as u8;
        }
        for i in 0..size / MIB {
            block[..8].copy_from_slice(&i.to_le_bytes());
            file.write_all(&block).expect("write source");
        }
        file.sync_all().expect("sync source");
    }

    let start = Instant::now();
    std::fs::copy(&source, dir.path().join("copy.bin")).expect("copy");
    let copy_secs = start.elapsed().as_secs_f64();
    std::fs::remove_file(dir.path().join("copy.bin")).ok();

    let data_dir = dir.path().join("data");
    let settings = tasklab_config::Settings {
        data_dir: data_dir.clone(),
        ..tasklab_config::Settings::default()
    };
    std::fs::create_dir_all(&data_dir).expect("data dir");
    let db = tasklab_db::sqlite_url(&data_dir.join("artifacts.db"));
    let mut grpc = tasklab_testkit::test_grpc_settings();
    grpc.request_timeout_secs = 3600;
    let server = tasklab_artifacts::mount(Server::new(&grpc), &settings, &db)
        .await
        .expect("mount");
    let running = tasklab_testkit::spawn(server).await;
    let mut client = BlobsServiceClient::new(running.channel().await)
        .max_decoding_message_size(8 << 20)
        .max_encoding_message_size(8 << 20);
    let rss_idle = peak_rss_mib();

    // Upload: read the file in 1 MiB pieces and stream them.
    let file = tokio::fs::File::open(&source).await.expect("open source");
    let header = futures::stream::once(async move {
        UploadBlobRequest {
            part: Some(Part::Header(UploadBlobHeader {
                path: "bench/blob.bin".to_owned(),
                expected_size: Some(size),
                ..UploadBlobHeader::default()
            })),
        }
    });
    let chunks = futures::stream::unfold(file, |mut file| async move {
        let mut buf = Vec::with_capacity(MIB as usize);
        let n = (&mut file)
            .take(MIB)
            .read_to_end(&mut buf)
            .await
            .expect("read source");
        if n == 0 {
            return None;
        }
        let message = UploadBlobRequest {
            part: Some(Part::Chunk(buf)),
        };
        Some((message, file))
    });
    // The blob is committed only on the final commit message.
    let commit = futures::stream::once(async {
        UploadBlobRequest {
            part: Some(Part::Commit(UploadBlobCommit {})),
        }
    });
    let start = Instant::now();
    let uploaded = client
        .upload_blob(header.chain(chunks).chain(commit))
        .await
        .expect("upload")
        .into_inner();
    let upload_secs = start.elapsed().as_secs_f64();
    assert_eq!(uploaded.size, size);

    // Download into a file.
    let target = dir.path().join("downloaded.bin");
    let mut out = tokio::fs::File::create(&target)
        .await
        .expect("create target");
    let start = Instant::now();
    let mut stream = client
        .download_blob(DownloadBlobRequest {
            path: "bench/blob.bin".to_owned(),
            chunk_size: MIB as u32,
            ..DownloadBlobRequest::default()
        })
        .await
        .expect("download")
        .into_inner();
    let mut received = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("chunk");
        received += chunk.data.len() as u64;
        out.write_all(&chunk.data).await.expect("write target");
    }
    out.flush().await.expect("flush");
    let download_secs = start.elapsed().as_secs_f64();
    assert_eq!(received, size);

    let copy = rate(size, copy_secs);
    let up = rate(size, upload_secs);
    let down = rate(size, download_secs);
    println!("blob size: {} MiB", size / MIB);
    println!("std::fs::copy:      {copy:8.1} MiB/s");
    println!(
        "gRPC upload:        {up:8.1} MiB/s  ({:.2} x copy)",
        up / copy
    );
    println!(
        "gRPC download:      {down:8.1} MiB/s  ({:.2} x copy)",
        down / copy
    );
    println!(
        "peak RSS: {} MiB (idle server and client: {rss_idle} MiB)",
        peak_rss_mib()
    );
    running.stop().await.ok();
}
