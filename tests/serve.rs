//! Acceptance tests of `tasklab serve`, run as a new user would: the real
//! binary, started as a child process on loopback ports, probed with real
//! gRPC clients (health, reflection) and plain HTTP.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

struct Tasklab {
    child: Child,
    api: SocketAddr,
    files: SocketAddr,
    _data: tempfile::TempDir,
}

impl Tasklab {
    fn start() -> Tasklab {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tasklab"));
        cmd.env("TASKLAB_ACCESS_KEY", "test-access")
            .env("TASKLAB_SECRET_KEY", "test-secret");
        Tasklab::start_in(tempfile::tempdir().unwrap(), cmd)
    }

    fn start_in(data: tempfile::TempDir, mut cmd: Command) -> Tasklab {
        let (api, files) = (free_addr(), free_addr());
        let child = cmd
            .args(["serve", "--data-dir"])
            .arg(data.path())
            .args([
                "--api-addr",
                &api.to_string(),
                "--files-addr",
                &files.to_string(),
            ])
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("TASKLAB_CONFIG")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tasklab");
        Tasklab {
            child,
            api,
            files,
            _data: data,
        }
    }

    /// Stops the process and returns its data directory and what it printed.
    async fn stop_and_take(mut self) -> (tempfile::TempDir, String) {
        assert!(self.terminate().await.success());
        let mut out = String::new();
        std::io::Read::read_to_string(&mut self.child.stdout.take().unwrap(), &mut out).unwrap();
        let data = std::mem::replace(&mut self._data, tempfile::tempdir().unwrap());
        (data, out)
    }

