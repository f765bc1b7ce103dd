//! The domain core on a real store (SQLite and PostgreSQL): lifecycle,
//! edit rules, clone, reset, batches, lists, and bad input that must change
//! nothing.

mod common;

use std::collections::BTreeMap;

use chrono::Duration;
use tasklab_error::ErrorCode;
use tasklab_tasks::model::{
    ModelRef, Requirements, Script, Sections, Task, TaskModels, TaskStatus, TaskType,
};
use tasklab_tasks::service::{
    CloneTask, HyperParamKey, ListRequest, StatusChange, TaskEdit, TaskService, TaskUpdate,
};
use tasklab_tasks::store::TagFilter;

use common::*;

on_both_backends!(
    create_validates_and_defaults,
    agent_lifecycle,
    published_tasks_are_read_only,
    invalid_transitions_change_nothing,
    expected_status_is_compare_and_set,
    edits_need_a_draft_or_force,
    per_key_edits,
    request_stop_tells_live_workers_from_gone_ones,
    reset_clears_outputs_and_reports_cleanup,
    clone_copies_inputs_never_outputs,
    enqueue_and_dequeue,
    batches_are_all_or_nothing,
    list_validates_and_pages,
    delete_rules,
    concurrent_status_changes_have_one_winner,
    ping_and_stats,
);

async fn get(svc: &TaskService, id: &str) -> Task {
    svc.get(id, Sections::ALL).await.unwrap()
}

fn opts() -> StatusChange {
    StatusChange::default()
}

fn forced() -> StatusChange {
    StatusChange {
        force: true,
        ..StatusChange::default()
    }
}

fn code<T: std::fmt::Debug>(r: Result<T, tasklab_error::Error>) -> ErrorCode {
    r.expect_err("expected an error").code()
}

async fn count(svc: &TaskService) -> usize {
    let req = ListRequest {
        include_archived: true,
        include_hidden: true,
        ..ListRequest::default()
    };
    svc.list(req).await.unwrap().tasks.len()
}

