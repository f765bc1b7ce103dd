//! The sea-orm store on SQLite and PostgreSQL: round trips, compare-and-set,
//! filters, ordering and keyset paging.

mod common;

use std::collections::{BTreeMap, HashSet};

use chrono::Duration;
use regex::Regex;
use tasklab_tasks::model::{
    ModelRef, Script, Sections, Task, TaskModels, TaskStatus, TaskType, truncate_micros,
};
use tasklab_tasks::service::{Clock, NewTask};
use tasklab_tasks::store::{
    CasOutcome, ListQuery, MoveSelector, OrderField, OrderKey, StatsGroup, TagFilter, TaskFilter,
    TaskStore, TimeRange,
};

use common::*;

on_both_backends!(
    round_trip_every_section,
    compare_and_set_reports_why,
    side_tables_follow_the_task,
    filters_select_exactly,
    ordering_and_paging_are_stable,
    regex_filters_page_through_sparse_matches,
    get_by_name_takes_the_latest,
    move_and_count,
);

fn full_task() -> NewTask {
    let mut hyperparams = BTreeMap::new();
    hyperparams.insert("Args".to_owned(), values(&[("lr", "0.1"), ("epochs", "3")]));
    NewTask {
        name: "  full task  ".into(),
        project_id: "p1".into(),
        task_type: Some(TaskType::DataProcessing),
        comment: "every section".into(),
        tags: vec!["b".into(), "a".into(), "b".into()],
        system_tags: vec!["development".into()],
        parent_id: "f".repeat(32),
        script: Script {
            repository: "https://example.invalid/repo.git".into(),
            branch: "main".into(),
            entry_point: "train.py".into(),
            working_dir: ".".into(),
            binary: "python3".into(),
            diff: "print('hello')\n".into(),
            ..Script::default()
        },
        container: tasklab_tasks::model::Container {
            image: "python:3.12".into(),
            arguments: "--ipc=host".into(),
            setup_shell_script: "apt-get update".into(),
        },
        execution: tasklab_tasks::model::Execution {
            queue_id: "ignored".into(),
            framework: "PyTorch".into(),
            model_labels: [("cat".to_owned(), 1), ("dog".to_owned(), 2)].into(),
        },
        output_destination: "s3://bucket/out".into(),
        hyperparams,
        configuration: values(&[("General", "a: 1")]),
        user_properties: values(&[("owner", "ml-team")]),
        runtime: serde_json::json!({"progress": "0", "nested": {"x": [1, 2]}})
            .as_object()
            .cloned()
            .unwrap(),
        models: TaskModels {
            input: vec![ModelRef {
                name: "base".into(),
                model_id: "m1".into(),
                updated: None,
            }],
            output: vec![ModelRef {
                name: "model".into(),
                model_id: "m2".into(),
                updated: None,
            }],
        },
    }
}

async fn round_trip_every_section(url: &str) {
    let (svc, _) = service(url).await;
    let store = svc.store().clone();
    let task = svc.build_new("alice", full_task()).unwrap();
    assert_eq!(task.name, "full task");
    assert_eq!(task.tags, vec!["a", "b"]);
    assert_eq!(task.execution.queue_id, "", "create ignores the queue id");
    store.insert(&task).await.unwrap();

    let read = store.get(&task.id, Sections::ALL).await.unwrap().unwrap();
    assert_eq!(read, task);

    let scalars = store.get(&task.id, Sections::NONE).await.unwrap().unwrap();
    assert_eq!(scalars.name, task.name);
    assert_eq!(scalars.tags, task.tags);
    assert_eq!(scalars.output.destination, "s3://bucket/out");
    assert!(scalars.hyperparams.is_empty() && scalars.script == Script::default());
    assert!(scalars.models.input.is_empty());

    assert!(
        store
            .get(&"0".repeat(32), Sections::ALL)
            .await
            .unwrap()
            .is_none()
    );
}