    /// Waits until overall health is SERVING; returns how long it took.
    async fn wait_ready(&mut self) -> Duration {
        let started = Instant::now();
        loop {
            if let Ok(channel) =
                tonic::transport::Endpoint::from_shared(format!("http://{}", self.api))
                    .unwrap()
                    .connect()
                    .await
            {
                let mut health = HealthClient::new(channel);
                if let Ok(reply) = health
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    && reply.into_inner().status == ServingStatus::Serving as i32
                {
                    return started.elapsed();
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("tasklab exited before becoming ready: {status}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "tasklab never became ready"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.api))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// Sends SIGTERM and waits (without blocking the runtime, so open client
    /// connections can answer the server's GOAWAY) for the exit status.
    async fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success());
        let deadline = std::time::Duration::from_secs(5);
        let start = std::time::SystemTime::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                eprintln!(
                    "tasklab exited {:?} after SIGTERM",
                    start.elapsed().unwrap()
                );
                return status;
            }
            assert!(
                start.elapsed().unwrap() < deadline,
                "tasklab did not exit within 5 s of SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Tasklab {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn list_services(channel: tonic::transport::Channel) -> Vec<String> {
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies
        .message()
        .await
        .unwrap()
        .expect("a reflection reply");
    match reply.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection reply {other:?}"),
    }
}

#[tokio::test]
async fn serve_starts_reflects_every_package_reports_health_and_stops_on_sigterm() {
    let mut tasklab = Tasklab::start();
    let ready = tasklab.wait_ready().await;
    eprintln!("tasklab serve ready after {ready:?} (measured from first probe)");

    let channel = tasklab.channel().await;
    let services = list_services(channel.clone()).await;
    for package in ["tasks", "projects", "queues", "artifacts", "metrics"] {
        let prefix = format!("tasklab.{package}.v1.");
        assert!(
            services.iter().any(|s| s.starts_with(&prefix)),
            "reflection lists no service of {prefix}*: {services:?}"
        );
    }

    // Every tasklab service reports SERVING by name.
    let mut health = HealthClient::new(channel.clone());
    for service in services.iter().filter(|s| s.starts_with("tasklab.")) {
        let reply = health
            .check(HealthCheckRequest {
                service: service.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("health of {service}: {e}"));
        assert_eq!(
            reply.into_inner().status,
            ServingStatus::Serving as i32,
            "{service}"
        );
    }
    // An unknown service name is NOT_FOUND, not a fake SERVING.
    let unknown = health
        .check(HealthCheckRequest {
            service: "tasklab.nope.v1.Nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    // The ClearML REST side answers unknown endpoints with a 404 envelope,
    // and the files server answers its ping.
    let body = http_get(tasklab.api, "/v2.23/nosuch.endpoint").await;
    assert!(body.starts_with("HTTP/1.1 404"), "{body}");
    assert!(body.contains("\"result_code\":404"), "{body}");
    assert!(
        body.contains("Unable to find endpoint for name nosuch.endpoint"),
        "{body}"
    );
    let body = http_get(tasklab.files, "/").await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.ends_with("OK"), "{body}");

    let status = tasklab.terminate().await;
    assert!(status.success(), "tasklab exited with {status}");
}

#[tokio::test]
async fn version_and_help_document_the_commands() {
    let out = Command::new(env!("CARGO_BIN_EXE_tasklab"))
        .arg("version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("tasklab {}", env!("CARGO_PKG_VERSION"))
    );
    let out = Command::new(env!("CARGO_BIN_EXE_tasklab"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--data-dir",
        "--api-addr",
        "--files-addr",
        "--service",
        "--config",
    ] {
        assert!(help.contains(flag), "serve --help lacks {flag}:\n{help}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_tasklab"))
        .args(["serve", "--service", "nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown service"));
}

fn bare_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tasklab"));
    cmd.env_remove("TASKLAB_ACCESS_KEY")
        .env_remove("TASKLAB_SECRET_KEY");
    cmd
}

#[tokio::test]
async fn first_credential_is_generated_and_printed_once_then_managed_by_the_cli() {
    let mut first = Tasklab::start_in(tempfile::tempdir().unwrap(), bare_command());
    first.wait_ready().await;
    let (data, out) = first.stop_and_take().await;
    let access = out
        .lines()
        .find_map(|l| l.strip_prefix("access key: "))
        .unwrap_or_else(|| panic!("no generated credential printed: {out}"))
        .to_owned();
    assert!(out.contains("secret key: "), "{out}");
    let stored = std::fs::read_to_string(data.path().join("credentials.json")).unwrap();
    let secret = out
        .lines()
        .find_map(|l| l.strip_prefix("secret key: "))
        .unwrap();
    assert!(
        stored.contains(&access) && !stored.contains(secret),
        "secret must be stored hashed"
    );

    // A restart on the same data directory prints nothing new.
    let mut second = Tasklab::start_in(data, bare_command());
    second.wait_ready().await;
    let (data, out) = second.stop_and_take().await;
    assert!(
        !out.contains("access key:"),
        "credential printed twice: {out}"
    );

    // The CLI lists, creates and revokes.
    let cli = |args: &[&str]| {
        let out = bare_command()
            .args(["credentials", "--data-dir"])
            .arg(data.path())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(cli(&["list"]).contains(&format!("{access}\tactive")));
    let created = cli(&["create"]);
    let new_key = created
        .lines()
        .find_map(|l| l.strip_prefix("access key: "))
        .unwrap()
        .to_owned();
    cli(&["revoke", &access]);
    let listed = cli(&["list"]);
    assert!(listed.contains(&format!("{access}\trevoked")), "{listed}");
    assert!(listed.contains(&format!("{new_key}\tactive")), "{listed}");
    let out = bare_command()
        .args(["credentials", "--data-dir"])
        .arg(data.path())
        .args(["revoke", "NO-SUCH-KEY"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "revoking an unknown key must fail");
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test]
async fn health_command_probes_a_running_server_and_migrate_prepares_a_database() {
    let mut tasklab = Tasklab::start();
    tasklab.wait_ready().await;
    let out = Command::new(env!("CARGO_BIN_EXE_tasklab"))
        .args(["health", "--addr", &tasklab.api.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "SERVING");
    // Without --addr the address comes from settings, as `serve` binds it.
    let out = Command::new(env!("CARGO_BIN_EXE_tasklab"))
        .arg("health")
        .env("TASKLAB_API_ADDR", tasklab.api.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_tasklab"))
        .args([
            "health",
            "--addr",
            &tasklab.api.to_string(),
            "--grpc-service",
            "tasklab.nope.v1.X",
        ])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "an unknown service must not be healthy"
    );
    assert!(tasklab.terminate().await.success());
    let out = Command::new(env!("CARGO_BIN_EXE_tasklab"))
        .args([
            "health",
            "--addr",
            &tasklab.api.to_string(),
            "--timeout",
            "1",
        ])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a stopped server must not be healthy"
    );

    let data = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tasklab"))
        .args(["migrate", "--service", "projects"])
        .env("TASKLAB_DATA_DIR", data.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        data.path().join("projects.db").exists(),
        "migrate created no database"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_tasklab"))
        .args(["migrate", "--service", "gateway"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the gateway has no database to migrate"
    );
}
