//! The distributed deployment, end to end: every service binary started in
//! the per-service mode the containers use (`tasklab serve --service NAME`,
//! configured only through `TASKLAB_*` variables as `deploy/compose.yaml`
//! does), each domain service on its own fresh PostgreSQL database, queues on
//! Redis, and the gateway reaching them at `services.<name>.endpoint`. So what
//! the containers run is what CI tested.
//!
//! The flow: every process reports gRPC health SERVING through
//! `tasklab health` (the containers' health check); a nested project and a
//! task are created and read back through the gateway's public gRPC API
//! (authenticated with the access key pair); the ClearML REST API on the same
//! port logs in and lists them; the projects and tasks listeners and their
//! own PostgreSQL databases hold the rows; SIGTERM stops every process with
//! exit code 0 within 5 s.
//!
//! Needs `TASKLAB_TEST_POSTGRES_URL` (an admin URL) and
//! `TASKLAB_TEST_REDIS_URL`, which `tests/run` sets; without them the test
//! prints `SKIPPED` (and fails under `CI`).

mod common;

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use tasklab_db::sea_orm::{ConnectionTrait, Statement};
use tasklab_db::testing::{TestDb, require_env};
use tasklab_proto::projects::v1 as ppb;
use tasklab_proto::projects::v1::projects_service_client::ProjectsServiceClient;
use tasklab_proto::tasks::v1 as tpb;

use common::{free_addrs, tasklab};
use tasklab_proto::tasks::v1::tasks_service_client::TasksServiceClient;
use tokio::time::Instant;
use tonic::transport::Channel;

const TEST: &str = "distributed_services_serve_the_gateway_on_postgres_and_redis";
const REDIS_ENV: &str = "TASKLAB_TEST_REDIS_URL";
const ACCESS_KEY: &str = "distributed-access";
const SECRET_KEY: &str = "distributed-secret";

/// Each domain service and the gRPC services its listener must serve.
const DOMAIN_SERVICES: [(&str, &[&str]); 5] = [
    ("tasks", &["tasklab.tasks.v1.TasksService"]),
    ("projects", &["tasklab.projects.v1.ProjectsService"]),
    (
        "queues",
        &[
            "tasklab.queues.v1.QueuesService",
            "tasklab.queues.v1.WorkersService",
        ],
    ),
    (
        "artifacts",
        &[
            "tasklab.artifacts.v1.ArtifactsService",
            "tasklab.artifacts.v1.ModelsService",
            "tasklab.artifacts.v1.BlobsService",
        ],
    ),
    ("metrics", &["tasklab.metrics.v1.MetricsService"]),
];

/// How long a process may take to report SERVING (migrations on a loaded CI
/// machine included).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a process may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

const PROJECT_PATH: &str = "distributed/team/experiments";
const TASK_NAME: &str = "distributed smoke";

/// One `tasklab serve --service NAME` child process; its stdout and stderr go
/// to a log file, printed when the test fails.
struct Process {
    name: &'static str,
    addr: SocketAddr,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Process {
    /// Starts `tasklab serve --service <name>` plus `args`, with `env` and a
    /// fresh `TASKLAB_DATA_DIR`, listening on `addr`.
    fn spawn(
        name: &'static str,
        addr: SocketAddr,
        args: &[String],
        env: &[(String, String)],
    ) -> Process {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let log = dir.path().join("output.log");
        let out = File::create(&log).unwrap();
        let child = tasklab()
            .args(["serve", "--service", name])
            .args(args)
            .env("TASKLAB_DATA_DIR", &data)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("start tasklab serve --service {name}: {e}"));
        Process {
            name,
            addr,
            child,
            log,
            _dir: dir,
        }
    }