async fn compare_and_set_reports_why(url: &str) {
    let (svc, _) = service(url).await;
    let store = svc.store().clone();
    let task = svc
        .create("u", new_task("cas task", "p", &["x"]))
        .await
        .unwrap();

    let mut after = task.clone();
    after.comment = "first".into();
    after.status = TaskStatus::Queued;
    assert_eq!(
        store.update(&task, &after).await.unwrap(),
        CasOutcome::Written
    );
    let stored = store.get(&task.id, Sections::ALL).await.unwrap().unwrap();
    assert_eq!(stored.revision, task.revision + 1);
    assert_eq!(stored.comment, "first");
    assert_eq!(stored.status, TaskStatus::Queued);

    // A writer that read before the first write loses, and learns why.
    let mut late = task.clone();
    late.comment = "late".into();
    assert_eq!(
        store.update(&task, &late).await.unwrap(),
        CasOutcome::StatusChanged(TaskStatus::Queued)
    );
    let mut same_status = stored.clone();
    same_status.revision = task.revision; // read before the write, same status
    let mut other = same_status.clone();
    other.comment = "stale".into();
    assert_eq!(
        store.update(&same_status, &other).await.unwrap(),
        CasOutcome::Stale
    );
    assert_eq!(
        store.get(&task.id, Sections::ALL).await.unwrap().unwrap(),
        stored,
        "losers change nothing"
    );

    let mut ghost = task.clone();
    ghost.id = "0".repeat(32);
    assert_eq!(
        store.update(&ghost, &ghost).await.unwrap(),
        CasOutcome::NotFound
    );

    assert_eq!(
        store.delete(&task).await.unwrap(),
        CasOutcome::StatusChanged(TaskStatus::Queued)
    );
    assert_eq!(store.delete(&stored).await.unwrap(), CasOutcome::Written);
    assert!(store.get(&task.id, Sections::ALL).await.unwrap().is_none());
    assert_eq!(store.delete(&stored).await.unwrap(), CasOutcome::NotFound);
}

fn query(filter: TaskFilter) -> ListQuery {
    ListQuery {
        filter,
        order: vec![
            OrderKey {
                field: OrderField::Created,
                descending: true,
            },
            OrderKey {
                field: OrderField::Id,
                descending: true,
            },
        ],
        limit: 1000,
        after: None,
        include_total: true,
        sections: Sections::NONE,
    }
}

async fn ids(store: &dyn TaskStore, filter: TaskFilter) -> HashSet<String> {
    let page = store.list(&query(filter)).await.unwrap();
    let ids: HashSet<String> = page.tasks.iter().map(|t| t.id.clone()).collect();
    assert_eq!(
        page.total,
        Some(ids.len() as u64),
        "total counts the same tasks"
    );
    ids
}

fn tag_filter(any: &[&str], all: &[&str], none: &[&str]) -> TagFilter {
    let v = |s: &[&str]| s.iter().map(|t| (*t).to_owned()).collect();
    TagFilter {
        any_of: v(any),
        all_of: v(all),
        none_of: v(none),
    }
}

async fn side_tables_follow_the_task(url: &str) {
    let (svc, _) = service(url).await;
    let store = svc.store().clone();
    let mut new = new_task("tagged", "p", &["old"]);
    new.user_properties = values(&[("stage", "dev")]);
    let task = svc.create("u", new).await.unwrap();
    let by_tag = |t: &str| TaskFilter {
        tags: tag_filter(&[t], &[], &[]),
        ..TaskFilter::default()
    };
    let by_prop = |v: &str| TaskFilter {
        user_properties: [("stage".to_owned(), v.to_owned())].into(),
        ..TaskFilter::default()
    };
    assert_eq!(ids(store.as_ref(), by_tag("old")).await.len(), 1);
    assert_eq!(ids(store.as_ref(), by_prop("dev")).await.len(), 1);

    let mut after = task.clone();
    after.tags = vec!["new".into()];
    after.user_properties = values(&[("stage", "prod")]);
    assert_eq!(
        store.update(&task, &after).await.unwrap(),
        CasOutcome::Written
    );
    assert!(ids(store.as_ref(), by_tag("old")).await.is_empty());
    assert_eq!(ids(store.as_ref(), by_tag("new")).await.len(), 1);
    assert!(ids(store.as_ref(), by_prop("dev")).await.is_empty());
    assert_eq!(ids(store.as_ref(), by_prop("prod")).await.len(), 1);

    let stored = store.get(&task.id, Sections::ALL).await.unwrap().unwrap();
    assert_eq!(store.delete(&stored).await.unwrap(), CasOutcome::Written);
    assert!(ids(store.as_ref(), by_tag("new")).await.is_empty());
    assert!(ids(store.as_ref(), by_prop("prod")).await.is_empty());
}