async fn create_validates_and_defaults(url: &str) {
    let (svc, _) = service(url).await;
    assert_eq!(
        code(svc.create("u", new_task("  ab  ", "p", &[])).await),
        ErrorCode::InvalidTaskName
    );
    let mut bad = new_task("valid name", "p", &[]);
    bad.hyperparams.insert(String::new(), values(&[("a", "1")]));
    assert_eq!(code(svc.create("u", bad).await), ErrorCode::InvalidArgument);
    let mut bad = new_task("valid name", "p", &[]);
    bad.tags = vec![String::new()];
    assert_eq!(code(svc.create("u", bad).await), ErrorCode::InvalidArgument);
    let mut bad = new_task("valid name", "p", &[]);
    bad.models.input = vec![ModelRef {
        name: "m".into(),
        model_id: String::new(),
        updated: None,
    }];
    assert_eq!(code(svc.create("u", bad).await), ErrorCode::InvalidArgument);
    assert_eq!(count(&svc).await, 0, "refused creates write nothing");

    let mut new = new_task("  abc  ", "p", &["z", "a"]);
    new.task_type = None;
    let task = svc.create("alice", new).await.unwrap();
    assert_eq!(task.name, "abc");
    assert_eq!(task.task_type, TaskType::Training);
    assert_eq!(task.status, TaskStatus::Created);
    assert_eq!(task.user, "alice");
    assert_eq!(task.tags, vec!["a", "z"]);
    assert_eq!(task.id.len(), 32);
    assert!(
        task.id
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    assert_eq!(get(&svc, &task.id).await, task);
    assert_eq!(
        code(svc.get(&"0".repeat(32), Sections::ALL).await),
        ErrorCode::TaskNotFound
    );
    assert_eq!(
        code(svc.get("", Sections::ALL).await),
        ErrorCode::MissingField
    );
}

async fn agent_lifecycle(url: &str) {
    let (svc, _) = service(url).await;
    let mut new = new_task("agent run", "p", &[]);
    new.system_tags = vec!["development".into()];
    let task = svc.create("u", new).await.unwrap();

    let q = svc.enqueue("u", &task.id, &opts(), "q1").await.unwrap();
    assert_eq!(
        (q.updated, q.previous_status, q.task.status),
        (1, TaskStatus::Created, TaskStatus::Queued)
    );
    assert_eq!(q.task.execution.queue_id, "q1");
    assert_eq!(q.task.enqueue_status, Some(TaskStatus::Created));
    assert!(
        q.task.system_tags.is_empty(),
        "enqueue removes `development`"
    );

    let pulled = StatusChange {
        force: true,
        message: "pulled by agent".into(),
        ..opts()
    };
    let s = svc
        .start("agent", &task.id, &pulled, "host:0")
        .await
        .unwrap();
    assert_eq!(
        (s.updated, s.previous_status, s.left_queue_id.as_str()),
        (1, TaskStatus::Queued, "q1")
    );
    assert_eq!(s.task.status, TaskStatus::InProgress);
    assert_eq!(s.task.status_message, "pulled by agent");
    assert_eq!(s.task.last_worker, "host:0");
    assert_eq!(s.task.enqueue_status, None);
    assert_eq!(s.task.execution.queue_id, "q1", "kept while it runs");
    let started = s.task.started.unwrap();

    // The agent and then the SDK report started again: same-status moves.
    let again = svc.start("sdk", &task.id, &opts(), "").await.unwrap();
    assert_eq!(
        (again.updated, again.task.status),
        (1, TaskStatus::InProgress)
    );
    assert_eq!(again.task.started, Some(started), "started is set once");
    assert_eq!(
        again.task.status_message, "",
        "a restart clears the message"
    );
    assert_eq!(again.task.last_worker, "host:0");
    assert!(
        again.task.status_changed == s.task.status_changed,
        "status did not change"
    );

    let done = StatusChange {
        reason: "worker execution done".into(),
        ..opts()
    };
    let c = svc.complete("agent", &task.id, &done, false).await.unwrap();
    assert_eq!(c.transition.task.status, TaskStatus::Completed);
    assert_eq!(c.transition.task.status_reason, "worker execution done");
    assert!(!c.published);
    assert!(c.transition.task.completed.is_some());
    assert_eq!(get(&svc, &task.id).await, c.transition.task);

    let p = svc.publish("u", &task.id, &opts()).await.unwrap();
    assert_eq!(
        (p.transition.updated, p.transition.task.status),
        (1, TaskStatus::Published)
    );
    assert!(p.transition.task.published.is_some());
    let p2 = svc.publish("u", &task.id, &opts()).await.unwrap();
    assert_eq!(p2.transition.updated, 0, "publishing again changes nothing");
    assert_eq!(get(&svc, &task.id).await, p.transition.task);

    // complete with publish, from a running task.
    let t2 = svc
        .create("u", new_task("publish on complete", "p", &[]))
        .await
        .unwrap();
    svc.start("u", &t2.id, &opts(), "").await.unwrap();
    svc.set_models(
        "u",
        &t2.id,
        vec![],
        vec![ModelRef {
            name: "model".into(),
            model_id: "m9".into(),
            updated: None,
        }],
        false,
    )
    .await
    .unwrap();
    let c = svc.complete("u", &t2.id, &opts(), true).await.unwrap();
    assert!(c.published);
    assert_eq!(c.output_model_ids, vec!["m9"]);
    assert_eq!(get(&svc, &t2.id).await.status, TaskStatus::Published);
}

async fn published_tasks_are_read_only(url: &str) {
    let (svc, _) = service(url).await;
    let task = svc
        .create("u", new_task("to publish", "p", &["t"]))
        .await
        .unwrap();
    svc.publish("u", &task.id, &forced()).await.unwrap();
    let before = get(&svc, &task.id).await;
    let edit = || TaskEdit {
        script: Some(Script {
            entry_point: "x.py".into(),
            ..Script::default()
        }),
        ..TaskEdit::default()
    };
    let name = || TaskEdit {
        descriptive: TaskUpdate {
            name: Some("renamed".into()),
            ..TaskUpdate::default()
        },
        ..TaskEdit::default()
    };
    let checks: Vec<ErrorCode> = vec![
        code(svc.edit("u", &task.id, edit(), true).await),
        code(svc.edit("u", &task.id, name(), true).await),
        code(
            svc.update(
                "u",
                &task.id,
                TaskUpdate {
                    comment: Some("c".into()),
                    ..TaskUpdate::default()
                },
                false,
            )
            .await,
        ),
        code(
            svc.set_hyperparams(
                "u",
                &task.id,
                BTreeMap::from([("S".into(), values(&[("a", "1")]))]),
                false,
                true,
            )
            .await,
        ),
        code(
            svc.delete_configuration("u", &task.id, vec!["x".into()], true)
                .await,
        ),
        code(
            svc.set_user_properties("u", &task.id, values(&[("k", "v")]), false, false)
                .await,
        ),
        code(
            svc.set_requirements("u", &task.id, Requirements::default(), true)
                .await,
        ),
        code(
            svc.set_output_destination("u", &task.id, "s3://x".into(), true)
                .await,
        ),
        code(
            svc.set_models(
                "u",
                &task.id,
                vec![],
                vec![ModelRef {
                    name: "m".into(),
                    model_id: "m".into(),
                    updated: None,
                }],
                true,
            )
            .await,
        ),
        code(svc.start("u", &task.id, &forced(), "w").await),
        code(svc.stop("u", &task.id, &forced()).await),
        code(svc.fail("u", &task.id, &forced()).await),
        code(svc.request_stop("u", &task.id, &forced()).await),
        code(svc.enqueue("u", &task.id, &forced(), "q").await),
        code(svc.reset("u", &task.id, &opts(), false).await),
        code(svc.delete(&task.id, false).await),
    ];
    assert!(
        checks.iter().all(|c| *c == ErrorCode::TaskPublished),
        "{checks:?}"
    );
    assert_eq!(get(&svc, &task.id).await, before, "nothing changed");

    // Where the contract says so, force lifts the lock.
    let (n, t) = svc
        .update(
            "u",
            &task.id,
            TaskUpdate {
                comment: Some("c".into()),
                ..TaskUpdate::default()
            },
            true,
        )
        .await
        .unwrap();
    assert_eq!((n, t.comment.as_str()), (1, "c"));
    assert_eq!(
        svc.set_user_properties("u", &task.id, values(&[("k", "v")]), false, true)
            .await
            .unwrap(),
        1
    );
    // Batches that only organise tasks work in every status.
    assert_eq!(
        svc.add_tags(
            "u",
            std::slice::from_ref(&task.id),
            vec!["u2".into()],
            vec![]
        )
        .await
        .unwrap(),
        1
    );
    let r = svc.reset("u", &task.id, &forced(), false).await.unwrap();
    assert_eq!(r.transition.task.status, TaskStatus::Created);
    assert_eq!(r.transition.task.published, None);
}

async fn invalid_transitions_change_nothing(url: &str) {
    let (svc, _) = service(url).await;
    let task = svc
        .create("u", new_task("draft task", "p", &[]))
        .await
        .unwrap();
    for result in [
        svc.close("u", &task.id, &opts()).await,
        svc.stop("u", &task.id, &opts()).await,
        svc.fail("u", &task.id, &opts()).await,
        svc.complete("u", &task.id, &opts(), false)
            .await
            .map(|c| c.transition),
        svc.publish("u", &task.id, &opts())
            .await
            .map(|p| p.transition),
        svc.request_stop("u", &task.id, &opts())
            .await
            .map(|s| s.transition),
    ] {
        let err = result.unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidTaskStatus);
        assert_eq!(err.fields()["current_status"], "created");
        assert_eq!(
            get(&svc, &task.id).await,
            task,
            "a refused change writes nothing"
        );
    }
    // Force skips the table.
    let c = svc.close("u", &task.id, &forced()).await.unwrap();
    assert_eq!(c.task.status, TaskStatus::Closed);
    assert_eq!(
        code(svc.start("u", &"0".repeat(32), &opts(), "").await),
        ErrorCode::TaskNotFound
    );
}

