//! Start-to-ready time and idle memory of `tasklab serve`.
//!
//! Runs the real binary (the bench profile builds it optimized) several times
//! on fresh data directories and prints, for each run, the time from spawn to
//! the first `SERVING` health answer, and the resident memory after it has
//! idled for a moment.
//!
//! `cargo bench --bench startup`

#![allow(clippy::print_stdout)] // a benchmark prints its figures

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const RUNS: usize = 10;

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn serving(api: SocketAddr) -> bool {
    let Ok(channel) = tonic::transport::Endpoint::from_shared(format!("http://{api}"))
        .unwrap()
        .connect()
        .await
    else {
        return false;
    };
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut ready = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..RUNS {
        let data = tempfile::tempdir().unwrap();
        let (api, files) = (free_addr(), free_addr());
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tasklab"))
            .args(["serve", "--data-dir"])
            .arg(data.path())
            .args([
                "--api-addr",
                &api.to_string(),
                "--files-addr",
                &files.to_string(),
            ])
            .env("TASKLAB_ACCESS_KEY", "bench")
            .env("TASKLAB_SECRET_KEY", "bench")
            .env("TASKLAB_LOG__FILTER", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tasklab");
        while !serving(api).await {
            assert!(started.elapsed() < Duration::from_secs(30), "never ready");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        ready.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(500)).await;
        rss.push(rss_kib(child.id()));
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
    }
    ready.sort();
    rss.sort();
    let median = |v: &[Duration]| v[v.len() / 2];
    println!("tasklab serve, {RUNS} runs on fresh data directories");
    println!(
        "start to ready: median {:.1} ms, max {:.1} ms",
        median(&ready).as_secs_f64() * 1e3,
        ready.last().unwrap().as_secs_f64() * 1e3
    );
    println!(
        "idle RSS after ready: median {:.1} MiB, max {:.1} MiB",
        rss[rss.len() / 2] as f64 / 1024.0,
        *rss.last().unwrap() as f64 / 1024.0
    );
}
