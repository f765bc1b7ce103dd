//! Task search and create throughput, on SQLite and (when
//! `TASKLAB_TEST_POSTGRES_URL` is set) PostgreSQL.
//!
//! Seeds 100,000 tasks in 200 projects, then times ListTasks filtering on a
//! user tag, a status and a name regex, returning 50 tasks (the target:
//! p50 under 50 ms), plus a few neighbouring queries for context, and the
//! throughput of CreateTask through the domain core.
//!
//! `cargo bench -p tasklab-tasks --bench task_search` (release profile).
//! `TASK_SEARCH_TASKS` and `TASK_SEARCH_RUNS` override the sizes;
//! `TASK_SEARCH_SQLITE_FILE` keeps the SQLite database in that (new) file.

#![allow(clippy::print_stdout)]

use tasklab_db::testing::TestDb;
use tasklab_tasks::model::{DEVELOPMENT, TaskStatus, TaskType};
use tasklab_tasks::service::{ListRequest, NewTask, TaskService};
use tasklab_tasks::store::TagFilter;
use tokio::time::{Duration, Instant};

const PROJECTS: usize = 200;
const TAGS: usize = 40;
const MODELS: [&str; 12] = [
    "resnet",
    "vit",
    "bert",
    "gpt2",
    "unet",
    "yolo",
    "efficientnet",
    "lstm",
    "t5",
    "clip",
    "whisper",
    "mobilenet",
];

/// A small deterministic generator (xorshift64*), so every run seeds the
/// same data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn new_task(rng: &mut Rng, i: usize) -> (NewTask, TaskStatus) {
    let model = MODELS[rng.below(MODELS.len())];
    let mut tags = vec![format!("tag-{}", rng.below(TAGS))];
    if rng.below(2) == 0 {
        tags.push(format!("tag-{}", rng.below(TAGS)));
    }
    let mut system_tags = Vec::new();
    match rng.below(20) {
        0 => system_tags.push("archived".to_owned()),
        1..=4 => system_tags.push(DEVELOPMENT.to_owned()),
        _ => {}
    }
    let new = NewTask {
        name: format!("{model}-lr{}-bs{}-run{i}", rng.below(5), 16 << rng.below(4)),
        project_id: format!("project-{:03}", rng.below(PROJECTS)),
        task_type: Some(TaskType::ALL[rng.below(3)]),
        comment: format!("auto-generated run {i} of {model}"),
        tags,
        system_tags,
        ..NewTask::default()
    };
    (new, TaskStatus::ALL[rng.below(TaskStatus::ALL.len())])
}

async fn seed(svc: &TaskService, n: usize) -> Duration {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let started = Instant::now();
    let mut batch = Vec::with_capacity(5000);
    for i in 0..n {
        let (new, status) = new_task(&mut rng, i);
        let mut task = svc.build_new("bench", new).expect("valid task");
        task.status = status;
        batch.push(task);
        if batch.len() == 5000 || i + 1 == n {
            svc.store().insert_many(&batch).await.expect("bulk insert");
            batch.clear();
        }
    }
    started.elapsed()
}

struct Query {
    label: &'static str,
    request: ListRequest,
}

fn queries() -> Vec<Query> {
    let tag = |t: &str| TagFilter {
        any_of: vec![t.to_owned()],
        ..TagFilter::default()
    };
    let base = ListRequest {
        page_size: 50,
        ..ListRequest::default()
    };
    vec![
        Query {
            label: "tags + status + name regex (target)",
            request: ListRequest {
                tags: tag("tag-7"),
                statuses: vec![TaskStatus::Completed, TaskStatus::Published],
                name_regex: "^(resnet|vit)-lr[0-2]".into(),
                ..base.clone()
            },
        },
        Query {
            label: "same, include_total",
            request: ListRequest {
                tags: tag("tag-7"),
                statuses: vec![TaskStatus::Completed, TaskStatus::Published],
                name_regex: "^(resnet|vit)-lr[0-2]".into(),
                include_total: true,
                ..base.clone()
            },
        },
        Query {
            label: "tags + status + rare regex",
            request: ListRequest {
                tags: tag("tag-3"),
                statuses: vec![TaskStatus::Failed],
                name_regex: "whisper-lr4-bs128".into(),
                ..base.clone()
            },
        },
        Query {
            label: "project + order by name",
            request: ListRequest {
                project_ids: vec!["project-042".into()],
                order_by: vec![("name".into(), false)],
                ..base.clone()
            },
        },
        Query {
            label: "search_text over name/comment/id",
            request: ListRequest {
                search_text: "run 4242 ".into(),
                ..base.clone()
            },
        },
        Query {
            label: "no filter, newest first",
            request: base,
        },
    ]
}

