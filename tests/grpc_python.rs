//! The public gRPC API driven from another language: `tests/python/grpc_client.py`
//! generates a Python client from `proto/` with grpcio-tools at run time and
//! walks a realistic flow (nested projects, tasks, filtered and paged lists,
//! lifecycle, a refused transition with its `tasklab-error-bin` detail,
//! clones, deletes) against the real `tasklab serve` binary.
//!
//! The Python is `TASKLAB_TEST_PYTHON` (set by `tests/run` to its venv, which
//! has grpcio-tools); without it the test prints `SKIPPED` (and fails under
//! `CI`).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use tokio::time::Instant;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const ACCESS_KEY: &str = "test-access";
const SECRET_KEY: &str = "test-secret";

fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// `tasklab serve` as a child process on loopback ports, with its own data
/// directory; its log goes to `tasklab.log` in a separate directory.
struct Tasklab {
    child: Child,
    api: SocketAddr,
    log: PathBuf,
    _data: tempfile::TempDir,
    _logs: tempfile::TempDir,
}

impl Tasklab {
    fn start() -> Tasklab {
        let data = tempfile::tempdir().unwrap();
        let logs = tempfile::tempdir().unwrap();
        let log = logs.path().join("tasklab.log");
        let (api, files) = (free_addr(), free_addr());
        let child = Command::new(env!("CARGO_BIN_EXE_tasklab"))
            .env("TASKLAB_ACCESS_KEY", ACCESS_KEY)
            .env("TASKLAB_SECRET_KEY", SECRET_KEY)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("TASKLAB_CONFIG")
            .args(["serve", "--data-dir"])
            .arg(data.path())
            .args([
                "--api-addr",
                &api.to_string(),
                "--files-addr",
                &files.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start tasklab");
        Tasklab {
            child,
            api,
            log,
            _data: data,
            _logs: logs,
        }
    }

    /// Waits until overall health is SERVING.
    async fn wait_ready(&mut self) {
        let started = Instant::now();
        loop {
            if let Ok(channel) =
                tonic::transport::Endpoint::from_shared(format!("http://{}", self.api))
                    .unwrap()
                    .connect()
                    .await
                && let Ok(reply) = HealthClient::new(channel)
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                && reply.into_inner().status == ServingStatus::Serving as i32
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "tasklab exited before becoming ready: {status}\n{}",
                    self.log()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "tasklab never became ready\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        format!("--- tasklab log ---\n{log}")
    }
}

impl Drop for Tasklab {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn python_client_generated_from_proto_drives_the_public_grpc_api() {
    let Some(python) = tasklab_db::testing::require_env(
        "TASKLAB_TEST_PYTHON",
        "the Python gRPC client",
        "grpc_python",
    ) else {
        return;
    };
    let mut tasklab = Tasklab::start();
    tasklab.wait_ready().await;

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/grpc_client.py");
    let api = tasklab.api.to_string();
    let output: Output = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .arg(&script)
            .arg(&api)
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {python} {}: {e}", script.display()))
    })
    .await
    .unwrap();

    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("--- grpc_client.py stdout ---\n{stdout}--- grpc_client.py stderr ---\n{stderr}");
    assert!(
        output.status.success(),
        "the Python gRPC client failed ({}):\n{stderr}\n{}",
        output.status,
        tasklab.log()
    );
    assert!(
        stdout.contains("OK: the Python gRPC client flow passed"),
        "the Python gRPC client exited 0 without finishing its flow:\n{stdout}"
    );
}