async fn expected_status_is_compare_and_set(url: &str) {
    let (svc, _) = service(url).await;
    let task = svc
        .create("u", new_task("cas status", "p", &[]))
        .await
        .unwrap();
    let expect = |s| StatusChange {
        expected_status: Some(s),
        ..opts()
    };
    let err = svc
        .start("u", &task.id, &expect(TaskStatus::Queued), "")
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::TaskStatusChanged);
    assert_eq!(err.fields()["current_status"], "created");
    assert_eq!(get(&svc, &task.id).await, task);
    let s = svc
        .start("u", &task.id, &expect(TaskStatus::Created), "")
        .await
        .unwrap();
    assert_eq!(s.task.status, TaskStatus::InProgress);
}

async fn edits_need_a_draft_or_force(url: &str) {
    let (svc, _) = service(url).await;
    let task = svc
        .create("u", new_task("edit rules", "p", &[]))
        .await
        .unwrap();
    // A draft takes every edit without force.
    let script = Script {
        entry_point: "a.py".into(),
        ..Script::default()
    };
    let (n, t) = svc
        .edit(
            "u",
            &task.id,
            TaskEdit {
                script: Some(script.clone()),
                ..TaskEdit::default()
            },
            false,
        )
        .await
        .unwrap();
    assert_eq!((n, t.script.entry_point.as_str()), (1, "a.py"));
    let (n, _) = svc
        .edit(
            "u",
            &task.id,
            TaskEdit {
                script: Some(script),
                ..TaskEdit::default()
            },
            false,
        )
        .await
        .unwrap();
    assert_eq!(n, 0, "same value: no write");

    svc.start("u", &task.id, &opts(), "").await.unwrap();
    let running = get(&svc, &task.id).await;
    let inputs = [
        code(
            svc.edit(
                "u",
                &task.id,
                TaskEdit {
                    task_type: Some(TaskType::Testing),
                    ..TaskEdit::default()
                },
                false,
            )
            .await,
        ),
        code(
            svc.edit(
                "u",
                &task.id,
                TaskEdit {
                    hyperparams: Some(BTreeMap::new()),
                    ..TaskEdit::default()
                },
                false,
            )
            .await,
        ),
        code(
            svc.set_hyperparams(
                "u",
                &task.id,
                BTreeMap::from([("A".into(), values(&[("x", "1")]))]),
                false,
                false,
            )
            .await,
        ),
        code(
            svc.delete_hyperparams(
                "u",
                &task.id,
                vec![HyperParamKey {
                    section: "A".into(),
                    name: String::new(),
                }],
                false,
            )
            .await,
        ),
        code(
            svc.set_configuration("u", &task.id, values(&[("c", "1")]), false, false)
                .await,
        ),
        code(
            svc.set_requirements(
                "u",
                &task.id,
                Requirements {
                    pip: "x".into(),
                    ..Requirements::default()
                },
                false,
            )
            .await,
        ),
        code(
            svc.set_output_destination("u", &task.id, "s3://b".into(), false)
                .await,
        ),
        code(
            svc.set_models(
                "u",
                &task.id,
                vec![ModelRef {
                    name: "in".into(),
                    model_id: "m".into(),
                    updated: None,
                }],
                vec![],
                false,
            )
            .await,
        ),
    ];
    assert!(
        inputs.iter().all(|c| *c == ErrorCode::TaskNotDraft),
        "{inputs:?}"
    );
    assert_eq!(
        get(&svc, &task.id).await,
        running,
        "refused edits write nothing"
    );

    // Descriptive fields, user properties and output models need no draft.
    let rename = TaskUpdate {
        name: Some("renamed task".into()),
        tags: Some(vec!["x".into()]),
        ..TaskUpdate::default()
    };
    let (n, t) = svc.update("u", &task.id, rename, false).await.unwrap();
    assert_eq!(
        (n, t.name.as_str(), t.tags.clone()),
        (1, "renamed task", vec!["x".to_owned()])
    );
    let (n, _) = svc
        .edit(
            "u",
            &task.id,
            TaskEdit {
                descriptive: TaskUpdate {
                    comment: Some("c".into()),
                    ..TaskUpdate::default()
                },
                ..TaskEdit::default()
            },
            false,
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        svc.set_user_properties("u", &task.id, values(&[("k", "v")]), false, false)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        svc.set_models(
            "u",
            &task.id,
            vec![],
            vec![ModelRef {
                name: "out".into(),
                model_id: "m".into(),
                updated: None
            }],
            false
        )
        .await
        .unwrap(),
        1
    );
    // And force edits inputs of a running task (what the SDK sends).
    assert_eq!(
        svc.set_output_destination("u", &task.id, "s3://b".into(), true)
            .await
            .unwrap(),
        1
    );
    assert_eq!(get(&svc, &task.id).await.output.destination, "s3://b");
    // Bad input stays bad with force.
    assert_eq!(
        code(
            svc.update(
                "u",
                &task.id,
                TaskUpdate {
                    name: Some("x".into()),
                    ..TaskUpdate::default()
                },
                true
            )
            .await
        ),
        ErrorCode::InvalidTaskName
    );
    assert_eq!(
        code(
            svc.update("u", &task.id, TaskUpdate::default(), false)
                .await
        ),
        ErrorCode::InvalidArgument
    );
}

