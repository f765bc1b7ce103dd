//! Fault injection for the queue invariant: an acknowledged enqueue is never
//! lost, and task status and queue membership agree again within seconds
//! after any fault. Every fault is real and goes through the real
//! composition (`tasks.enqueue` / `tasks.dequeue` on the ClearML REST API of
//! the `tasklab` binary):
//!
//! * **A crash between the two steps of enqueue** (the task is `queued`, its
//!   entry never added) and **of dequeue** (the status is restored, the entry
//!   still there): `tasklab serve` runs with the gateway's fail point armed
//!   (`TASKLAB_FAILPOINTS`), which aborts the process at that spot; the test
//!   reads the SQLite files of the dead process to show the two services
//!   disagree, restarts the process on the same data directory and waits for
//!   the reconciler (every second here) to make them agree, then a worker
//!   pops (or does not pop) the task.
//! * **Redis restarting empty under the full stack**: every service a
//!   separate `tasklab serve --service NAME` process on its own PostgreSQL
//!   database, queue entries in a `redis-server` this test starts
//!   (`TASKLAB_TEST_REDIS_SERVER`) and kills with SIGKILL, then restarts empty
//!   on the same port; every acknowledged enqueue comes back in its queue,
//!   in order, without duplicates, rebuilt from the tasks service's records.
//! * **An enqueue whose push fails** is answered with an error and leaves
//!   the task in its previous status: never a queued task without an entry.
//!   The queues service's Redis refusing writes (`maxmemory` reached: the
//!   queue still resolves, `EnqueueTask` succeeds, `AddEntry` fails) shows
//!   the status change reverted; Redis down and the queues service stopped
//!   fail the enqueue before the task is touched.
//!
//! The gateway keeps its own credentials and reconciler lease in a second
//! Redis that stays up: a Redis holding the credentials that restarts empty
//! logs every client out until the gateway restarts, a different fault
//! from the one tested here.
//!
//! The distributed tests need `TASKLAB_TEST_POSTGRES_URL` and
//! `TASKLAB_TEST_REDIS_SERVER` (`tests/run` sets both); without them they
//! print `SKIPPED` (and fail under `CI`).

mod common;

use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tasklab_db::sea_orm::{ConnectionTrait, Statement};
use tasklab_db::testing::{TestDb, require_env};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::Instant;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use common::{Reply, basic, free_addrs, tasklab, try_send};

const ACCESS_KEY: &str = "faults-access";
const SECRET_KEY: &str = "faults-secret";
const REDIS_SERVER_ENV: &str = "TASKLAB_TEST_REDIS_SERVER";

/// How long a process may take to serve (migrations on a loaded machine).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long status and queue membership may take to agree again after a
/// fault, with the reconciler running every second.
const REPAIR_TIMEOUT: Duration = Duration::from_secs(10);
/// The fail points, as the gateway names them.
const ENQUEUE_POINT: &str = "enqueue-between-steps";
const DEQUEUE_POINT: &str = "dequeue-between-steps";
/// The signal of `std::process::abort` on Linux.
const SIGABRT: i32 = 6;
/// The signal of `kill -9`.
const SIGKILL: i32 = 9;

// ---------------------------------------------------------------- processes

/// A child process whose output goes to a log file (printed when the test
/// fails); killed when dropped.
struct Process {
    name: String,
    addr: SocketAddr,
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(name: &str, addr: SocketAddr, mut cmd: Command, log: PathBuf) -> Process {
        let out = File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Process {
            name: name.to_owned(),
            addr,
            child,
            log,
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn output_tail(&self) -> String {
        let text = self.output();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Waits until gRPC health on its address reports SERVING.
    async fn wait_serving(&mut self) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "{} exited with {status} before serving; its output:\n{}",
                    self.name,
                    self.output_tail()
                );
            }
            if serving(self.addr).await {
                return;
            }
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "{} on {} was not SERVING within {READY_TIMEOUT:?}; its output:\n{}",
                self.name,
                self.addr,
                self.output_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the process to exit by itself.
    async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let since = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                since.elapsed() < within,
                "{} still runs {within:?} later; its output:\n{}",
                self.name,
                self.output_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, and the exit.
    async fn stop(&mut self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success(), "kill -TERM {pid} ({})", self.name);
        self.wait_exit(Duration::from_secs(10)).await;
    }