async fn filters_select_exactly(url: &str) {
    let (svc, clock) = service(url).await;
    let store = svc.store().clone();
    // name, project, type, status, tags, system tags, parent, user, queue, comment
    let specs = [
        (
            "alpha run",
            "p1",
            TaskType::Training,
            TaskStatus::Created,
            &["a", "b"][..],
            &[][..],
            "",
            "u1",
            "",
            "first",
        ),
        (
            "beta run",
            "p1",
            TaskType::Testing,
            TaskStatus::Completed,
            &["a"],
            &["archived"],
            "",
            "u2",
            "",
            "",
        ),
        (
            "gamma run",
            "p2",
            TaskType::Training,
            TaskStatus::Queued,
            &["b"],
            &[],
            "par",
            "u1",
            "q1",
            "note xyz",
        ),
        (
            "delta",
            "",
            TaskType::Inference,
            TaskStatus::Failed,
            &[],
            &["hidden"],
            "par",
            "u3",
            "q2",
            "",
        ),
        (
            "Alpha two",
            "p2",
            TaskType::Training,
            TaskStatus::Completed,
            &["a", "c"],
            &["pipeline"],
            "",
            "u2",
            "",
            "",
        ),
    ];
    let mut tasks = Vec::new();
    let start = clock.now();
    for (name, project, ty, status, tags, sys, parent, user, queue, comment) in specs {
        let mut new = new_task(name, project, tags);
        new.task_type = Some(ty);
        new.system_tags = sys.iter().map(|t| (*t).to_owned()).collect();
        new.parent_id = parent.into();
        new.comment = comment.into();
        new.user_properties =
            values(&[("size", if tags.contains(&"c") { "big" } else { "small" })]);
        let mut task = svc.build_new(user, new).unwrap();
        task.status = status;
        task.execution.queue_id = queue.into();
        store.insert(&task).await.unwrap();
        tasks.push(task);
        clock.advance(Duration::seconds(10));
    }
    let id = |i: usize| tasks[i].id.clone();
    let set = |is: &[usize]| is.iter().map(|i| id(*i)).collect::<HashSet<_>>();
    let s = store.as_ref();
    let f = TaskFilter::default;

    assert_eq!(ids(s, f()).await, set(&[0, 1, 2, 3, 4]));
    assert_eq!(
        ids(
            s,
            TaskFilter {
                ids: vec![id(1), id(3), "nope".into()],
                ..f()
            }
        )
        .await,
        set(&[1, 3])
    );
    assert_eq!(
        ids(
            s,
            TaskFilter {
                project_ids: vec!["p1".into(), String::new()],
                ..f()
            }
        )
        .await,
        set(&[0, 1, 3])
    );
    assert_eq!(
        ids(
            s,
            TaskFilter {
                statuses: vec![TaskStatus::Completed],
                ..f()
            }
        )
        .await,
        set(&[1, 4])
    );
    assert_eq!(
        ids(
            s,
            TaskFilter {
                types: vec![TaskType::Training],
                ..f()
            }
        )
        .await,
        set(&[0, 2, 4])
    );
    assert_eq!(
        ids(
            s,
            TaskFilter {
                tags: tag_filter(&["a"], &[], &[]),
                ..f()
            }
        )
        .await,
        set(&[0, 1, 4])
    );
    assert_eq!(
        ids(
            s,
            TaskFilter {
                tags: tag_filter(&["b", "c"], &[], &[]),
                ..f()
            }
        )
        .await,
        set(&[0, 2, 4])
    );
    assert_eq!(
        ids(
            s,
            TaskFilter {
                tags: tag_filter(&[], &["a", "b"], &[]),
                ..f()
            }
        )
        .await,
        set(&[0])
    );
    assert_eq!(
        ids(
            s,
            TaskFilter {
                tags: tag_filter(&["a"], &[], &["c"]),
                ..f()
            }
        )
        .await,
        set(&[0, 1])
    );
    assert_eq!(
        ids(
            s,
            TaskFilter {
                system_tags: tag_filter(&[], &[], &["archived", "hidden"]),
                ..f()
            }
        )
        .await,
        set(&[0, 2, 4])
    );
    assert_eq!(
        ids(
            s,
            TaskFilter {
                parent_ids: vec!["par".into()],
                ..f()
            }
        )
        .await,
        set(&[2, 3])
    );
    assert_eq!(
        ids(
            s,
            TaskFilter {
                users: vec!["u2".into()],
                ..f()
            }
        )
        .await,
        set(&[1, 4])
    );
    assert_eq!(
        ids(
            s,
            TaskFilter {
                queue_ids: vec!["q1".into()],
                ..f()
            }
        )
        .await,
        set(&[2])
    );
    let regex = |p: &str| Some(Regex::new(p).unwrap());
    assert_eq!(
        ids(
            s,
            TaskFilter {
                name_regex: regex("run$"),
                ..f()
            }
        )
        .await,
        set(&[0, 1, 2])
    );
    assert_eq!(
        ids(
            s,
            TaskFilter {
                name_regex: regex("^alpha"),
                ..f()
            }
        )
        .await,
        set(&[0])
    );
    assert_eq!(
        ids(
            s,
            TaskFilter {
                name_regex: regex("(?i)^alpha"),
                ..f()
            }
        )
        .await,
        set(&[0, 4])
    );
    assert_eq!(
        ids(
            s,
            TaskFilter {
                search_text: regex("xyz|first"),
                ..f()
            }
        )
        .await,
        set(&[0, 2])
    );
    // Literal patterns are also prefiltered in SQL: same answers.
    let by_name = |p: &str| TaskFilter {
        name_regex: regex(p),
        ..f()
    };
    let by_text = |p: &str| TaskFilter {
        search_text: regex(p),
        ..f()
    };
    assert_eq!(ids(s, by_name("^delta$")).await, set(&[3]));
    assert_eq!(ids(s, by_name("^delt$")).await, set(&[]));
    assert_eq!(ids(s, by_name("a ru")).await, set(&[0, 1, 2]));
    assert_eq!(ids(s, by_name("Alpha")).await, set(&[4]));
    assert_eq!(ids(s, by_text("xyz")).await, set(&[2]));
    assert_eq!(ids(s, by_text(&id(1))).await, set(&[1]));
    assert_eq!(
        ids(
            s,
            TaskFilter {
                search_text: regex(&id(3)[..12]),
                ..f()
            }
        )
        .await,
        set(&[3])
    );
    assert_eq!(
        ids(
            s,
            TaskFilter {
                user_properties: [("size".to_owned(), "big".to_owned())].into(),
                ..f()
            }
        )
        .await,
        set(&[4])
    );
    let window = TimeRange {
        start: Some(start + Duration::seconds(5)),
        end: Some(start + Duration::seconds(25)),
    };
    assert_eq!(
        ids(
            s,
            TaskFilter {
                created_within: window,
                ..f()
            }
        )
        .await,
        set(&[1, 2])
    );
    // Everything at once.
    let all = TaskFilter {
        project_ids: vec!["p1".into(), "p2".into()],
        statuses: vec![TaskStatus::Completed, TaskStatus::Created],
        tags: tag_filter(&["a"], &[], &[]),
        system_tags: tag_filter(&[], &[], &["archived"]),
        name_regex: regex("(?i)alpha"),
        ..f()
    };
    assert_eq!(ids(s, all).await, set(&[0, 4]));
}