async fn per_key_edits(url: &str) {
    let (svc, _) = service(url).await;
    let mut new = new_task("per key", "p", &[]);
    new.hyperparams = BTreeMap::from([
        ("Args".to_owned(), values(&[("lr", "0.1"), ("bs", "32")])),
        ("General".to_owned(), values(&[("x", "1")])),
    ]);
    new.configuration = values(&[("General", "a: 1"), ("extra", "b: 2")]);
    let task = svc.create("u", new).await.unwrap();
    let id = task.id.as_str();

    let merge = BTreeMap::from([("Args".to_owned(), values(&[("lr", "0.5"), ("wd", "0.01")]))]);
    assert_eq!(
        svc.set_hyperparams("u", id, merge.clone(), false, false)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        svc.set_hyperparams("u", id, merge, false, false)
            .await
            .unwrap(),
        0
    );
    let h = get(&svc, id).await.hyperparams;
    assert_eq!(h["Args"].keys().collect::<Vec<_>>(), vec!["bs", "lr", "wd"]);
    assert_eq!(h["Args"]["lr"].value, "0.5");
    let replace = BTreeMap::from([("Args".to_owned(), values(&[("only", "1")]))]);
    svc.set_hyperparams("u", id, replace, true, false)
        .await
        .unwrap();
    let h = get(&svc, id).await.hyperparams;
    assert_eq!(h["Args"].keys().collect::<Vec<_>>(), vec!["only"]);
    assert!(h.contains_key("General"), "sections not named are kept");

    let keys = vec![
        HyperParamKey {
            section: "Args".into(),
            name: "only".into(),
        },
        HyperParamKey {
            section: "General".into(),
            name: String::new(),
        },
        HyperParamKey {
            section: "Nope".into(),
            name: "x".into(),
        },
    ];
    assert_eq!(
        svc.delete_hyperparams("u", id, keys.clone(), false)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        svc.delete_hyperparams("u", id, keys, false).await.unwrap(),
        0
    );
    let h = get(&svc, id).await.hyperparams;
    assert!(h.get("Args").is_some_and(|s| s.is_empty()) && !h.contains_key("General"));
    assert_eq!(
        code(
            svc.delete_hyperparams(
                "u",
                id,
                vec![HyperParamKey {
                    section: String::new(),
                    name: "x".into()
                }],
                false
            )
            .await
        ),
        ErrorCode::InvalidArgument
    );

    svc.set_configuration("u", id, values(&[("General", "c: 3")]), false, false)
        .await
        .unwrap();
    let c = get(&svc, id).await.configuration;
    assert_eq!((c["General"].value.as_str(), c.len()), ("c: 3", 2));
    svc.set_configuration("u", id, values(&[("new", "n")]), true, false)
        .await
        .unwrap();
    assert_eq!(
        get(&svc, id).await.configuration.keys().collect::<Vec<_>>(),
        vec!["new"]
    );
    assert_eq!(
        svc.delete_configuration("u", id, vec!["new".into(), "ghost".into()], false)
            .await
            .unwrap(),
        1
    );
    assert!(get(&svc, id).await.configuration.is_empty());

    svc.set_user_properties("u", id, values(&[("a", "1"), ("b", "2")]), false, false)
        .await
        .unwrap();
    assert_eq!(
        svc.delete_user_properties("u", id, vec!["a".into()], false)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        get(&svc, id)
            .await
            .user_properties
            .keys()
            .collect::<Vec<_>>(),
        vec!["b"]
    );

    let req = Requirements {
        pip: "torch==2.3\n".into(),
        conda: "".into(),
        orig_pip: "torch\n".into(),
        other: BTreeMap::new(),
    };
    svc.set_requirements("u", id, req.clone(), false)
        .await
        .unwrap();
    assert_eq!(get(&svc, id).await.script.requirements, req);
    svc.set_output_destination("u", id, "http://files".into(), false)
        .await
        .unwrap();
    assert_eq!(get(&svc, id).await.output.destination, "http://files");

    let m = |n: &str, id: &str| ModelRef {
        name: n.into(),
        model_id: id.into(),
        updated: None,
    };
    svc.set_models(
        "u",
        id,
        vec![m("base", "m1")],
        vec![m("model", "m2")],
        false,
    )
    .await
    .unwrap();
    let first = get(&svc, id).await.models;
    assert!(first.input[0].updated.is_some());
    assert_eq!(
        svc.set_models("u", id, vec![m("base", "m1")], vec![], false)
            .await
            .unwrap(),
        0,
        "same reference"
    );
    svc.set_models(
        "u",
        id,
        vec![],
        vec![m("model", "m3"), m("ckpt", "m4")],
        false,
    )
    .await
    .unwrap();
    let models = get(&svc, id).await.models;
    assert_eq!(
        models
            .output
            .iter()
            .map(|r| r.model_id.as_str())
            .collect::<Vec<_>>(),
        vec!["m3", "m4"]
    );
    assert_eq!(
        models.input, first.input,
        "untouched references keep their time"
    );
    svc.delete_models(
        "u",
        id,
        vec!["base".into()],
        vec!["ckpt".into(), "nope".into()],
        false,
    )
    .await
    .unwrap();
    let models = get(&svc, id).await.models;
    assert!(models.input.is_empty());
    assert_eq!(models.output.len(), 1);
    let dup = svc
        .set_models("u", id, vec![], vec![m("a", "1"), m("a", "2")], false)
        .await;
    assert_eq!(code(dup), ErrorCode::InvalidArgument);
}