async fn time_queries(svc: &TaskService, runs: usize) {
    for q in queries() {
        let first = svc.list(q.request.clone()).await.expect("list");
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            let started = Instant::now();
            let page = svc.list(q.request.clone()).await.expect("list");
            times.push(started.elapsed());
            assert_eq!(page.tasks.len(), first.tasks.len());
        }
        times.sort();
        let total = first
            .total
            .map(|t| format!(", {t} matches"))
            .unwrap_or_default();
        println!(
            "  {:<40} p50 {:>10}  p99 {:>10}  ({} tasks returned{total})",
            q.label,
            ms(percentile(&times, 0.5)),
            ms(percentile(&times, 0.99)),
            first.tasks.len(),
        );
    }
}

async fn time_creates(svc: &TaskService, n: usize, clients: usize) {
    let started = Instant::now();
    let mut handles = Vec::new();
    for c in 0..clients {
        let svc = svc.clone();
        handles.push(tokio::spawn(async move {
            let mut rng = Rng(0xD1B5_4A32_D192_ED03 ^ c as u64);
            for i in 0..n / clients {
                let (new, _) = new_task(&mut rng, i);
                svc.create("bench", new).await.expect("create");
            }
        }));
    }
    for h in handles {
        h.await.expect("client");
    }
    let elapsed = started.elapsed();
    let done = (n / clients) * clients;
    println!(
        "  create_task, {clients} client(s): {done} tasks in {:.2} s = {:.0} tasks/s",
        elapsed.as_secs_f64(),
        done as f64 / elapsed.as_secs_f64()
    );
}

async fn bench(backend: &str, url: &str, tasks: usize, runs: usize) {
    println!("== {backend}: {tasks} tasks in {PROJECTS} projects");
    let svc = tasklab_tasks::connect(url).await.expect("connect");
    let seeded = seed(&svc, tasks).await;
    println!(
        "  seeded in {:.1} s ({:.0} tasks/s, bulk insert)",
        seeded.as_secs_f64(),
        tasks as f64 / seeded.as_secs_f64()
    );
    if backend == "PostgreSQL" {
        use tasklab_db::sea_orm::ConnectionTrait;
        let db = tasklab_db::connect(url).await.expect("connect");
        db.execute_unprepared("VACUUM ANALYZE")
            .await
            .expect("vacuum analyze");
    }
    time_queries(&svc, runs).await;
    time_creates(&svc, 2000, 1).await;
    time_creates(&svc, 4000, 8).await;
}

fn main() {
    let tasks = env_usize("TASK_SEARCH_TASKS", 100_000);
    let runs = env_usize("TASK_SEARCH_RUNS", 200);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let sqlite = TestDb::sqlite();
        // To inspect the seeded database afterwards, name a file to keep.
        let url = match std::env::var("TASK_SEARCH_SQLITE_FILE") {
            Ok(path) => tasklab_db::sqlite_url(std::path::Path::new(&path)),
            Err(_) => sqlite.url.clone(),
        };
        bench("SQLite", &url, tasks, runs).await;
        match TestDb::postgres("task_search_bench").await {
            Some(pg) => bench("PostgreSQL", &pg.url, tasks, runs).await,
            None => println!("== PostgreSQL: skipped (set TASKLAB_TEST_POSTGRES_URL)"),
        }
    });
}