/// An independent reading of the documented order: keys in turn, unset
/// times after all others in both directions, then the id.
fn expected_order(tasks: &mut [Task], keys: &[OrderKey]) {
    fn key_of(t: &Task, f: OrderField) -> (Option<i64>, String) {
        let time = |v: Option<tasklab_tasks::model::Timestamp>| {
            (v.map(|t| t.timestamp_micros()), String::new())
        };
        match f {
            OrderField::Created => time(Some(t.created)),
            OrderField::Started => time(t.started),
            OrderField::Completed => time(t.completed),
            OrderField::Published => time(t.published),
            OrderField::StatusChanged => time(t.status_changed),
            OrderField::LastUpdate => time(Some(t.last_update)),
            OrderField::LastChange => time(t.last_change),
            OrderField::Name => (Some(0), t.name.clone()),
            OrderField::Status => (Some(0), t.status.as_str().to_owned()),
            OrderField::Type => (Some(0), t.task_type.as_str().to_owned()),
            OrderField::Id => (Some(0), t.id.clone()),
        }
    }
    tasks.sort_by(|a, b| {
        for k in keys {
            let (ka, kb) = (key_of(a, k.field), key_of(b, k.field));
            let ord = match (ka.0, kb.0) {
                (None, None) => std::cmp::Ordering::Equal,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(_), None) => std::cmp::Ordering::Less,
                (Some(x), Some(y)) => {
                    let o = x.cmp(&y).then_with(|| ka.1.as_bytes().cmp(kb.1.as_bytes()));
                    if k.descending { o.reverse() } else { o }
                }
            };
            if ord != std::cmp::Ordering::Equal {
                return ord;
            }
        }
        std::cmp::Ordering::Equal
    });
}