async fn request_stop_tells_live_workers_from_gone_ones(url: &str) {
    let (svc, clock) = service(url).await;
    let task = svc
        .create("u", new_task("worker run", "p", &[]))
        .await
        .unwrap();
    svc.start("agent", &task.id, &opts(), "host:1")
        .await
        .unwrap();
    let s = svc
        .request_stop("ui-user", &task.id, &opts())
        .await
        .unwrap();
    assert!(s.stopping);
    assert_eq!(s.transition.task.status, TaskStatus::InProgress);
    assert_eq!(s.transition.task.status_message, "stopping");
    assert_eq!(s.transition.updated, 1);

    // The worker went silent past the timeout: the task stops at once.
    clock.advance(Duration::seconds(121));
    let s = svc
        .request_stop("ui-user", &task.id, &opts())
        .await
        .unwrap();
    assert!(!s.stopping);
    assert_eq!(s.transition.task.status, TaskStatus::Stopped);
    assert_eq!(s.transition.task.status_message, "stopped by ui-user");
    assert!(s.transition.task.completed.is_some());
    // Stopping a stopped task changes nothing.
    let again = svc
        .request_stop("ui-user", &task.id, &opts())
        .await
        .unwrap();
    assert_eq!(again.transition.updated, 0);

    // A development run (no agent) stops at once even with a fresh worker.
    let mut new = new_task("dev run", "p", &[]);
    new.system_tags = vec!["development".into()];
    let dev = svc.create("u", new).await.unwrap();
    svc.start("u", &dev.id, &opts(), "laptop").await.unwrap();
    let s = svc
        .request_stop(
            "u",
            &dev.id,
            &StatusChange {
                message: "abort".into(),
                ..opts()
            },
        )
        .await
        .unwrap();
    assert!(!s.stopping);
    assert_eq!(
        (
            s.transition.task.status,
            s.transition.task.status_message.as_str()
        ),
        (TaskStatus::Stopped, "abort")
    );

    // A queued task leaves its queue.
    let queued = svc
        .create("u", new_task("queued run", "p", &[]))
        .await
        .unwrap();
    svc.enqueue("u", &queued.id, &opts(), "q7").await.unwrap();
    let s = svc.request_stop("u", &queued.id, &opts()).await.unwrap();
    assert_eq!(
        (
            s.transition.task.status,
            s.transition.left_queue_id.as_str()
        ),
        (TaskStatus::Stopped, "q7")
    );
}

async fn reset_clears_outputs_and_reports_cleanup(url: &str) {
    let (svc, _) = service(url).await;
    let mut new = new_task("reset me", "p", &[]);
    new.script = Script {
        entry_point: "train.py".into(),
        ..Script::default()
    };
    new.hyperparams = BTreeMap::from([("Args".to_owned(), values(&[("lr", "1")]))]);
    new.models = TaskModels {
        input: vec![ModelRef {
            name: "base".into(),
            model_id: "in1".into(),
            updated: None,
        }],
        output: vec![ModelRef {
            name: "model".into(),
            model_id: "out1".into(),
            updated: None,
        }],
    };
    new.runtime = serde_json::json!({"progress": "50"})
        .as_object()
        .cloned()
        .unwrap();
    let task = svc.create("u", new).await.unwrap();
    svc.start("u", &task.id, &opts(), "w").await.unwrap();
    svc.fail("u", &task.id, &opts()).await.unwrap();

    let r = svc
        .reset(
            "u",
            &task.id,
            &StatusChange {
                reason: "reset".into(),
                ..opts()
            },
            false,
        )
        .await
        .unwrap();
    let t = &r.transition.task;
    assert_eq!(
        (r.transition.previous_status, t.status),
        (TaskStatus::Failed, TaskStatus::Created)
    );
    assert_eq!(t.status_reason, "reset");
    assert_eq!((t.started, t.completed, t.published), (None, None, None));
    assert!(t.runtime.is_empty() && t.models.output.is_empty());
    assert_eq!(t.models.input.len(), 1, "inputs are kept");
    assert_eq!(t.script.entry_point, "train.py");
    assert_eq!(t.hyperparams["Args"]["lr"].value, "1");
    assert_eq!(r.cleanup.output_model_ids, vec!["out1"]);
    assert!(
        r.cleanup.delete_events
            && r.cleanup.delete_output_artifacts
            && !r.cleanup.delete_input_artifacts
    );
    assert_eq!(get(&svc, &task.id).await, *t);

    // From a queue, with clear_all.
    svc.enqueue("u", &task.id, &opts(), "q1").await.unwrap();
    let r = svc.reset("u", &task.id, &opts(), true).await.unwrap();
    assert_eq!(r.cleanup.left_queue_id, "q1");
    assert!(r.cleanup.delete_input_artifacts);
    let t = get(&svc, &task.id).await;
    assert_eq!(
        (t.execution.queue_id.as_str(), t.enqueue_status),
        ("", None)
    );
    assert_eq!(t.script, Script::default());
}

