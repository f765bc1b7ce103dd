//! Files server throughput: a 1 GiB upload (`POST /` multipart) and
//! download (`GET /<path>`) over loopback HTTP, through the files server
//! and the artifacts service's gRPC blob API into local storage, against a
//! plain file copy on the same disk; and the process's peak memory.
//!
//! `cargo bench -p tasklab-gateway --bench files`
//! (`TASKLAB_BENCH_BLOB_MIB` changes the size).

#![allow(clippy::print_stdout)]

use std::io::Write as _;

use tasklab_proto::artifacts::v1::blobs_service_client::BlobsServiceClient;
use tasklab_server::Server;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
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
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run(mib * MIB));
}

async fn run(size: u64) {
    let dir = tempfile::tempdir().expect("temporary directory");
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
    std::fs::create_dir_all(&data_dir).expect("data dir");
    let settings = tasklab_config::Settings {
        data_dir: data_dir.clone(),
        ..tasklab_config::Settings::default()
    };
    let mut grpc = tasklab_testkit::test_grpc_settings();
    grpc.request_timeout_secs = 3600;
    let db = tasklab_db::sqlite_url(&data_dir.join("artifacts.db"));
    let artifacts = tasklab_testkit::spawn(
        tasklab_artifacts::mount(Server::new(&grpc), &settings, &db)
            .await
            .expect("mount"),
    )
    .await;
    let client = BlobsServiceClient::new(artifacts.channel().await);
    let files = tasklab_testkit::spawn(Server::http_only(
        &grpc,
        tasklab_gateway::blob_files_router(client, None),
    ))
    .await;
    let rss_idle = peak_rss_mib();

    // Upload: one multipart part streamed from the file.
    let boundary = "tasklab-bench-boundary";
    let part_head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"/bench/blob.bin\"; \
         filename=\"/bench/blob.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    );
    let part_tail = format!("\r\n--{boundary}--\r\n");
    let length = part_head.len() as u64 + size + part_tail.len() as u64;
    let start = Instant::now();
    let mut conn = tokio::net::TcpStream::connect(files.addr())
        .await
        .expect("connect");
    let head = format!(
        "POST / HTTP/1.1\r\nHost: files\r\nConnection: close\r\nContent-Type: \
         multipart/form-data; boundary={boundary}\r\nContent-Length: {length}\r\n\r\n{part_head}"
    );
    conn.write_all(head.as_bytes()).await.expect("send head");
    let mut file = tokio::fs::File::open(&source).await.expect("open source");
    tokio::io::copy(&mut file, &mut conn)
        .await
        .expect("send body");
    conn.write_all(part_tail.as_bytes())
        .await
        .expect("send tail");
    let mut reply = String::new();
    conn.read_to_string(&mut reply).await.expect("reply");
    let upload_secs = start.elapsed().as_secs_f64();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");

    // Download into a file.
    let start = Instant::now();
    let mut conn = tokio::net::TcpStream::connect(files.addr())
        .await
        .expect("connect");
    conn.write_all(b"GET /bench/blob.bin HTTP/1.1\r\nHost: files\r\nConnection: close\r\n\r\n")
        .await
        .expect("send request");
    let mut reader = BufReader::with_capacity(MIB as usize, conn);
    let mut content_length = 0u64;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.expect("header");
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            content_length = v.trim().parse().expect("length");
        }
    }
    let mut out = tokio::fs::File::create(dir.path().join("downloaded.bin"))
        .await
        .expect("create target");
    let received = tokio::io::copy(&mut reader, &mut out)
        .await
        .expect("receive");
    out.flush().await.expect("flush");
    let download_secs = start.elapsed().as_secs_f64();
    assert_eq!((content_length, received), (size, size));

    let copy = rate(size, copy_secs);
    let up = rate(size, upload_secs);
    let down = rate(size, download_secs);
    println!("blob size: {} MiB", size / MIB);
    println!("std::fs::copy:          {copy:8.1} MiB/s");
    println!(
        "files server upload:    {up:8.1} MiB/s  ({:.2} x copy)",
        up / copy
    );
    println!(
        "files server download:  {down:8.1} MiB/s  ({:.2} x copy)",
        down / copy
    );
    println!(
        "peak RSS: {} MiB (idle servers: {rss_idle} MiB)",
        peak_rss_mib()
    );
}
