//! `kill -9` of a process whose SQL queue backend (SQLite, embedded mode)
//! is busy loses nothing it acknowledged: every add, pop (lease) and
//! acknowledgement that was answered is in the database afterwards.
//!
//! The test re-runs its own binary as a child that adds tasks, pops and
//! acknowledges some of them through the domain core, printing one line
//! after each answer. The parent kills the child with SIGKILL mid-stream
//! (the hot path's writer thread dies with it, wherever it is), reopens the
//! same database file with a new backend and checks every answered step.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tasklab_queues::backend::sql::SqlBackend;
use tasklab_queues::backend::{LeaseTarget, QueueBackend};
use tasklab_queues::migration::Migrator;
use tasklab_queues::service::{Limits, NewQueue, PopRequest, QueueService, SystemClock, WakeHub};
use tasklab_queues::store::Store;

const DB_ENV: &str = "TASKLAB_QUEUES_DURABILITY_URL";

/// Steps answered before the parent kills the child.
const KILL_AFTER: usize = 300;

async fn service(url: &str) -> (QueueService, Arc<dyn QueueBackend>) {
    let db = tasklab_db::connect_and_migrate::<Migrator>(url)
        .await
        .unwrap();
    let backend: Arc<dyn QueueBackend> = Arc::new(SqlBackend::new(db.clone()).await.unwrap());
    let svc = QueueService::new(
        Store::new(db),
        backend.clone(),
        Arc::new(WakeHub::default()),
        Arc::new(SystemClock),
        Limits::default(),
    );
    (svc, backend)
}

/// The child: adds, pops and acknowledges until killed, announcing each
/// answer.
async fn child(url: &str) {
    let (svc, _) = service(url).await;
    let q = svc
        .create_queue(NewQueue {
            name: "durable".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .0
        .row
        .id;
    let mut out = std::io::stdout();
    writeln!(out, "QUEUE {q}").unwrap();
    // A second writer in the same process, so batches hold several
    // operations when the kill lands.
    let bg = {
        let (svc, q) = (svc.clone(), q.clone());
        tokio::spawn(async move {
            for i in 0.. {
                svc.add_entry(&q, &format!("bg-{i}"), 0, false)
                    .await
                    .unwrap();
            }
        })
    };
    for i in 0.. {
        let task = format!("t-{i}");
        svc.add_entry(&q, &task, 0, false).await.unwrap();
        writeln!(out, "ADD {task}").unwrap();
        if i % 2 == 0 {
            let (_, lease) = svc
                .pop(PopRequest {
                    worker_id: "durable-worker".into(),
                    queue_ids: vec![q.clone()],
                    wait: Duration::ZERO,
                    ..Default::default()
                })
                .await
                .unwrap()
                .expect("a waiting entry");
            writeln!(out, "LEASE {} {}", lease.task_id, lease.lease_id).unwrap();
            if i % 4 == 0 {
                svc.ack(&LeaseTarget::LeaseId(lease.lease_id), "durable-worker")
                    .await
                    .unwrap();
                writeln!(out, "ACKED {}", lease.task_id).unwrap();
            }
        }
        out.flush().unwrap();
    }
    bg.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_queue_steps_survive_kill_9() {
    // Run again by itself as the child, with the database in `DB_ENV`.
    if let Ok(url) = std::env::var(DB_ENV) {
        child(&url).await;
        return;
    }
    let db = tasklab_db::testing::TestDb::sqlite();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "acknowledged_queue_steps_survive_kill_9",
            "--exact",
            "--nocapture",
        ])
        .env(DB_ENV, &db.url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let pid = child.id().to_string();
    // Read every line the child printed: SIGKILL once KILL_AFTER are in, then
    // drain what it wrote before it died (it keeps going until the signal
    // lands, and those answers count too), up to end of file.
    let lines = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines() {
            // The test harness prints its own lines too.
            let line = line.unwrap();
            if !["QUEUE ", "ADD ", "LEASE ", "ACKED "]
                .iter()
                .any(|p| line.starts_with(p))
            {
                continue;
            }
            lines.push(line);
            if lines.len() == KILL_AFTER {
                let killed = Command::new("kill").args(["-KILL", &pid]).status().unwrap();
                assert!(killed.success(), "kill -9 {pid} failed");
            }
        }
        lines
    })
    .await
    .unwrap();
    child.wait().unwrap();
    assert!(
        lines.len() >= KILL_AFTER,
        "the child stopped early: {lines:?}"
    );
    // The step in flight when the signal landed may have committed without
    // being announced: after a last `LEASE`, that is the acknowledgement of
    // the lease, so its task may be gone.
    let in_flight = lines
        .last()
        .and_then(|l| l.strip_prefix("LEASE "))
        .and_then(|rest| rest.split(' ').next())
        .map(str::to_owned);

    let mut queue = None;
    let mut added = BTreeSet::new();
    let mut leased = BTreeMap::new();
    let mut acked = BTreeSet::new();
    for line in &lines {
        let words: Vec<&str> = line.split(' ').collect();
        match words.as_slice() {
            ["QUEUE", q] => queue = Some((*q).to_owned()),
            ["ADD", task] => {
                added.insert((*task).to_owned());
            }
            ["LEASE", task, lease] => {
                leased.insert((*task).to_owned(), (*lease).to_owned());
            }
            ["ACKED", task] => {
                leased.remove(*task);
                acked.insert((*task).to_owned());
            }
            _ => panic!("unexpected line from the child: {line}"),
        }
    }
    let queue = queue.expect("the child created its queue");
    assert!(!acked.is_empty() && !leased.is_empty(), "{lines:?}");

    // A new process's backend on the same file.
    let (_svc, backend) = service(&db.url).await;
    // Tasks of the background writer show up only through pops.
    let seen: BTreeSet<&String> = added.iter().chain(leased.keys()).chain(&acked).collect();
    for task in seen {
        let found = backend.find(task).await.unwrap();
        if acked.contains(task) {
            assert_eq!(found, None, "{task} was acknowledged but is still queued");
            continue;
        }
        if found.is_none() && in_flight.as_ref() == Some(task) {
            continue;
        }
        let entry = found.unwrap_or_else(|| panic!("{task} was added but is gone"));
        assert_eq!(entry.queue_id, queue);
        // Not in `leased`: never popped, or popped after the last answer.
        if let Some(lease_id) = leased.get(task) {
            let lease = entry
                .lease
                .unwrap_or_else(|| panic!("{task} was popped but is not leased"));
            assert_eq!(&lease.lease_id, lease_id);
            assert_eq!(lease.worker_id, "durable-worker");
        }
    }
    // Every answered pop is leased and every answered add is there, so the
    // counters agree with the rows they count.
    let listed = backend.list(&queue, 0, 100_000, true).await.unwrap();
    let (waiting, leased_count) = backend.counts(&queue).await.unwrap();
    assert_eq!(
        listed.iter().filter(|e| e.lease.is_none()).count(),
        waiting as usize
    );
    assert_eq!(
        listed.iter().filter(|e| e.lease.is_some()).count(),
        leased_count as usize
    );
}