async fn clone_copies_inputs_never_outputs(url: &str) {
    let (svc, _) = service(url).await;
    let mut new = new_task("source", "p1", &["t1"]);
    new.system_tags = vec!["archived".into(), "pipeline".into()];
    new.task_type = Some(TaskType::Testing);
    new.comment = "source comment".into();
    new.script = Script {
        entry_point: "run.py".into(),
        ..Script::default()
    };
    new.execution.framework = "PyTorch".into();
    new.hyperparams = BTreeMap::from([("Args".to_owned(), values(&[("lr", "1")]))]);
    new.configuration = values(&[("General", "x")]);
    new.user_properties = values(&[("k", "v")]);
    new.output_destination = "s3://out".into();
    new.runtime = serde_json::json!({"progress": "100"})
        .as_object()
        .cloned()
        .unwrap();
    new.models = TaskModels {
        input: vec![ModelRef {
            name: "base".into(),
            model_id: "in".into(),
            updated: None,
        }],
        output: vec![ModelRef {
            name: "model".into(),
            model_id: "out".into(),
            updated: None,
        }],
    };
    let src = svc.create("owner", new).await.unwrap();
    svc.enqueue("u", &src.id, &opts(), "q").await.unwrap();
    svc.start("u", &src.id, &opts(), "w").await.unwrap();
    svc.edit(
        "u",
        &src.id,
        TaskEdit {
            output: Some(tasklab_tasks::model::Output {
                destination: "s3://out".into(),
                result: "success".into(),
                error: String::new(),
            }),
            ..TaskEdit::default()
        },
        true,
    )
    .await
    .unwrap();
    svc.complete("u", &src.id, &opts(), true).await.unwrap();
    let src = get(&svc, &src.id).await;

    let copy = svc
        .clone_task(
            "cloner",
            CloneTask {
                source_id: src.id.clone(),
                ..CloneTask::default()
            },
        )
        .await
        .unwrap();
    assert_ne!(copy.id, src.id);
    assert_eq!(copy.name, "Clone Of source");
    assert_eq!(
        (copy.project_id.as_str(), copy.parent_id.as_str()),
        ("p1", src.id.as_str())
    );
    assert_eq!(
        (copy.status, copy.user.as_str()),
        (TaskStatus::Created, "cloner")
    );
    assert_eq!(copy.task_type, TaskType::Testing);
    assert_eq!(copy.comment, "source comment");
    assert_eq!(copy.tags, vec!["t1"]);
    assert_eq!(copy.system_tags, vec!["pipeline"], "never archived");
    assert_eq!(copy.script, src.script);
    assert_eq!(copy.execution.framework, "PyTorch");
    assert_eq!(copy.execution.queue_id, "", "a copy is never queued");
    assert_eq!(
        (copy.hyperparams.clone(), copy.configuration.clone()),
        (src.hyperparams.clone(), src.configuration.clone())
    );
    assert_eq!(copy.user_properties, src.user_properties);
    assert_eq!(copy.models.input, src.models.input);
    assert!(copy.models.output.is_empty(), "no outputs");
    assert!(copy.runtime.is_empty());
    assert_eq!(
        (
            copy.output.destination.as_str(),
            copy.output.result.as_str()
        ),
        ("s3://out", "")
    );
    assert_eq!(
        (copy.started, copy.completed, copy.published),
        (None, None, None)
    );
    assert_eq!(get(&svc, &copy.id).await, copy);

    let over = CloneTask {
        source_id: src.id.clone(),
        name: Some("  custom  ".into()),
        comment: Some(String::new()),
        project_id: Some(String::new()),
        parent_id: Some(String::new()),
        tags: Some(vec!["n".into()]),
        hyperparams: Some(BTreeMap::from([(
            "Args".to_owned(),
            values(&[("lr", "2")]),
        )])),
        execution: Some(tasklab_tasks::model::Execution {
            queue_id: "ignored".into(),
            framework: "TF".into(),
            ..Default::default()
        }),
        ..CloneTask::default()
    };
    let copy = svc.clone_task("cloner", over).await.unwrap();
    assert_eq!(
        (
            copy.name.as_str(),
            copy.comment.as_str(),
            copy.project_id.as_str(),
            copy.parent_id.as_str()
        ),
        ("custom", "", "", "")
    );
    assert_eq!(copy.tags, vec!["n"]);
    assert_eq!(copy.hyperparams["Args"]["lr"].value, "2");
    assert_eq!(
        (
            copy.execution.framework.as_str(),
            copy.execution.queue_id.as_str()
        ),
        ("TF", "")
    );

    assert_eq!(
        code(
            svc.clone_task(
                "u",
                CloneTask {
                    source_id: "0".repeat(32),
                    ..CloneTask::default()
                }
            )
            .await
        ),
        ErrorCode::TaskNotFound
    );
    let short = CloneTask {
        source_id: src.id.clone(),
        name: Some("xy".into()),
        ..CloneTask::default()
    };
    assert_eq!(
        code(svc.clone_task("u", short).await),
        ErrorCode::InvalidTaskName
    );
}

async fn enqueue_and_dequeue(url: &str) {
    let (svc, _) = service(url).await;
    let task = svc
        .create("u", new_task("queue dance", "p", &[]))
        .await
        .unwrap();
    assert_eq!(
        code(svc.enqueue("u", &task.id, &opts(), "").await),
        ErrorCode::MissingField
    );
    svc.start("u", &task.id, &opts(), "").await.unwrap();
    svc.fail("u", &task.id, &opts()).await.unwrap();
    let q = svc.enqueue("u", &task.id, &opts(), "q1").await.unwrap();
    assert_eq!(q.task.enqueue_status, Some(TaskStatus::Failed));
    let same = svc.enqueue("u", &task.id, &opts(), "q1").await.unwrap();
    assert_eq!(
        (same.updated, same.left_queue_id.as_str()),
        (0, ""),
        "retry is safe"
    );
    let moved = svc.enqueue("u", &task.id, &opts(), "q2").await.unwrap();
    assert_eq!((moved.updated, moved.left_queue_id.as_str()), (1, "q1"));
    assert_eq!(
        moved.task.enqueue_status,
        Some(TaskStatus::Failed),
        "original enqueue status kept"
    );

    let d = svc.dequeue("u", &task.id, &opts(), None).await.unwrap();
    assert_eq!(
        (d.updated, d.task.status, d.left_queue_id.as_str()),
        (1, TaskStatus::Failed, "q2")
    );
    assert_eq!(
        (d.task.execution.queue_id.as_str(), d.task.enqueue_status),
        ("", None)
    );
    let d = svc.dequeue("u", &task.id, &opts(), None).await.unwrap();
    assert_eq!(
        (d.updated, d.left_queue_id.as_str()),
        (0, ""),
        "not queued: nothing to do"
    );

    // The agent's safety dequeue of a task it started.
    svc.enqueue("u", &task.id, &opts(), "q3").await.unwrap();
    svc.start("agent", &task.id, &forced(), "w").await.unwrap();
    let d = svc
        .dequeue("agent", &task.id, &opts(), Some(TaskStatus::InProgress))
        .await
        .unwrap();
    assert_eq!((d.updated, d.task.status), (1, TaskStatus::InProgress));
    assert_eq!(d.left_queue_id, "q3");
    let before = get(&svc, &task.id).await;
    assert_eq!(
        code(
            svc.dequeue("u", &task.id, &opts(), Some(TaskStatus::Published))
                .await
        ),
        ErrorCode::InvalidArgument
    );
    assert_eq!(get(&svc, &task.id).await, before);
}