async fn ordering_and_paging_are_stable(url: &str) {
    let (svc, clock) = service(url).await;
    let store = svc.store().clone();
    let base = truncate_micros(clock.now());
    let mut tasks = Vec::new();
    for i in 0..57usize {
        let names = ["zeta", "Alpha", "alpha", "beta", "éclair", "a_b", "a-b"];
        let mut task = svc
            .build_new(
                "u",
                new_task(&format!("{} {}", names[i % 7], i % 5), "p", &[]),
            )
            .unwrap();
        // Many ties on created, some unset started times.
        task.created = base + Duration::seconds((i % 4) as i64);
        task.started = (i % 3 != 0).then(|| base + Duration::seconds((i % 6) as i64));
        task.status = TaskStatus::ALL[i % TaskStatus::ALL.len()];
        task.task_type = TaskType::ALL[i % TaskType::ALL.len()];
        tasks.push(task);
    }
    store.insert_many(&tasks).await.unwrap();

    let orders: Vec<Vec<(OrderField, bool)>> = vec![
        vec![(OrderField::Created, true)],
        vec![(OrderField::Name, false)],
        vec![(OrderField::Started, false)],
        vec![(OrderField::Started, true), (OrderField::Name, false)],
        vec![
            (OrderField::Status, true),
            (OrderField::Type, false),
            (OrderField::Created, false),
        ],
        vec![(OrderField::Id, false)],
    ];
    for order in orders {
        let mut keys: Vec<OrderKey> = order
            .iter()
            .map(|(field, descending)| OrderKey {
                field: *field,
                descending: *descending,
            })
            .collect();
        if keys.last().map(|k| k.field) != Some(OrderField::Id) {
            let descending = keys.last().unwrap().descending;
            keys.push(OrderKey {
                field: OrderField::Id,
                descending,
            });
        }
        let mut expected = tasks.clone();
        expected_order(&mut expected, &keys);
        let expected: Vec<String> = expected.into_iter().map(|t| t.id).collect();

        let mut seen = Vec::new();
        let mut q = ListQuery {
            limit: 7,
            include_total: false,
            order: keys.clone(),
            ..query(TaskFilter::default())
        };
        let mut pages = 0;
        loop {
            let page = store.list(&q).await.unwrap();
            pages += 1;
            seen.extend(page.tasks.iter().map(|t| t.id.clone()));
            // A task created while paging must not disturb the pages.
            let extra = svc
                .build_new("u", new_task("inserted meanwhile", "other", &[]))
                .unwrap();
            store.insert(&extra).await.unwrap();
            match page.next {
                Some(c) => q.after = Some(c),
                None => break,
            }
        }
        let seen_original: Vec<String> = seen
            .iter()
            .filter(|id| expected.contains(id))
            .cloned()
            .collect();
        assert_eq!(seen_original, expected, "order {order:?}");
        assert_eq!(
            seen.len(),
            seen.iter().collect::<HashSet<_>>().len(),
            "no task twice, order {order:?}"
        );
        assert!(pages >= 9, "paged in pages of 7");
    }
}

async fn regex_filters_page_through_sparse_matches(url: &str) {
    let (svc, _) = service(url).await;
    let store = svc.store().clone();
    let tasks: Vec<Task> = (0..3000)
        .map(|i| {
            let name = if i % 100 == 7 {
                format!("needle {i:04}")
            } else {
                format!("hay {i:04}")
            };
            let mut t = svc.build_new("u", new_task(&name, "p", &["t"])).unwrap();
            t.created += Duration::milliseconds(i);
            t
        })
        .collect();
    store.insert_many(&tasks).await.unwrap();
    let filter = TaskFilter {
        name_regex: Some(Regex::new("^needle").unwrap()),
        tags: tag_filter(&["t"], &[], &[]),
        ..TaskFilter::default()
    };
    let mut q = ListQuery {
        limit: 4,
        ..query(filter)
    };
    let mut names = Vec::new();
    loop {
        let page = store.list(&q).await.unwrap();
        assert_eq!(page.total, Some(30));
        names.extend(page.tasks.into_iter().map(|t| t.name));
        match page.next {
            Some(c) => q.after = Some(c),
            None => break,
        }
    }
    let expected: Vec<String> = (0..3000)
        .rev()
        .filter(|i| i % 100 == 7)
        .map(|i| format!("needle {i:04}"))
        .collect();
    assert_eq!(names, expected);
}

