//! End to end with the real ClearML SDK (`clearml==2.1.12`) and agent
//! (`clearml-agent==3.0.3`): the `tasklab` binary is started as a user would
//! (`tasklab serve`), and unmodified SDK scripts (`tests/sdk/*.py`) run
//! against it with nothing but the usual `CLEARML_*` variables. Each script
//! prints `RESULT {json}` with what the SDK saw, which is checked here.
//!
//! Every script runs in its own process with its own home directory, so
//! what one script wrote is read back by another, as in real use; two runs
//! of the same script share a home directory (the SDK's task cache), as two
//! runs of a user's script do.
//!
//! | issue item | test |
//! |---|---|
//! | `Task.init` new, nested project; `connect` dict and argparse; `connect_configuration`; `report_scalar`, `report_single_value`, `report_histogram`, `report_image`, `report_text`; `upload_artifact`; `OutputModel.update_weights`; `close` | [`sdk_tracks_a_run_and_another_process_reads_it_back`] (`track.py`) |
//! | from another process: `Task.get_task` by id and by project/name, `get_parameters`, the configuration, `get_reported_scalars`, `get_last_scalar_metrics`, single values, plots, debug samples, `get_reported_console_output`, the artifact and the model read back; `Task.get_tasks` with tags, `-tag`, status and type filters; `mark_stopped`, `mark_failed`, `reset`, `publish` | [`sdk_tracks_a_run_and_another_process_reads_it_back`] (`read.py`) |
//! | `Task.init` reused on a second run; `Task.clone` with changed parameters; `Task.enqueue` by queue name | [`sdk_reuses_a_task_on_a_second_run_then_clones_and_enqueues_it`] |
//! | stopping a running script from another client makes it stop by itself | [`sdk_stopping_a_running_script_from_another_client_makes_it_exit`] |
//! | `clearml-agent` daemon pulls an enqueued clone, runs it with the overridden parameters, streams its console, completes it; aborting a run the agent executes | [`agent_runs_a_cloned_task_from_the_queue`] |
//!
//! The Python interpreter comes from `TASKLAB_TEST_PYTHON` (a venv with the
//! SDK and agent; `tests/run` sets it up); without it the tests say so and
//! are skipped.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

const ACCESS_KEY: &str = "sdk-access";
const SECRET_KEY: &str = "sdk-secret";

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn python(test: &str) -> Option<String> {
    tasklab_db::testing::require_env("TASKLAB_TEST_PYTHON", "the ClearML SDK", test)
}