async fn batches_are_all_or_nothing(url: &str) {
    let (svc, _) = service(url).await;
    let a = svc
        .create("u", new_task("batch a", "p", &[]))
        .await
        .unwrap();
    let b = svc
        .create("u", new_task("batch b", "p", &[]))
        .await
        .unwrap();
    svc.enqueue("u", &b.id, &opts(), "q1").await.unwrap();
    let ghost = "0".repeat(32);
    let b_before = get(&svc, &b.id).await;

    let err = svc
        .archive("u", &[a.id.clone(), b.id.clone(), ghost.clone()], "", "")
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::TaskNotFound);
    assert_eq!(get(&svc, &a.id).await, a);
    assert_eq!(get(&svc, &b.id).await, b_before);
    assert_eq!(
        code(
            svc.add_tags("u", &[a.id.clone(), ghost], vec!["x".into()], vec![])
                .await
        ),
        ErrorCode::TaskNotFound
    );
    assert_eq!(get(&svc, &a.id).await, a);
    assert_eq!(
        code(svc.add_tags("u", &[], vec!["x".into()], vec![]).await),
        ErrorCode::EmptyBatch
    );
    let many: Vec<String> = (0..1001).map(|i| format!("{i:032x}")).collect();
    assert_eq!(
        code(svc.archive("u", &many, "", "").await),
        ErrorCode::TooLarge
    );

    let (n, dequeued) = svc
        .archive("u", &[a.id.clone(), b.id.clone()], "archived", "bye")
        .await
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(dequeued.len(), 1);
    assert_eq!(
        (dequeued[0].task_id.as_str(), dequeued[0].queue_id.as_str()),
        (b.id.as_str(), "q1")
    );
    let b2 = get(&svc, &b.id).await;
    assert_eq!(
        (b2.status, b2.status_message.as_str()),
        (TaskStatus::Created, "bye")
    );
    assert_eq!(
        svc.archive("u", std::slice::from_ref(&a.id), "", "")
            .await
            .unwrap()
            .0,
        0,
        "already archived"
    );

    let listed = svc.list(ListRequest::default()).await.unwrap();
    assert!(
        listed.tasks.is_empty(),
        "archived tasks are left out by default"
    );
    let archived = ListRequest {
        system_tags: TagFilter {
            any_of: vec!["archived".into()],
            ..TagFilter::default()
        },
        ..ListRequest::default()
    };
    assert_eq!(svc.list(archived).await.unwrap().tasks.len(), 2);
    assert_eq!(
        svc.unarchive("u", &[a.id.clone(), b.id.clone()])
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        svc.list(ListRequest::default()).await.unwrap().tasks.len(),
        2
    );
    assert_eq!(
        get(&svc, &b.id).await.status,
        TaskStatus::Created,
        "unarchive keeps the status"
    );

    assert_eq!(
        svc.add_tags(
            "u",
            &[a.id.clone(), b.id.clone()],
            vec!["x".into(), "y".into()],
            vec!["s".into()]
        )
        .await
        .unwrap(),
        2
    );
    assert_eq!(
        svc.add_tags("u", &[a.id.clone(), b.id.clone()], vec!["x".into()], vec![])
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        svc.remove_tags(
            "u",
            std::slice::from_ref(&a.id),
            vec!["x".into(), "zz".into()],
            vec!["s".into()]
        )
        .await
        .unwrap(),
        1
    );
    let a2 = get(&svc, &a.id).await;
    assert_eq!(
        (a2.tags, a2.system_tags),
        (vec!["y".to_owned()], Vec::<String>::new())
    );
    assert_eq!(
        code(svc.move_tasks("u", &[], "", "p2").await),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        code(
            svc.move_tasks("u", std::slice::from_ref(&a.id), "p", "p2")
                .await
        ),
        ErrorCode::InvalidArgument
    );
    assert_eq!(svc.move_tasks("u", &[], "p", "p2").await.unwrap(), 2);
}