    /// Asserts that the process died by the gateway's fail point: SIGABRT,
    /// with the fail point's line in its output.
    async fn assert_aborted_at(&mut self, point: &str) {
        let status = self.wait_exit(Duration::from_secs(10)).await;
        assert_eq!(
            status.signal(),
            Some(SIGABRT),
            "{} should have aborted at {point}, it exited with {status}; its output:\n{}",
            self.name,
            self.output_tail()
        );
        assert!(
            self.output()
                .contains(&format!("fail point {point} reached")),
            "{} aborted, but not at {point}; its output:\n{}",
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

async fn serving(addr: SocketAddr) -> bool {
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(format!("http://{addr}")) else {
        return false;
    };
    let Ok(channel) = endpoint
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
    else {
        return false;
    };
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await;
    reply.is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32)
}

/// `tasklab serve` (every service in one process, SQLite files in `data`)
/// with the reconciler every second and `failpoints` armed.
async fn serve_embedded(data: &Path, failpoints: &str, run: u32) -> Process {
    let addrs = free_addrs(2);
    let mut cmd = tasklab();
    // The abort may leave a core file in the working directory.
    cmd.current_dir(data.parent().unwrap())
        .args(["serve", "--data-dir"])
        .arg(data)
        .args(["--api-addr", &addrs[0].to_string()])
        .args(["--files-addr", &addrs[1].to_string()])
        .env("TASKLAB_ACCESS_KEY", ACCESS_KEY)
        .env("TASKLAB_SECRET_KEY", SECRET_KEY)
        .env("TASKLAB_QUEUES__REAPER_INTERVAL_SECS", "1")
        .env("TASKLAB_FAILPOINTS", failpoints);
    let log = data.parent().unwrap().join(format!("serve-{run}.log"));
    let mut process = Process::spawn(&format!("tasklab serve (run {run})"), addrs[0], cmd, log);
    process.wait_serving().await;
    process
}

// ---------------------------------------------------------------- Redis

/// A `redis-server` on a fixed loopback port, without persistence and in a
/// directory of its own, so a restart starts empty.
struct Redis {
    process: Process,
    bin: String,
    port: u16,
    dir: PathBuf,
    starts: u32,
}

impl Redis {
    async fn start(bin: &str, parent: &Path) -> Redis {
        let port = free_addrs(1)[0].port();
        let dir = parent.join(format!("redis-{port}"));
        std::fs::create_dir(&dir).unwrap();
        let dir = dir.as_path();
        let process = Redis::spawn(bin, port, dir, 0).await;
        Redis {
            process,
            bin: bin.to_owned(),
            port,
            dir: dir.to_owned(),
            starts: 1,
        }
    }

    async fn spawn(bin: &str, port: u16, dir: &Path, n: u32) -> Process {
        let mut cmd = Command::new(bin);
        cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut process = Process::spawn(
            &format!("redis-server :{port} (start {n})"),
            addr,
            cmd,
            dir.join(format!("start-{n}.log")),
        );
        let started = Instant::now();
        while !redis_ping(addr).await {
            if let Some(status) = process.child.try_wait().unwrap() {
                panic!(
                    "redis-server exited with {status}; its output:\n{}",
                    process.output_tail()
                );
            }
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "redis-server on {addr} never answered PING"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        process
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// SIGKILL: whatever it held is gone.
    async fn kill(&mut self) {
        self.process.child.kill().unwrap();
        let status = self.process.wait_exit(Duration::from_secs(5)).await;
        assert_eq!(status.signal(), Some(SIGKILL), "redis-server: {status}");
    }

    /// A new, empty server on the same port.
    async fn restart_empty(&mut self) {
        let process = Redis::spawn(&self.bin, self.port, &self.dir, self.starts).await;
        self.starts += 1;
        drop(std::mem::replace(&mut self.process, process));
    }
}

/// One inline Redis command; the first line of the reply.
async fn redis_command(addr: SocketAddr, command: &str) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(format!("{command}\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    text.lines().next().map(str::to_owned)
}

async fn redis_ping(addr: SocketAddr) -> bool {
    redis_command(addr, "PING").await.as_deref() == Some("+PONG")
}

// ---------------------------------------------------------------- ClearML REST

/// A ClearML REST call with the key pair; `None` when the server died
/// before answering.
async fn try_call(api: SocketAddr, endpoint: &str, body: Value) -> Option<Reply> {
    let authorization = basic(ACCESS_KEY, SECRET_KEY);
    let path = format!("/v2.23/{endpoint}");
    let headers = [
        ("authorization", authorization.as_str()),
        ("content-type", "application/json"),
    ];
    let body = body.to_string();
    let request = try_send(api, "POST", &path, &headers, body.as_bytes());
    tokio::time::timeout(Duration::from_secs(30), request)
        .await
        .unwrap_or_else(|_| panic!("{endpoint}: no reply within 30 s"))
}

/// `data` of a successful call, `Err` with the reply otherwise.
async fn call(api: SocketAddr, endpoint: &str, body: Value) -> Result<Value, String> {
    match try_call(api, endpoint, body).await {
        None => Err(format!("{endpoint}: no reply")),
        Some(reply) if reply.status == 200 => Ok(reply.json()["data"].clone()),
        Some(reply) => Err(format!("{endpoint}: {} {}", reply.status, reply.text())),
    }
}

async fn ok(api: SocketAddr, endpoint: &str, body: Value) -> Value {
    call(api, endpoint, body)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

fn id_of(data: &Value) -> String {
    data["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {data}"))
        .to_owned()
}

async fn create_queue(api: SocketAddr, name: &str) -> String {
    id_of(&ok(api, "queues.create", json!({ "name": name })).await)
}

async fn create_task(api: SocketAddr, name: &str) -> String {
    id_of(
        &ok(
            api,
            "tasks.create",
            json!({ "name": name, "type": "training" }),
        )
        .await,
    )
}

/// The task's status, status reason and the queue its execution names.
async fn task_state(api: SocketAddr, task: &str) -> Result<(String, String, String), String> {
    let data = call(
        api,
        "tasks.get_all",
        json!({ "id": [task], "only_fields": ["id", "status", "status_reason", "execution.queue"] }),
    )
    .await?;
    let t = &data["tasks"][0];
    Ok((
        t["status"].as_str().unwrap_or_default().to_owned(),
        t["status_reason"].as_str().unwrap_or_default().to_owned(),
        t["execution"]["queue"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    ))
}

/// The task ids of a queue's entries, in order.
async fn entries(api: SocketAddr, queue: &str) -> Result<Vec<String>, String> {
    let data = call(api, "queues.get_by_id", json!({ "queue": queue })).await?;
    let list = data["queue"]["entries"]
        .as_array()
        .ok_or_else(|| format!("no entries in {data}"))?;
    Ok(list
        .iter()
        .map(|e| e["task"].as_str().unwrap_or_default().to_owned())
        .collect())
}

/// `queues.get_next_task` as an agent calls it; the popped task id, if any.
async fn pop(api: SocketAddr, queue: &str) -> Option<String> {
    let data = ok(api, "queues.get_next_task", json!({ "queue": queue })).await;
    data["entry"]["task"].as_str().map(str::to_owned)
}

/// Polls `check` until it returns `Ok`, for at most [`REPAIR_TIMEOUT`], and
/// prints how long it took.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let since = Instant::now();
    loop {
        match check().await {
            Ok(()) => {
                eprintln!("{what}: after {:?}", since.elapsed());
                return;
            }
            Err(last) => assert!(
                since.elapsed() < REPAIR_TIMEOUT,
                "{what}: not within {REPAIR_TIMEOUT:?}; last seen: {last}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------- on disk

/// One text column of the first row of `sql` in a SQLite file of a stopped
/// process; `None` without a row.
async fn sqlite_text(file: &Path, sql: &str) -> Option<String> {
    let db = tasklab_db::connect(&tasklab_db::sqlite_url(file))
        .await
        .unwrap_or_else(|e| panic!("open {}: {e}", file.display()));
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap_or_else(|e| panic!("{sql} in {}: {e}", file.display()));
    let value = row.map(|r| r.try_get::<String>("", "v").unwrap());
    db.close().await.ok();
    value
}

/// `(task status, the queue of its entry)` as the dead process left them in
/// the tasks and queues databases.
async fn on_disk(data: &Path, task: &str) -> (String, Option<String>) {
    let status = sqlite_text(
        &data.join("tasks.db"),
        &format!("SELECT status AS v FROM tasks WHERE id = '{task}'"),
    )
    .await
    .expect("the task row");
    let entry = sqlite_text(
        &data.join("queues.db"),
        &format!("SELECT queue_id AS v FROM queue_entries WHERE task_id = '{task}'"),
    )
    .await;
    (status, entry)
}

// ---------------------------------------------------------------- crash tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_crash_between_the_two_steps_is_repaired_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut tl = serve_embedded(&data, ENQUEUE_POINT, 1).await;
    let queue = create_queue(tl.addr, "crash-enqueue").await;
    let task = create_task(tl.addr, "enqueued when the gateway dies").await;

    // The gateway dies after EnqueueTask, before AddEntry: the request is
    // never acknowledged.
    let reply = try_call(
        tl.addr,
        "tasks.enqueue",
        json!({ "task": task, "queue": queue }),
    )
    .await;
    assert!(
        reply.is_none(),
        "the enqueue must not be answered: {:?}",
        reply.map(|r| r.text())
    );
    tl.assert_aborted_at(ENQUEUE_POINT).await;
    drop(tl);
    // The services disagree: queued in the tasks database, no entry.
    assert_eq!(on_disk(&data, &task).await, ("queued".to_owned(), None));

    let tl = serve_embedded(&data, "", 2).await;
    let api = tl.addr;
    eventually("queued and in its queue", || async {
        let (status, _, task_queue) = task_state(api, &task).await?;
        let listed = entries(api, &queue).await?;
        if status == "queued" && task_queue == queue && listed == [task.clone()] {
            Ok(())
        } else {
            Err(format!(
                "status {status}, execution.queue {task_queue:?}, entries {listed:?}"
            ))
        }
    })
    .await;
    assert_eq!(pop(api, &queue).await.as_deref(), Some(task.as_str()));
    assert_eq!(pop(api, &queue).await, None, "popped once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dequeue_crash_between_the_two_steps_is_repaired_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut tl = serve_embedded(&data, DEQUEUE_POINT, 1).await;
    let queue = create_queue(tl.addr, "crash-dequeue").await;
    let task = create_task(tl.addr, "dequeued when the gateway dies").await;
    let data_reply = ok(
        tl.addr,
        "tasks.enqueue",
        json!({ "task": task, "queue": queue }),
    )
    .await;
    assert_eq!(data_reply["queued"], 1);
    assert_eq!(
        entries(tl.addr, &queue).await.unwrap(),
        std::slice::from_ref(&task)
    );

    // The gateway dies after DequeueTask, before the entry is removed.
    let reply = try_call(tl.addr, "tasks.dequeue", json!({ "task": task })).await;
    assert!(
        reply.is_none(),
        "the dequeue must not be answered: {:?}",
        reply.map(|r| r.text())
    );
    tl.assert_aborted_at(DEQUEUE_POINT).await;
    drop(tl);
    // The services disagree: a draft again, still an entry.
    assert_eq!(
        on_disk(&data, &task).await,
        ("created".to_owned(), Some(queue.clone()))
    );

    let tl = serve_embedded(&data, "", 2).await;
    let api = tl.addr;
    eventually("back to its status and out of the queue", || async {
        let (status, _, _) = task_state(api, &task).await?;
        let listed = entries(api, &queue).await?;
        if status == "created" && listed.is_empty() {
            Ok(())
        } else {
            Err(format!("status {status}, entries {listed:?}"))
        }
    })
    .await;
    assert_eq!(pop(api, &queue).await, None, "nothing to pop");
    // The task is an ordinary draft again: it can be enqueued and popped.
    ok(
        api,
        "tasks.enqueue",
        json!({ "task": task, "queue": queue }),
    )
    .await;
    assert_eq!(pop(api, &queue).await.as_deref(), Some(task.as_str()));
}

// ---------------------------------------------------------------- the full stack

const DOMAIN_SERVICES: [&str; 5] = ["tasks", "projects", "queues", "artifacts", "metrics"];

/// Every service as its own process (`tasklab serve --service NAME`) on its
/// own PostgreSQL database; queue entries in `queues_redis`, the gateway's
/// credentials and reconciler lease in `gateway_redis`.
struct Stack {
    /// The domain services, in [`DOMAIN_SERVICES`] order.
    services: Vec<Process>,
    gateway: Process,
    queues_redis: Redis,
    _gateway_redis: Redis,
    _databases: Vec<TestDb>,
    _dir: tempfile::TempDir,
}

impl Stack {
    /// `None` (after a SKIPPED line) without PostgreSQL or `redis-server`.
    async fn start(test: &str) -> Option<Stack> {
        let redis_bin = require_env(REDIS_SERVER_ENV, "redis-server", test)?;
        let mut databases = Vec::new();
        for name in DOMAIN_SERVICES {
            databases.push(TestDb::postgres(&format!("{test} ({name})")).await?);
        }
        let dir = tempfile::tempdir().unwrap();
        let queues_redis = Redis::start(&redis_bin, dir.path()).await;
        let gateway_redis = Redis::start(&redis_bin, dir.path()).await;

        let addrs = free_addrs(DOMAIN_SERVICES.len() + 2);
        let (api, files) = (
            addrs[DOMAIN_SERVICES.len()],
            addrs[DOMAIN_SERVICES.len() + 1],
        );
        let mut services = Vec::new();
        for ((name, db), addr) in DOMAIN_SERVICES.iter().zip(&databases).zip(&addrs) {
            let data = dir.path().join(name);
            std::fs::create_dir(&data).unwrap();
            let mut cmd = tasklab();
            cmd.args([
                "serve",
                "--service",
                name,
                "--listen-addr",
                &addr.to_string(),
            ])
            .env("TASKLAB_DATA_DIR", &data)
            .env("TASKLAB_QUEUES__BACKEND", "redis")
            .env("TASKLAB_REDIS_URL", queues_redis.url())
            .env("TASKLAB_QUEUES__REAPER_INTERVAL_SECS", "1")
            .env(
                format!(
                    "TASKLAB_SERVICES__{}__DATABASE_URL",
                    name.to_ascii_uppercase()
                ),
                &db.url,
            )
            .env("TASKLAB_BLOBS__BACKEND", "local");
            let log = dir.path().join(format!("{name}.log"));
            services.push(Process::spawn(name, *addr, cmd, log));
        }
        let data = dir.path().join("gateway");
        std::fs::create_dir(&data).unwrap();
        let mut cmd = tasklab();
        cmd.args(["serve", "--service", "gateway"])
            .env("TASKLAB_DATA_DIR", &data)
            .env("TASKLAB_API_ADDR", api.to_string())
            .env("TASKLAB_FILES_ADDR", files.to_string())
            .env("TASKLAB_ACCESS_KEY", ACCESS_KEY)
            .env("TASKLAB_SECRET_KEY", SECRET_KEY)
            .env("TASKLAB_REDIS_URL", gateway_redis.url())
            .env("TASKLAB_QUEUES__REAPER_INTERVAL_SECS", "1");
        for (name, addr) in DOMAIN_SERVICES.iter().zip(&addrs) {
            cmd.env(
                format!("TASKLAB_SERVICES__{}__ENDPOINT", name.to_ascii_uppercase()),
                format!("http://{addr}"),
            );
        }
        let mut gateway = Process::spawn("gateway", api, cmd, dir.path().join("gateway.log"));
        let started = Instant::now();
        for service in &mut services {
            service.wait_serving().await;
        }
        gateway.wait_serving().await;
        eprintln!("stack SERVING after {:?}", started.elapsed());
        Some(Stack {
            services,
            gateway,
            queues_redis,
            _gateway_redis: gateway_redis,
            _databases: databases,
            _dir: dir,
        })
    }

    fn api(&self) -> SocketAddr {
        self.gateway.addr
    }

    fn queues_service(&mut self) -> &mut Process {
        let i = DOMAIN_SERVICES.iter().position(|n| *n == "queues").unwrap();
        &mut self.services[i]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarting_empty_under_the_full_stack_loses_no_acknowledged_enqueue() {
    let Some(mut stack) =
        Stack::start("redis_restarting_empty_under_the_full_stack_loses_no_acknowledged_enqueue")
            .await
    else {
        return;
    };
    let api = stack.api();
    let queues = [
        create_queue(api, "rebuilt-a").await,
        create_queue(api, "rebuilt-b").await,
    ];
    // Six acknowledged enqueues, interleaved between two queues.
    let mut expected: [Vec<String>; 2] = [vec![], vec![]];
    for i in 0..6 {
        let task = create_task(api, &format!("acknowledged {i}")).await;
        let queue = &queues[i % 2];
        let reply = ok(
            api,
            "tasks.enqueue",
            json!({ "task": task, "queue": queue }),
        )
        .await;
        assert_eq!(reply["queued"], 1, "acknowledged: {reply}");
        expected[i % 2].push(task);
    }
    for (queue, tasks) in queues.iter().zip(&expected) {
        assert_eq!(&entries(api, queue).await.unwrap(), tasks);
    }

    stack.queues_redis.kill().await;
    stack.queues_redis.restart_empty().await;

    eventually(
        "every acknowledged enqueue back in its queue, in order",
        || async {
            for (queue, tasks) in queues.iter().zip(&expected) {
                let listed = entries(api, queue).await?;
                if &listed != tasks {
                    return Err(format!("queue {queue}: {listed:?}, want {tasks:?}"));
                }
            }
            Ok(())
        },
    )
    .await;
    for (queue, tasks) in queues.iter().zip(&expected) {
        for task in tasks {
            let (status, _, task_queue) = task_state(api, task).await.unwrap();
            assert_eq!(
                (status.as_str(), task_queue.as_str()),
                ("queued", queue.as_str())
            );
        }
    }
    // A worker pops each exactly once, in the original order.
    for (queue, tasks) in queues.iter().zip(&expected) {
        for task in tasks {
            assert_eq!(pop(api, queue).await.as_ref(), Some(task));
        }
        assert_eq!(pop(api, queue).await, None, "queue {queue} is drained");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_whose_push_fails_is_an_error_and_leaves_the_task_unqueued() {
    let Some(mut stack) =
        Stack::start("enqueue_whose_push_fails_is_an_error_and_leaves_the_task_unqueued").await
    else {
        return;
    };
    let api = stack.api();
    let redis = stack.queues_redis.process.addr;
    let queue = create_queue(api, "push-fails").await;
    // A control task, enqueued while everything is up.
    let control = create_task(api, "enqueued before the faults").await;
    ok(
        api,
        "tasks.enqueue",
        json!({ "task": control, "queue": queue }),
    )
    .await;

    // 1. The queues service's Redis refuses writes (out of memory) but
    // still answers reads: the queue resolves, EnqueueTask succeeds,
    // AddEntry fails; the status change is reverted and the caller gets an
    // error.
    let task = create_task(api, "enqueued while Redis refuses writes").await;
    assert_eq!(
        redis_command(redis, "CONFIG SET maxmemory 1")
            .await
            .as_deref(),
        Some("+OK")
    );
    let reply = try_call(
        api,
        "tasks.enqueue",
        json!({ "task": task, "queue": queue }),
    )
    .await
    .expect("the gateway answers");
    assert_ne!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        redis_command(redis, "CONFIG SET maxmemory 0")
            .await
            .as_deref(),
        Some("+OK")
    );
    let (status, reason, _) = task_state(api, &task).await.unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("created", "enqueue failed"),
        "the status change was made, then reverted"
    );
    // (A reconciliation that read the task in its instant as queued may add
    // an entry that the next pass drops: "agree again within seconds".)
    eventually("the failed enqueue has no entry", || async {
        let listed = entries(api, &queue).await?;
        if listed == [control.clone()] {
            Ok(())
        } else {
            Err(format!("entries {listed:?}"))
        }
    })
    .await;

    // 2. The queues service's Redis is down, then back empty: the enqueue
    // is an error and changes nothing; the control task is rebuilt (so a
    // reconciliation ran after the restart) and the failed one stays out.
    let late = create_task(api, "enqueued while Redis is down").await;
    stack.queues_redis.kill().await;
    let reply = try_call(
        api,
        "tasks.enqueue",
        json!({ "task": late, "queue": queue }),
    )
    .await
    .expect("the gateway answers");
    assert_ne!(reply.status, 200, "{}", reply.text());
    assert_eq!(task_state(api, &late).await.unwrap().0, "created");
    stack.queues_redis.restart_empty().await;
    eventually("the control task rebuilt, alone", || async {
        let listed = entries(api, &queue).await?;
        if listed == [control.clone()] {
            Ok(())
        } else {
            Err(format!("entries {listed:?}"))
        }
    })
    .await;
    for t in [&task, &late] {
        assert_eq!(task_state(api, t).await.unwrap().0, "created");
    }
    assert_eq!(pop(api, &queue).await.as_ref(), Some(&control));
    assert_eq!(pop(api, &queue).await, None);
    // Once the fault is gone the same enqueue works.
    ok(
        api,
        "tasks.enqueue",
        json!({ "task": task, "queue": queue }),
    )
    .await;
    assert_eq!(pop(api, &queue).await.as_ref(), Some(&task));

    // 3. The queues service itself is stopped: the enqueue is an error and
    // the task keeps its status.
    stack.queues_service().stop().await;
    let reply = try_call(
        api,
        "tasks.enqueue",
        json!({ "task": late, "queue": queue }),
    )
    .await
    .expect("the gateway answers");
    assert_ne!(reply.status, 200, "{}", reply.text());
    assert_eq!(task_state(api, &late).await.unwrap().0, "created");
}