/// `tasklab serve` as a child process on free loopback ports.
struct Server {
    child: Child,
    api: SocketAddr,
    files: SocketAddr,
    dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let (api, files) = (free_addr(), free_addr());
        let log = std::fs::File::create(dir.path().join("tasklab.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tasklab"))
            .args(["serve", "--data-dir"])
            .arg(dir.path().join("data"))
            .args([
                "--api-addr",
                &api.to_string(),
                "--files-addr",
                &files.to_string(),
            ])
            .env("TASKLAB_ACCESS_KEY", ACCESS_KEY)
            .env("TASKLAB_SECRET_KEY", SECRET_KEY)
            .env("TASKLAB_QUEUES__REAPER_INTERVAL_SECS", "1")
            .env_remove("TASKLAB_CONFIG")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tasklab");
        let server = Server {
            child,
            api,
            files,
            dir,
        };
        server.wait_ready().await;
        server
    }

    async fn wait_ready(&self) {
        for _ in 0..500 {
            if tokio::net::TcpStream::connect(self.api).await.is_ok()
                && tokio::net::TcpStream::connect(self.files).await.is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("tasklab did not start: {}", self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tasklab.log")).unwrap_or_default()
    }

    /// The working directory of `script`'s runs; its `home/` is their home
    /// directory.
    fn work_dir(&self, script: &str) -> PathBuf {
        self.dir.path().join(format!("work-{script}"))
    }

    /// Copies `tests/sdk/<file>` into `script`'s working directory; returns
    /// the copy's path.
    fn stage(&self, script: &str, file: &str) -> PathBuf {
        let work = self.work_dir(script);
        std::fs::create_dir_all(work.join("home")).unwrap();
        let target = work.join(file);
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/sdk")
                .join(file),
            &target,
        )
        .unwrap();
        target
    }

    /// Runs `tests/sdk/<script>` (copied outside the repository, so the
    /// SDK's repository scan stays small) with the ClearML variables pointing
    /// here; returns the `RESULT` object.
    async fn run_sdk(&self, python: &str, script: &str, args: &[&str]) -> Value {
        let work = self.work_dir(script);
        let home = work.join("home");
        let target = self.stage(script, script);
        let mut cmd = Command::new(python);
        for (key, _) in std::env::vars() {
            if key.starts_with("CLEARML_") || key.starts_with("TRAINS_") {
                cmd.env_remove(key);
            }
        }
        cmd.arg(&target)
            .args(args)
            .current_dir(&work)
            .env("HOME", &home)
            .env("CLEARML_CONFIG_FILE", work.join("clearml.conf"))
            .env("CLEARML_API_HOST", format!("http://{}", self.api))
            .env("CLEARML_WEB_HOST", format!("http://{}", self.api))
            .env("CLEARML_FILES_HOST", format!("http://{}", self.files))
            .env("CLEARML_API_ACCESS_KEY", ACCESS_KEY)
            .env("CLEARML_API_SECRET_KEY", SECRET_KEY)
            .env("CLEARML_LOG_ENVIRONMENT", "")
            .env("PYTHONUNBUFFERED", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd.spawn().expect("start python");
        let output = wait_with_timeout(child, Duration::from_secs(300)).await;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let result = stdout
            .lines()
            .find_map(|l| l.strip_prefix("RESULT "))
            .unwrap_or_else(|| {
                panic!(
                    "{script} printed no RESULT (exit {:?})\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- tasklab log\n{}",
                    output.status,
                    self.log()
                )
            });
        assert!(
            output.status.success(),
            "{script} failed: {stderr}\n{}",
            self.log()
        );
        serde_json::from_str(result).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_with_timeout(mut child: Child, limit: Duration) -> std::process::Output {
    let mut waited = Duration::ZERO;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if waited > limit {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "SDK script timed out after {limit:?}\n--- stdout\n{}\n--- stderr\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += Duration::from_millis(100);
    }
}

fn id_of(v: &Value) -> &str {
    v["id"].as_str().expect("a task id")
}

/// Names in a `RESULT` list, as a set of `&str` for comparisons.
fn names(v: &Value) -> Vec<&str> {
    let mut out: Vec<&str> = v
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    out.sort_unstable();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_tracks_a_run_and_another_process_reads_it_back() {
    let Some(python) = python("sdk_tracks_a_run_and_another_process_reads_it_back") else {
        return;
    };
    let server = Server::start().await;
    let (project, name) = ("examples/nested", "exp1");
    let tracked = server
        .run_sdk(
            &python,
            "track.py",
            &[project, name, "--batch-size", "64", "--optimizer", "adamw"],
        )
        .await;
    let id = id_of(&tracked);
    let r = server
        .run_sdk(&python, "read.py", &[project, name, id])
        .await;

    // The task, by id and by project/name, closed as completed.
    assert_eq!(r["id"], id, "{r}");
    assert_eq!(r["by_name_id"], id, "Task.get_task by project and name");
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(r["project"], project);
    assert_eq!(r["output_uri"], format!("http://{}", server.files));
    assert_eq!(names(&r["tags"]), ["keep", "sdk"]);

    // Parameters: argparse arguments (section Args, the command line's
    // values over the defaults) and a connected dict (section General).
    let params = &r["params"];
    assert_eq!(params["Args/batch_size"], "64", "{params}");
    assert_eq!(params["Args/optimizer"], "adamw", "{params}");
    assert_eq!(params["Args/project"], project, "{params}");
    assert_eq!(params["General/lr"], "0.1", "{params}");
    assert_eq!(params["General/epochs"], "3", "{params}");
    assert_eq!(params["General/name"], "adam", "{params}");

    // The connected configuration, read back as a dict.
    assert_eq!(
        r["config"],
        serde_json::json!({"layers": [64, 32], "dropout": 0.25, "head": {"kind": "softmax"}}),
        "{r}"
    );
    assert!(
        names(&r["config_names"]).contains(&"model_config"),
        "{}",
        r["config_names"]
    );

    // Scalars: every reported point, the last/min/max summary, single values.
    let scalars = &r["scalars"]["loss"];
    assert_eq!(scalars["train"]["x"], serde_json::json!([0, 1, 2]), "{r}");
    assert_eq!(
        scalars["train"]["y"],
        serde_json::json!([1.0, 0.5, 1.0 / 3.0])
    );
    assert_eq!(
        scalars["val"]["y"],
        serde_json::json!([2.0, 1.0, 2.0 / 3.0])
    );
    let loss = &r["last_scalars"]["loss"]["train"];
    assert_eq!(loss["last"], 1.0 / 3.0, "{r}");
    assert_eq!(loss["min"], 1.0 / 3.0);
    assert_eq!(loss["max"], 1.0);
    assert_eq!(r["last_scalars"]["loss"]["val"]["max"], 2.0);
    assert_eq!(r["last_scalars"]["Summary"]["acc"]["last"], 0.9);
    assert_eq!(r["single_values"], serde_json::json!({"acc": 0.9}));

    // The histogram as a plot event, the image as one debug sample whose
    // file the files server serves (a red 12x8 JPEG).
    assert_eq!(
        r["plots"],
        serde_json::json!([{"metric": "hist", "variant": "counts", "iter": 0,
                            "data": [{"type": "bar", "y": [3, 1, 4]}]}]),
        "{r}"
    );
    let samples = r["debug_samples"].as_array().unwrap();
    assert_eq!(samples.len(), 1, "one sample, read once: {samples:?}");
    assert_eq!(samples[0]["metric"], "img");
    assert_eq!(samples[0]["variant"], "sample");
    let url = samples[0]["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("http://{}/{project}/{name}.{id}/", server.files)),
        "{url}"
    );
    assert_eq!(r["image"]["size"], serde_json::json!([12, 8]), "{r}");
    let pixel: Vec<i64> = r["image"]["pixel"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert!(
        pixel[0] > 240 && pixel[1] < 16 && pixel[2] < 16,
        "{pixel:?}"
    );

    // Console output: what the script printed and what report_text logged.
    assert_eq!(r["console_has_print"], true, "{r}");
    assert_eq!(r["console_has_text"], true, "{r}");

    // The artifact and the output model, read back through the files server.
    assert_eq!(r["artifact"], serde_json::json!({"a": 1, "b": [1, 2]}));
    assert_eq!(r["models"], serde_json::json!(["m1"]));
    let url = r["model_url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("http://{}/{project}/", server.files))
            && url.ends_with("model.bin"),
        "{url}"
    );
    assert_eq!(r["model_bytes_ok"], true, "{r}");

    // Status changes, each read back by a fresh Task.get_task.
    let life = &r["lifecycle"];
    assert_eq!(life["created"], "created", "{life}");
    assert_eq!(life["started"], "in_progress", "{life}");
    assert_eq!(life["stopped"], "stopped", "{life}");
    assert_eq!(life["published"], "published", "{life}");
    assert_eq!(
        life["reset_published"], "SendError",
        "a published task refuses reset: {life}"
    );
    assert_eq!(life["after_refused_reset"], "published", "{life}");
    assert_eq!(life["failed"], "failed", "{life}");
    assert_eq!(
        life["failed_scalars_before_reset"]["loss"]["train"]["last"], 7.0,
        "{life}"
    );
    assert_eq!(life["reset"], "created", "{life}");
    assert_eq!(
        life["failed_scalars_after_reset"],
        serde_json::json!({}),
        "reset deletes the metrics: {life}"
    );

    // Task.get_tasks filters.
    let lists = &r["get_tasks"];
    let all = ["exp1", "lifecycle-fail", "lifecycle-stop"];
    assert_eq!(names(&lists["all"]), all, "{lists}");
    assert_eq!(names(&lists["tag_sdk"]), ["exp1"], "{lists}");
    assert_eq!(
        names(&lists["tag_not_sdk"]),
        ["lifecycle-fail", "lifecycle-stop"],
        "{lists}"
    );
    assert_eq!(
        names(&lists["tag_not_scratch"]),
        ["exp1", "lifecycle-stop"],
        "{lists}"
    );
    assert_eq!(names(&lists["status_completed"]), ["exp1"], "{lists}");
    assert_eq!(
        names(&lists["status_published_or_created"]),
        ["lifecycle-fail", "lifecycle-stop"],
        "{lists}"
    );
    assert_eq!(names(&lists["type_testing"]), ["lifecycle-stop"], "{lists}");
    assert_eq!(names(&lists["type_training"]), ["exp1"], "{lists}");
    assert_eq!(
        names(&lists["name_regex"]),
        ["lifecycle-fail", "lifecycle-stop"],
        "{lists}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_reuses_a_task_on_a_second_run_then_clones_and_enqueues_it() {
    let Some(python) = python("sdk_reuses_a_task_on_a_second_run_then_clones_and_enqueues_it")
    else {
        return;
    };
    let server = Server::start().await;
    let first = server
        .run_sdk(&python, "reuse.py", &["flows", "reuse-me", "0.5"])
        .await;
    assert_eq!(first["status_at_start"], "in_progress", "{first}");
    assert_eq!(first["status_at_end"], "completed", "{first}");
    assert_eq!(first["scalars_at_end"]["loss"]["train"]["last"], 0.5);

    // The second run: same id, reset (the first run's metrics gone), running
    // again, then completed with only its own metrics.
    let second = server
        .run_sdk(&python, "reuse.py", &["flows", "reuse-me", "0.25"])
        .await;
    assert_eq!(second["id"], first["id"], "reused: {second}");
    assert_eq!(second["status_at_start"], "in_progress", "{second}");
    assert_eq!(
        second["scalars_at_start"],
        serde_json::json!({}),
        "{second}"
    );
    assert_eq!(second["status_at_end"], "completed", "{second}");
    let loss = &second["scalars_at_end"]["loss"]["train"];
    assert_eq!(loss["last"], 0.25, "{second}");
    assert_eq!(loss["max"], 0.25, "the first run's 0.5 is gone: {second}");

    // From a third process: clone it, change the clone's parameter, enqueue
    // the clone by queue name.
    let r = server
        .run_sdk(&python, "flows.py", &["flows", "reuse-me", "default"])
        .await;
    let clone = &r["clone"];
    assert_eq!(clone["status"], "queued", "{r}");
    assert_eq!(clone["source"], first["id"]);
    assert_eq!(clone["parent"], clone["source"]);
    assert_eq!(clone["params"]["General/lr"], "0.5", "{r}");
    assert_eq!(clone["source_params"]["General/lr"], "0.1", "{r}");
    assert_eq!(clone["last_scalars"], serde_json::json!({}), "{r}");
    assert_eq!(clone["queued_in"], r["queue_id"]);
    assert_eq!(r["search"], serde_json::json!(["cloned"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_stopping_a_running_script_from_another_client_makes_it_exit() {
    let Some(python) = python("sdk_stopping_a_running_script_from_another_client_makes_it_exit")
    else {
        return;
    };
    let server = Server::start().await;
    // abort_flow.py starts abort_target.py (a loop that would run for 300 s),
    // asks for the stop as the web UI does (`tasks.stop`), and gives the
    // script 60 s to notice by itself and exit.
    let target = server.stage("abort_flow.py", "abort_target.py");
    let r = server
        .run_sdk(
            &python,
            "abort_flow.py",
            &[target.to_str().unwrap(), "300", "60"],
        )
        .await;
    assert!(r["task_id"].is_string(), "the script never ran: {r}");
    assert_eq!(r["status_before"], "in_progress", "{r}");
    assert_eq!(
        r["exited"], true,
        "the script did not stop within 60 s: {r}"
    );
    assert_eq!(r["loop_finished"], false, "{r}");
    assert_ne!(r["returncode"], 0, "{r}");
    assert_eq!(r["user_aborted_message"], true, "{r}");
    // A development task with no agent stops at once; the script's own SDK
    // then confirms it.
    assert_eq!(r["status_after_request"], "stopped", "{r}");
    assert_eq!(r["status"], "stopped", "{r}");
    assert_eq!(r["status_reason"], "USER ABORTED", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_runs_a_cloned_task_from_the_queue() {
    let Some(python) = python("agent_runs_a_cloned_task_from_the_queue") else {
        return;
    };
    let server = Server::start().await;
    // agent_flow.py runs agent_train.py locally, clones and enqueues it,
    // starts `clearml-agent daemon --queue default --foreground`, then
    // enqueues a long clone and aborts it once the agent runs it.
    let train = server.stage("agent_flow.py", "agent_train.py");
    let r = server
        .run_sdk(&python, "agent_flow.py", &[train.to_str().unwrap(), "180"])
        .await;
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(r["params"]["General/lr"], "0.5");
    assert_eq!(
        r["scalars"]["lr"]["used"]["last"], 0.5,
        "the agent ran the clone with the edited parameter: {r}"
    );
    assert_eq!(r["console_has_trained"], true, "{r}");
    assert_eq!(r["last_worker"], "test-agent:0", "{r}");

    // Aborting a run the agent executes: the task keeps running with the
    // message "stopping" until the agent stops it (it ran for minutes
    // otherwise).
    assert_eq!(r["abort_status_before"], "in_progress", "{r}");
    assert_eq!(r["abort_last_worker"], "test-agent:0", "{r}");
    assert_eq!(r["abort_status_after_request"], "in_progress", "{r}");
    assert_eq!(r["abort_message_after_request"], "stopping", "{r}");
    assert_eq!(
        r["abort_status"], "stopped",
        "the agent did not stop it: {r}"
    );
    assert_eq!(r["abort_trained"], false, "{r}");
}