async fn list_validates_and_pages(url: &str) {
    let (svc, _) = service(url).await;
    for i in 0..25 {
        let mut new = new_task(
            &format!("run {i:02}"),
            "p",
            &[if i % 2 == 0 { "even" } else { "odd" }],
        );
        if i == 3 {
            new.system_tags = vec!["hidden".into()];
        }
        svc.create("u", new).await.unwrap();
    }
    let bad = |req: ListRequest| {
        let svc = svc.clone();
        async move { code(svc.list(req).await) }
    };
    assert_eq!(
        bad(ListRequest {
            name_regex: "run (".into(),
            ..ListRequest::default()
        })
        .await,
        ErrorCode::InvalidRegex
    );
    assert_eq!(
        bad(ListRequest {
            search_text: "[".into(),
            ..ListRequest::default()
        })
        .await,
        ErrorCode::InvalidRegex
    );
    assert_eq!(
        bad(ListRequest {
            order_by: vec![("size".into(), false)],
            ..ListRequest::default()
        })
        .await,
        ErrorCode::InvalidOrderBy
    );
    assert_eq!(
        bad(ListRequest {
            page_token: "garbage!".into(),
            ..ListRequest::default()
        })
        .await,
        ErrorCode::InvalidPageToken
    );
    assert_eq!(
        bad(ListRequest {
            include_subprojects: true,
            ..ListRequest::default()
        })
        .await,
        ErrorCode::InvalidArgument
    );

    let even = |token: String| ListRequest {
        tags: TagFilter {
            any_of: vec!["even".into()],
            ..TagFilter::default()
        },
        name_regex: "^run".into(),
        order_by: vec![("name".into(), false)],
        page_size: 5,
        page_token: token,
        include_total: true,
        ..ListRequest::default()
    };
    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let page = svc.list(even(token)).await.unwrap();
        assert_eq!(page.total, Some(13));
        names.extend(page.tasks.into_iter().map(|t| t.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let expected: Vec<String> = (0..25)
        .filter(|i| i % 2 == 0)
        .map(|i| format!("run {i:02}"))
        .collect();
    assert_eq!(names, expected);

    let first = svc.list(even(String::new())).await.unwrap();
    let other_query = ListRequest {
        page_token: first.next_page_token.clone(),
        ..ListRequest::default()
    };
    assert_eq!(bad(other_query).await, ErrorCode::InvalidPageToken);
    let hidden = ListRequest {
        include_hidden: true,
        ..ListRequest::default()
    };
    assert_eq!(
        svc.list(ListRequest::default()).await.unwrap().tasks.len(),
        24
    );
    assert_eq!(svc.list(hidden).await.unwrap().tasks.len(), 25);
}

async fn delete_rules(url: &str) {
    let (svc, _) = service(url).await;
    let mut new = new_task("delete me", "p", &[]);
    new.models = TaskModels {
        input: vec![ModelRef {
            name: "base".into(),
            model_id: "in".into(),
            updated: None,
        }],
        output: vec![ModelRef {
            name: "model".into(),
            model_id: "out".into(),
            updated: None,
        }],
    };
    let task = svc.create("u", new).await.unwrap();
    svc.start("u", &task.id, &opts(), "").await.unwrap();
    let running = get(&svc, &task.id).await;
    let err = svc.delete(&task.id, false).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidTaskStatus);
    assert_eq!(get(&svc, &task.id).await, running);
    let d = svc.delete(&task.id, true).await.unwrap();
    assert_eq!(d.previous_status, TaskStatus::InProgress);
    assert_eq!(
        (
            d.cleanup.output_model_ids.clone(),
            d.cleanup.input_model_ids.clone()
        ),
        (vec!["out".to_owned()], vec!["in".to_owned()])
    );
    assert!(
        d.cleanup.delete_events
            && d.cleanup.delete_input_artifacts
            && d.cleanup.delete_output_artifacts
    );
    assert_eq!(
        code(svc.get(&task.id, Sections::ALL).await),
        ErrorCode::TaskNotFound
    );
    assert_eq!(
        code(svc.delete(&task.id, true).await),
        ErrorCode::TaskNotFound
    );

    let queued = svc
        .create("u", new_task("queued delete", "p", &[]))
        .await
        .unwrap();
    svc.enqueue("u", &queued.id, &opts(), "q9").await.unwrap();
    assert_eq!(
        svc.delete(&queued.id, false)
            .await
            .unwrap()
            .cleanup
            .left_queue_id,
        "q9"
    );
}

async fn concurrent_status_changes_have_one_winner(url: &str) {
    let (svc, _) = service(url).await;
    let task = svc.create("u", new_task("race", "p", &[])).await.unwrap();
    svc.start("u", &task.id, &opts(), "").await.unwrap();
    let expect = StatusChange {
        expected_status: Some(TaskStatus::InProgress),
        ..opts()
    };
    let mut handles = Vec::new();
    for i in 0..8 {
        let svc = svc.clone();
        let id = task.id.clone();
        let expect = StatusChange {
            reason: format!("racer {i}"),
            ..expect.clone()
        };
        handles.push(tokio::spawn(
            async move { svc.stop("u", &id, &expect).await },
        ));
    }
    let mut wins = 0;
    for h in handles {
        match h.await.unwrap() {
            Ok(t) => {
                wins += 1;
                assert_eq!(t.previous_status, TaskStatus::InProgress);
            }
            Err(e) => assert_eq!(e.code(), ErrorCode::TaskStatusChanged),
        }
    }
    assert_eq!(wins, 1, "exactly one stop wins the compare-and-set");
    let t = get(&svc, &task.id).await;
    assert_eq!(t.status, TaskStatus::Stopped);
    assert_eq!(
        t.revision,
        task.revision + 2,
        "created, started, stopped once"
    );

    // Edits racing each other all land (they retry on a fresh read).
    let mut handles = Vec::new();
    for i in 0..6 {
        let svc = svc.clone();
        let id = task.id.clone();
        handles.push(tokio::spawn(async move {
            svc.set_user_properties("u", &id, values(&[(&format!("k{i}"), "v")]), false, false)
                .await
        }));
    }
    for h in handles {
        assert_eq!(h.await.unwrap().unwrap(), 1);
    }
    assert_eq!(get(&svc, &task.id).await.user_properties.len(), 6);
}

async fn ping_and_stats(url: &str) {
    let (svc, clock) = service(url).await;
    let task = svc.create("u", new_task("pinged", "p", &[])).await.unwrap();
    clock.advance(Duration::seconds(30));
    let at = svc.ping(&task.id, "host:3").await.unwrap();
    let t = get(&svc, &task.id).await;
    assert_eq!(
        (t.last_update, t.last_worker.as_str(), t.last_worker_report),
        (at, "host:3", Some(at))
    );
    assert_eq!(t.last_change, task.last_change, "a ping is not a change");
    assert_eq!(t.status, TaskStatus::Created);
    assert_eq!(
        code(svc.ping(&"0".repeat(32), "").await),
        ErrorCode::TaskNotFound
    );

    let stats = svc
        .stats(vec![("g".into(), vec!["p".into()], false)], false, false)
        .await
        .unwrap();
    assert_eq!(stats[0].total, 1);
    assert_eq!(
        code(
            svc.stats(vec![("g".into(), vec![], false)], false, false)
                .await
        ),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        code(
            svc.stats(vec![("g".into(), vec!["p".into()], true)], false, false)
                .await
        ),
        ErrorCode::InvalidArgument
    );
    let dup = vec![
        ("g".into(), vec!["p".into()], false),
        ("g".into(), vec!["q".into()], false),
    ];
    assert_eq!(
        code(svc.stats(dup, false, false).await),
        ErrorCode::InvalidArgument
    );
}