async fn get_by_name_takes_the_latest(url: &str) {
    let (svc, clock) = service(url).await;
    let store = svc.store().clone();
    let first = svc
        .create("u", new_task("same name", "p", &[]))
        .await
        .unwrap();
    clock.advance(Duration::seconds(1));
    let second = svc
        .create("u", new_task("same name", "p", &[]))
        .await
        .unwrap();
    clock.advance(Duration::seconds(1));
    svc.create("u", new_task("same name", "other", &[]))
        .await
        .unwrap();
    let got = store
        .get_by_name("p", "same name", false, Sections::ALL)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.id, second.id);
    // Touching the first makes it the last modified one.
    clock.advance(Duration::seconds(1));
    assert!(store.ping(&first.id, clock.now(), None).await.unwrap());
    let got = store
        .get_by_name("p", "same name", false, Sections::ALL)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.id, first.id);
    // Archived tasks are skipped unless asked for.
    let mut archived = got.clone();
    archived.system_tags = vec!["archived".into()];
    assert_eq!(
        store.update(&got, &archived).await.unwrap(),
        CasOutcome::Written
    );
    assert_eq!(
        store
            .get_by_name("p", "same name", false, Sections::ALL)
            .await
            .unwrap()
            .unwrap()
            .id,
        second.id
    );
    assert_eq!(
        store
            .get_by_name("p", "same name", true, Sections::ALL)
            .await
            .unwrap()
            .unwrap()
            .id,
        first.id
    );
    assert!(
        store
            .get_by_name("p", "same", false, Sections::ALL)
            .await
            .unwrap()
            .is_none()
    );
}

async fn move_and_count(url: &str) {
    let (svc, clock) = service(url).await;
    let store = svc.store().clone();
    let a = svc
        .create("u", new_task("task a", "p1", &[]))
        .await
        .unwrap();
    let b = svc
        .create("u", new_task("task b", "p1", &[]))
        .await
        .unwrap();
    let mut c = new_task("task c", "p2", &[]);
    c.task_type = Some(TaskType::Testing);
    let c = svc.create("u", c).await.unwrap();
    let mut hidden = new_task("task d", "p2", &[]);
    hidden.system_tags = vec!["hidden".into()];
    svc.create("u", hidden).await.unwrap();

    let groups = vec![
        StatsGroup {
            key: "one".into(),
            project_ids: vec!["p1".into()],
        },
        StatsGroup {
            key: "both".into(),
            project_ids: vec!["p1".into(), "p2".into()],
        },
        StatsGroup {
            key: "none".into(),
            project_ids: vec!["p9".into()],
        },
    ];
    let stats = store.stats(&groups, &["hidden".to_owned()]).await.unwrap();
    assert_eq!(
        stats.iter().map(|s| s.total).collect::<Vec<_>>(),
        vec![2, 3, 0]
    );
    assert_eq!(
        stats[1].by_type,
        vec![(TaskType::Training, 2), (TaskType::Testing, 1)]
    );
    assert_eq!(stats[1].by_status, vec![(TaskStatus::Created, 3)]);
    assert_eq!(store.stats(&groups, &[]).await.unwrap()[1].total, 4);

    let err = store
        .move_tasks(
            &MoveSelector::Ids(vec![a.id.clone(), "0".repeat(32)]),
            "p3",
            clock.now(),
            "mover",
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), tasklab_error::ErrorCode::TaskNotFound);
    assert_eq!(
        store
            .get(&a.id, Sections::NONE)
            .await
            .unwrap()
            .unwrap()
            .project_id,
        "p1",
        "all or nothing"
    );

    let ids = MoveSelector::Ids(vec![a.id.clone(), c.id.clone()]);
    let moved = store
        .move_tasks(&ids, "p2", clock.now(), "mover")
        .await
        .unwrap();
    assert_eq!(moved, 1, "c was there already");
    let a2 = store.get(&a.id, Sections::NONE).await.unwrap().unwrap();
    assert_eq!(
        (a2.project_id.as_str(), a2.last_changed_by.as_str()),
        ("p2", "mover")
    );
    assert_eq!(a2.revision, a.revision + 1);
    let project = MoveSelector::Project("p2".into());
    let moved = store
        .move_tasks(&project, "", clock.now(), "mover")
        .await
        .unwrap();
    assert_eq!(moved, 3, "hidden tasks move too");
    assert_eq!(
        store
            .get(&b.id, Sections::NONE)
            .await
            .unwrap()
            .unwrap()
            .project_id,
        "p1"
    );
    assert_eq!(
        store
            .get(&c.id, Sections::NONE)
            .await
            .unwrap()
            .unwrap()
            .project_id,
        ""
    );
}