    /// The last lines the process wrote.
    fn output_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// Waits until `tasklab health --addr` reports SERVING; fails at once,
    /// with the process's output, when it exits first.
    async fn wait_serving(&mut self) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "{} exited with {status} before it was SERVING; its output:\n{}",
                    self.name,
                    self.output_tail()
                );
            }
            let out = health(self.addr, "").await;
            if out.status.success() {
                assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "SERVING");
                eprintln!("{} SERVING after {:?}", self.name, started.elapsed());
                return;
            }
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "{} on {} was not SERVING within {READY_TIMEOUT:?}; last probe: {}{}\nits output:\n{}",
                self.name,
                self.addr,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.output_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn sigterm(&self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success(), "kill -TERM {pid} ({}) failed", self.name);
    }

    /// Waits for the exit after SIGTERM without blocking the runtime (open
    /// client connections must be able to answer the server's GOAWAY).
    async fn wait_exit(&mut self, since: Instant) -> ExitStatus {
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                eprintln!(
                    "{} exited ({status}) {:?} after SIGTERM",
                    self.name,
                    since.elapsed()
                );
                return status;
            }
            assert!(
                since.elapsed() < STOP_TIMEOUT,
                "{} did not exit within {STOP_TIMEOUT:?} of SIGTERM; its output:\n{}",
                self.name,
                self.output_tail()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGTERM, then asserts exit code 0 within [`STOP_TIMEOUT`].
    async fn stop(&mut self) {
        let since = Instant::now();
        self.sigterm();
        let status = self.wait_exit(since).await;
        assert!(
            status.success(),
            "{} exited with {status} after SIGTERM; its output:\n{}",
            self.name,
            self.output_tail()
        );
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- output of {} ({}) -----\n{}\n-----",
                self.name,
                self.addr,
                self.output_tail()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `tasklab health --addr ADDR [--grpc-service NAME]`, as the
/// containers' health checks do.
async fn health(addr: SocketAddr, grpc_service: &str) -> Output {
    let grpc_service = grpc_service.to_owned();
    tokio::task::spawn_blocking(move || {
        tasklab()
            .args(["health", "--addr", &addr.to_string(), "--timeout", "2"])
            .args(["--grpc-service", &grpc_service])
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

async fn channel(addr: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

/// Standard base64 with padding (RFC 4648), for HTTP Basic credentials.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn basic_auth() -> String {
    format!(
        "Basic {}",
        base64(format!("{ACCESS_KEY}:{SECRET_KEY}").as_bytes())
    )
}

/// A gRPC request carrying the access key pair, as any API client sends it.
fn authed<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", basic_auth().parse().unwrap());
    request
}

/// An HTTP/1.1 reply: status code and (de-chunked) body.
#[derive(Debug)]
struct HttpReply {
    status: u16,
    body: String,
}

/// One HTTP/1.1 request over a fresh connection (`Connection: close`).
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    authorization: &str,
    body: &str,
) -> HttpReply {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: cannot connect to {addr}: {e}"));
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if !authorization.is_empty() {
        request.push_str(&format!("Authorization: {authorization}\r\n"));
    }
    if !body.is_empty() {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no complete reply within 30 s"))
        .unwrap();
    let raw = String::from_utf8(raw).expect("a UTF-8 reply");
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {path}: malformed reply {raw:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: no status in {head:?}"));
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    HttpReply { status, body }
}

fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16)
            .expect("a hexadecimal chunk size");
        if size == 0 {
            return body;
        }
        body.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
}

/// The string value of `"key":"…"` in a compact JSON text (no escapes in
/// the values this test reads).
fn json_string(json: &str, key: &str) -> Option<String> {
    let start = json.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let len = json[start..].find('"')?;
    Some(json[start..start + len].to_owned())
}

/// A ClearML REST call through the gateway: asserts the envelope reports
/// success and returns its body.
async fn clearml(api: SocketAddr, endpoint: &str, authorization: &str, body: &str) -> String {
    let reply = http(
        api,
        "POST",
        &format!("/v2.23/{endpoint}"),
        authorization,
        body,
    )
    .await;
    assert_eq!(reply.status, 200, "{endpoint}: {}", reply.body);
    assert!(
        reply.body.contains("\"result_code\":200"),
        "{endpoint}: {}",
        reply.body
    );
    reply.body
}

/// `SELECT COUNT(*) FROM <table>` in the database at `url`.
async fn count_rows(url: &str, table: &str) -> i64 {
    let db = tasklab_db::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            format!("SELECT COUNT(*) AS n FROM {table}"),
        ))
        .await
        .unwrap_or_else(|e| panic!("count {table} in {url}: {e}"))
        .expect("a row");
    let n: i64 = row.try_get("", "n").unwrap();
    db.close().await.ok();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_services_serve_the_gateway_on_postgres_and_redis() {
    // ------------------------------------------------------------ backends
    let mut databases = Vec::new();
    for (name, _) in DOMAIN_SERVICES {
        let Some(db) = TestDb::postgres(&format!("distributed_{name}")).await else {
            return;
        };
        databases.push(db);
    }
    let Some(redis_url) = require_env(REDIS_ENV, "Redis", TEST) else {
        return;
    };

    // ------------------------------------------------------------ processes
    let addrs = free_addrs(DOMAIN_SERVICES.len() + 2);
    let (api, files) = (
        addrs[DOMAIN_SERVICES.len()],
        addrs[DOMAIN_SERVICES.len() + 1],
    );
    // What every tasklab container receives (compose's `x-env`).
    let common = vec![
        ("TASKLAB_LOG__FORMAT".to_owned(), "json".to_owned()),
        ("TASKLAB_QUEUES__BACKEND".to_owned(), "redis".to_owned()),
        ("TASKLAB_REDIS_URL".to_owned(), redis_url.clone()),
        ("TASKLAB_FILES_URL".to_owned(), format!("http://{files}")),
    ];

    let mut services = Vec::new();
    for (((name, _), db), addr) in DOMAIN_SERVICES.iter().zip(&databases).zip(&addrs) {
        let mut env = common.clone();
        env.push((
            format!(
                "TASKLAB_SERVICES__{}__DATABASE_URL",
                name.to_ascii_uppercase()
            ),
            db.url.clone(),
        ));
        if *name == "artifacts" {
            env.push(("TASKLAB_BLOBS__BACKEND".to_owned(), "local".to_owned()));
        }
        let args = ["--listen-addr".to_owned(), addr.to_string()];
        services.push(Process::spawn(name, *addr, &args, &env));
    }
    for service in &mut services {
        service.wait_serving().await;
    }
    // Each listener serves exactly its own service.
    for ((name, grpc_services), service) in DOMAIN_SERVICES.iter().zip(&services) {
        for grpc_service in *grpc_services {
            let out = health(service.addr, grpc_service).await;
            assert!(
                out.status.success(),
                "{name} does not serve {grpc_service}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let foreign = if *name == "tasks" {
            "tasklab.projects.v1.ProjectsService"
        } else {
            "tasklab.tasks.v1.TasksService"
        };
        let out = health(service.addr, foreign).await;
        assert!(
            !out.status.success(),
            "the {name} listener claims to serve {foreign}"
        );
    }

    // The gateway, as its container runs: API and files addresses from the
    // settings, the domain services at their endpoints.
    let mut env = common.clone();
    env.extend([
        ("TASKLAB_API_ADDR".to_owned(), api.to_string()),
        ("TASKLAB_FILES_ADDR".to_owned(), files.to_string()),
        ("TASKLAB_ACCESS_KEY".to_owned(), ACCESS_KEY.to_owned()),
        ("TASKLAB_SECRET_KEY".to_owned(), SECRET_KEY.to_owned()),
    ]);
    for ((name, _), service) in DOMAIN_SERVICES.iter().zip(&services) {
        env.push((
            format!("TASKLAB_SERVICES__{}__ENDPOINT", name.to_ascii_uppercase()),
            format!("http://{}", service.addr),
        ));
    }
    let mut gateway = Process::spawn("gateway", api, &[], &env);
    gateway.wait_serving().await;
    for grpc_service in DOMAIN_SERVICES.iter().flat_map(|(_, names)| names.iter()) {
        let out = health(api, grpc_service).await;
        assert!(
            out.status.success(),
            "the gateway does not serve {grpc_service}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // ------------------------------------------------------------ gRPC via the gateway
    let gateway_channel = channel(api).await;
    let mut projects = ProjectsServiceClient::new(gateway_channel.clone());
    let mut tasks = TasksServiceClient::new(gateway_channel.clone());

    // The public gRPC API is authenticated.
    let refused = projects
        .list_projects(ppb::ListProjectsRequest::default())
        .await
        .expect_err("an unauthenticated call through the gateway must be refused");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");

    let created = projects
        .create_project(authed(ppb::CreateProjectRequest {
            path: PROJECT_PATH.to_owned(),
            description: "created through the gateway".to_owned(),
            ..Default::default()
        }))
        .await
        .unwrap_or_else(|e| panic!("CreateProject through the gateway: {e:?}"))
        .into_inner();
    assert!(created.created);
    assert_eq!(
        created.created_parent_ids.len(),
        2,
        "both ancestors are created: {created:?}"
    );
    let project = created.project.expect("the created project");
    assert_eq!(project.path, PROJECT_PATH);
    assert_eq!(project.name, "experiments");
    assert!(!project.parent_id.is_empty(), "{project:?}");

    let read = projects
        .get_project(authed(ppb::GetProjectRequest {
            id: project.id.clone(),
            read_mask: None,
        }))
        .await
        .unwrap_or_else(|e| panic!("GetProject through the gateway: {e:?}"))
        .into_inner()
        .project
        .expect("a project");
    assert_eq!(
        (read.id.as_str(), read.path.as_str()),
        (project.id.as_str(), PROJECT_PATH)
    );
    assert_eq!(read.description, "created through the gateway");

    let task = tasks
        .create_task(authed(tpb::CreateTaskRequest {
            name: TASK_NAME.to_owned(),
            project_id: project.id.clone(),
            r#type: tpb::TaskType::Training as i32,
            comment: "one task, many processes".to_owned(),
            ..Default::default()
        }))
        .await
        .unwrap_or_else(|e| panic!("CreateTask through the gateway: {e:?}"))
        .into_inner()
        .task
        .expect("the created task");
    assert_eq!(task.name, TASK_NAME);
    assert_eq!(task.project_id, project.id);
    assert_eq!(task.status, tpb::TaskStatus::Created as i32);

    let read = tasks
        .get_task(authed(tpb::GetTaskRequest {
            id: task.id.clone(),
            read_mask: None,
        }))
        .await
        .unwrap_or_else(|e| panic!("GetTask through the gateway: {e:?}"))
        .into_inner()
        .task
        .expect("a task");
    assert_eq!(
        (
            read.id.as_str(),
            read.name.as_str(),
            read.project_id.as_str()
        ),
        (task.id.as_str(), TASK_NAME, project.id.as_str())
    );
    assert_eq!(read.r#type, tpb::TaskType::Training as i32);

    let listed = tasks
        .list_tasks(authed(tpb::ListTasksRequest {
            project_ids: vec![project.id.clone()],
            ..Default::default()
        }))
        .await
        .unwrap_or_else(|e| panic!("ListTasks through the gateway: {e:?}"))
        .into_inner();
    let ids: Vec<&str> = listed.tasks.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, [task.id.as_str()]);

    // ------------------------------------------------------------ ClearML REST via the gateway
    let unauthenticated = http(api, "POST", "/v2.23/projects.get_all", "", "{}").await;
    assert_eq!(unauthenticated.status, 401, "{}", unauthenticated.body);

    let login = clearml(api, "auth.login", &basic_auth(), "{}").await;
    let token = json_string(&login, "token")
        .unwrap_or_else(|| panic!("auth.login returned no token: {login}"));
    let bearer = format!("Bearer {token}");

    let body = clearml(
        api,
        "projects.get_all",
        &bearer,
        &format!(r#"{{"id":["{}"]}}"#, project.id),
    )
    .await;
    assert!(
        body.contains(&format!("\"id\":\"{}\"", project.id)),
        "{body}"
    );
    assert!(
        body.contains(&format!("\"name\":\"{PROJECT_PATH}\"")),
        "{body}"
    );
    let body = clearml(api, "projects.get_all", &bearer, "{}").await;
    assert_eq!(
        body.matches("\"basename\":").count(),
        3,
        "the project and its two ancestors: {body}"
    );

    let body = clearml(
        api,
        "tasks.get_all",
        &bearer,
        &format!(r#"{{"project":["{}"]}}"#, project.id),
    )
    .await;
    assert!(body.contains(&format!("\"id\":\"{}\"", task.id)), "{body}");
    assert!(
        body.contains(&format!("\"name\":\"{TASK_NAME}\"")),
        "{body}"
    );
    assert!(
        body.contains(&format!("\"project\":\"{}\"", project.id)),
        "{body}"
    );
    assert!(body.contains("\"status\":\"created\""), "{body}");

    // ------------------------------------------------------------ the domain services own the data
    let projects_addr = services[1].addr;
    let direct = ProjectsServiceClient::new(channel(projects_addr).await)
        .get_project(ppb::GetProjectRequest {
            id: project.id.clone(),
            read_mask: None,
        })
        .await
        .unwrap_or_else(|e| panic!("GetProject on the projects listener {projects_addr}: {e:?}"))
        .into_inner()
        .project
        .expect("a project");
    assert_eq!(direct.path, PROJECT_PATH);
    let tasks_addr = services[0].addr;
    let direct = TasksServiceClient::new(channel(tasks_addr).await)
        .get_task(tpb::GetTaskRequest {
            id: task.id.clone(),
            read_mask: None,
        })
        .await
        .unwrap_or_else(|e| panic!("GetTask on the tasks listener {tasks_addr}: {e:?}"))
        .into_inner()
        .task
        .expect("a task");
    assert_eq!(direct.project_id, project.id);

    assert_eq!(
        count_rows(&databases[1].url, "projects").await,
        3,
        "rows in the projects service's own database"
    );
    assert_eq!(
        count_rows(&databases[0].url, "tasks").await,
        1,
        "rows in the tasks service's own database"
    );

    // The gateway container also serves the ClearML files server
    // (compose publishes 8081 from it).
    if let Err(e) = tokio::net::TcpStream::connect(files).await {
        panic!(
            "`serve --service gateway` does not listen on TASKLAB_FILES_ADDR {files} \
             (the ClearML files server): {e}"
        );
    }
    let files_ping = http(files, "GET", "/", "", "").await;
    assert_eq!(
        (files_ping.status, files_ping.body.as_str()),
        (200, "OK"),
        "the gateway's files server on {files}"
    );

    // ------------------------------------------------------------ shutdown
    drop((projects, tasks, gateway_channel));
    // As `docker compose down` does: the gateway first, then what it uses.
    gateway.stop().await;
    let since = Instant::now();
    for service in &services {
        service.sigterm();
    }
    for service in &mut services {
        let status = service.wait_exit(since).await;
        assert!(
            status.success(),
            "{} exited with {status} after SIGTERM; its output:\n{}",
            service.name,
            service.output_tail()
        );
    }
}
