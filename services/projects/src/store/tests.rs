//! The sea-orm store, and the domain core on top of it, on SQLite and on
//! PostgreSQL. Each test is written once, as an async fn taking the database
//! URL, and run on both engines by `on_both!`; without a PostgreSQL server
//! the PostgreSQL half prints a loud `SKIPPED` line (and fails under CI).

use std::collections::BTreeMap;

use chrono::{TimeZone, Utc};
use sea_orm::{ConnectionTrait, Statement};
use tasklab_error::ErrorCode;

use super::*;
use crate::migration::Migrator;
use crate::service::{DeleteRequest, ListQuery, NewProject, ProjectChanges, ProjectService};

macro_rules! on_both {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                let db = tasklab_db::testing::TestDb::sqlite();
                super::$test(&db.url).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                let name = concat!("projects_store_", stringify!($test));
                if let Some(db) = tasklab_db::testing::TestDb::postgres(name).await {
                    super::$test(&db.url).await;
                }
            }
        }
    )*};
}

on_both!(
    rows_round_trip,
    uncommitted_changes_are_discarded,
    sibling_names_are_unique,
    subtrees_and_list_scopes,
    deletes_count_and_chunk,
    renames_rewrite_subtrees_atomically,
    moves_merges_and_deletes,
    concurrent_get_or_create_agree,
    concurrent_tree_changes_stay_consistent,
    migrations_are_idempotent_in_their_own_table,
);

async fn store(url: &str) -> SqlProjectStore {
    SqlProjectStore::new(
        tasklab_db::connect_and_migrate::<Migrator>(url)
            .await
            .unwrap(),
    )
}

fn service(store: &SqlProjectStore) -> ProjectService {
    ProjectService::new(Arc::new(store.clone()))
}

fn project(parent: Option<&Project>, name: &str) -> Project {
    let at = Utc.with_ymd_and_hms(2024, 5, 6, 7, 8, 9).unwrap()
        + chrono::Duration::microseconds(123_456);
    Project {
        id: uuid::Uuid::new_v4().simple().to_string(),
        name: name.to_owned(),
        path: match parent {
            Some(p) => format!("{}/{name}", p.path),
            None => name.to_owned(),
        },
        parent_id: parent.map(|p| p.id.clone()),
        ancestors: parent
            .map(|p| p.ancestors.iter().cloned().chain([p.id.clone()]).collect())
            .unwrap_or_default(),
        description: String::new(),
        overview: String::new(),
        tags: Vec::new(),
        system_tags: Vec::new(),
        default_output_destination: String::new(),
        user: "user-1".to_owned(),
        created: at,
        last_update: at,
    }
}

async fn insert_all(store: &SqlProjectStore, projects: &[&Project]) {
    let mut tx = store.begin().await.unwrap();
    for p in projects {
        tx.insert(p).await.unwrap();
    }
    tx.commit().await.unwrap();
}

/// Every project by path.
async fn all(store: &SqlProjectStore) -> BTreeMap<String, Project> {
    let everything = Candidates {
        scope: Scope::All,
        ids: vec![],
        users: vec![],
    };
    let rows = store.list(&everything).await.unwrap();
    let by_path: BTreeMap<String, Project> =
        rows.into_iter().map(|p| (p.path.clone(), p)).collect();
    by_path
}

fn paths(rows: &BTreeMap<String, Project>) -> Vec<&str> {
    rows.keys().map(String::as_str).collect()
}

/// The stored tree agrees with itself: every path and ancestor list follows
/// from the chain of parents, and paths are unique.
async fn assert_consistent(store: &SqlProjectStore) {
    let everything = Candidates {
        scope: Scope::All,
        ids: vec![],
        users: vec![],
    };
    let rows = store.list(&everything).await.unwrap();
    let by_id: BTreeMap<&str, &Project> = rows.iter().map(|p| (p.id.as_str(), p)).collect();
    for p in &rows {
        match &p.parent_id {
            None => {
                assert_eq!(p.path, p.name, "{p:?}");
                assert!(p.ancestors.is_empty(), "{p:?}");
            }
            Some(parent_id) => {
                let parent = by_id
                    .get(parent_id.as_str())
                    .unwrap_or_else(|| panic!("orphan {p:?}"));
                assert_eq!(p.path, format!("{}/{}", parent.path, p.name), "{p:?}");
                let mut expected = parent.ancestors.clone();
                expected.push(parent.id.clone());
                assert_eq!(p.ancestors, expected, "{p:?}");
            }
        }
    }
    let unique: std::collections::HashSet<&str> = rows.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(unique.len(), rows.len(), "paths are unique");
}

async fn rows_round_trip(url: &str) {
    let store = store(url).await;
    let root = project(None, "Ünïcode root ✓");
    let mut child = project(Some(&root), "child");
    child.description = "a description".into();
    child.overview = "# Overview\n\nwith *markdown*".into();
    child.tags = vec!["a".into(), "b c".into()];
    child.system_tags = vec!["archived".into()];
    child.default_output_destination = "s3://bucket/prefix".into();
    child.last_update = child.created + chrono::Duration::microseconds(1);
    insert_all(&store, &[&root, &child]).await;

    assert_eq!(store.get(&root.id).await.unwrap().as_ref(), Some(&root));
    assert_eq!(store.get(&child.id).await.unwrap().as_ref(), Some(&child));
    assert_eq!(store.get(&"0".repeat(32)).await.unwrap(), None);
    assert_eq!(
        store
            .find_child(None, "Ünïcode root ✓")
            .await
            .unwrap()
            .as_ref(),
        Some(&root)
    );
    assert_eq!(
        store
            .find_child(Some(&root.id), "child")
            .await
            .unwrap()
            .as_ref(),
        Some(&child)
    );
    assert_eq!(
        store.find_child(None, "child").await.unwrap(),
        None,
        "not at the top level"
    );
    assert_eq!(
        store.find_child(Some(&root.id), "Child").await.unwrap(),
        None,
        "case-sensitive"
    );

    let mut changed = child.clone();
    changed.name = "renamed".into();
    changed.path = format!("{}/renamed", root.path);
    changed.tags.clear();
    changed.last_update += chrono::Duration::seconds(5);
    let mut tx = store.begin().await.unwrap();
    tx.update(&changed).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(store.get(&child.id).await.unwrap(), Some(changed));
}

async fn uncommitted_changes_are_discarded(url: &str) {
    let store = store(url).await;
    let kept = project(None, "kept");
    insert_all(&store, &[&kept]).await;

    let rolled_back = project(None, "rolled back");
    let mut tx = store.begin().await.unwrap();
    tx.insert(&rolled_back).await.unwrap();
    assert_eq!(
        tx.get(&rolled_back.id).await.unwrap().as_ref(),
        Some(&rolled_back)
    );
    tx.rollback().await.unwrap();

    let dropped = project(None, "dropped");
    let mut tx = store.begin().await.unwrap();
    tx.insert(&dropped).await.unwrap();
    tx.delete(std::slice::from_ref(&kept.id)).await.unwrap();
    drop(tx);

    assert_eq!(paths(&all(&store).await), ["kept"]);
}

async fn sibling_names_are_unique(url: &str) {
    let store = store(url).await;
    let a = project(None, "a");
    let b = project(None, "b");
    insert_all(&store, &[&a, &b]).await;

    let mut tx = store.begin().await.unwrap();
    let err = tx.insert(&project(None, "a")).await.unwrap_err();
    assert!(
        is_conflict(&err),
        "a unique violation is a retryable conflict: {err:?}"
    );
    drop(tx);

    insert_all(&store, &[&project(Some(&a), "x")]).await;
    let mut tx = store.begin().await.unwrap();
    let err = tx.insert(&project(Some(&a), "x")).await.unwrap_err();
    assert!(is_conflict(&err), "{err:?}");
    drop(tx);

    // The same name elsewhere, or in another case, is fine.
    insert_all(&store, &[&project(Some(&b), "x"), &project(None, "A")]).await;
    assert_eq!(paths(&all(&store).await), ["A", "a", "a/x", "b", "b/x"]);
}

async fn subtrees_and_list_scopes(url: &str) {
    let store = store(url).await;
    let a = project(None, "a");
    let ab = project(Some(&a), "b");
    let abc = project(Some(&ab), "c");
    let ad = project(Some(&a), "d");
    let mut e = project(None, "e");
    e.user = "user-2".into();
    insert_all(&store, &[&a, &ab, &abc, &ad, &e]).await;

    let mut tx = store.begin().await.unwrap();
    let mut children: Vec<String> = tx
        .children(&a.id)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.path)
        .collect();
    children.sort();
    assert_eq!(children, ["a/b", "a/d"]);
    let mut below: Vec<String> = tx
        .descendants(&a.id)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.path)
        .collect();
    below.sort();
    assert_eq!(below, ["a/b", "a/b/c", "a/d"]);
    assert_eq!(
        tx.descendants(&ab.id).await.unwrap(),
        std::slice::from_ref(&abc)
    );
    assert!(tx.descendants(&abc.id).await.unwrap().is_empty());
    // Not an id: nothing, and no wildcard reaches the LIKE pattern.
    assert!(tx.descendants("%").await.unwrap().is_empty());
    assert!(tx.descendants("").await.unwrap().is_empty());
    drop(tx);

    let list = |scope: Scope, ids: Vec<String>, users: Vec<String>| {
        let store = store.clone();
        async move {
            let mut paths: Vec<String> = store
                .list(&Candidates { scope, ids, users })
                .await
                .unwrap()
                .into_iter()
                .map(|p| p.path)
                .collect();
            paths.sort();
            paths
        }
    };
    assert_eq!(
        list(Scope::All, vec![], vec![]).await,
        ["a", "a/b", "a/b/c", "a/d", "e"]
    );
    assert_eq!(
        list(Scope::ChildrenOf(None), vec![], vec![]).await,
        ["a", "e"]
    );
    assert_eq!(
        list(Scope::ChildrenOf(Some(a.id.clone())), vec![], vec![]).await,
        ["a/b", "a/d"]
    );
    assert_eq!(
        list(Scope::DescendantsOf(ab.id.clone()), vec![], vec![]).await,
        ["a/b/c"]
    );
    assert!(
        list(Scope::DescendantsOf("_".repeat(32)), vec![], vec![])
            .await
            .is_empty()
    );
    assert!(
        list(Scope::ChildrenOf(Some("nope".into())), vec![], vec![])
            .await
            .is_empty()
    );
    let ids = vec![abc.id.clone(), e.id.clone()];
    assert_eq!(list(Scope::All, ids.clone(), vec![]).await, ["a/b/c", "e"]);
    assert_eq!(
        list(Scope::DescendantsOf(a.id.clone()), ids, vec![]).await,
        ["a/b/c"]
    );
    assert_eq!(list(Scope::All, vec![], vec!["user-2".into()]).await, ["e"]);
}

async fn deletes_count_and_chunk(url: &str) {
    let store = store(url).await;
    let root = project(None, "root");
    let children: Vec<Project> = (0..520)
        .map(|i| project(Some(&root), &format!("c{i}")))
        .collect();
    let mut rows: Vec<&Project> = vec![&root];
    rows.extend(children.iter());
    insert_all(&store, &rows).await;

    let svc = service(&store);
    let ids = svc
        .delete(DeleteRequest {
            id: root.id.clone(),
            force: false,
            contents_count: 0,
        })
        .await
        .unwrap();
    assert_eq!(ids.len(), 521);
    assert_eq!(ids[0], root.id);
    assert!(all(&store).await.is_empty());

    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.delete(&[root.id.clone(), "x".into()]).await.unwrap(), 0);
}

async fn renames_rewrite_subtrees_atomically(url: &str) {
    let store = store(url).await;
    let svc = service(&store);
    for path in ["main/sub/subsub", "main/other", "mainly", "x/sub"] {
        svc.create(
            NewProject {
                path: path.into(),
                ..NewProject::default()
            },
            "u",
        )
        .await
        .unwrap();
    }
    // A wide subtree, so the rewrite spans many rows.
    let before = all(&store).await;
    let sub = before["main/sub"].clone();
    let mut tx = store.begin().await.unwrap();
    for i in 0..150 {
        tx.insert(&project(Some(&sub), &format!("n{i:03}")))
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let before = all(&store).await;
    let main = before["main"].clone();

    // Refused renames write nothing.
    let err = svc
        .update(
            &sub.id,
            ProjectChanges {
                name: Some("other".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::ProjectNameTaken);
    let err = svc
        .update(
            &main.id,
            ProjectChanges {
                name: Some("mainly".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::ProjectNameTaken);
    assert_eq!(all(&store).await, before);

    let changed = svc
        .update(
            &main.id,
            ProjectChanges {
                name: Some("top".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(changed.updated, 1 + 3 + 150);
    let after = all(&store).await;
    assert_eq!(after.len(), before.len());
    assert!(
        after.keys().all(|p| !p.starts_with("main/")),
        "no old path is left"
    );
    assert_eq!(after["top/sub/n149"].id, before["main/sub/n149"].id);
    assert_eq!(
        after["top/sub/subsub"].ancestors,
        before["main/sub/subsub"].ancestors
    );
    assert_eq!(after["top/sub"].last_update, changed.project.last_update);
    assert_eq!(
        after["mainly"], before["mainly"],
        "a name sharing the prefix is untouched"
    );
    assert_eq!(after["x/sub"], before["x/sub"]);
    assert_consistent(&store).await;
}

async fn moves_merges_and_deletes(url: &str) {
    let store = store(url).await;
    let svc = service(&store);
    for path in ["a/b/c", "x/y", "src/s1/deep", "src/s2", "dst/keep"] {
        svc.create(
            NewProject {
                path: path.into(),
                ..NewProject::default()
            },
            "u",
        )
        .await
        .unwrap();
    }
    let rows = all(&store).await;

    let moved = svc
        .move_project(&rows["a/b"].id, &rows["x/y"].id)
        .await
        .unwrap();
    assert_eq!(moved.updated, 2);
    let before_refused = all(&store).await;
    let err = svc
        .move_project(&rows["x"].id, &rows["x/y"].id)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    assert_eq!(all(&store).await, before_refused);

    let merged = svc
        .merge(&rows["src"].id, &rows["dst"].id, false)
        .await
        .unwrap();
    assert_eq!(
        merged.moved_project_ids,
        [rows["src/s1"].id.clone(), rows["src/s2"].id.clone()]
    );

    let refused = svc
        .delete(DeleteRequest {
            id: rows["dst"].id.clone(),
            force: false,
            contents_count: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), ErrorCode::ProjectNotEmpty);
    let after = all(&store).await;
    assert_eq!(
        paths(&after),
        [
            "a",
            "dst",
            "dst/keep",
            "dst/s1",
            "dst/s1/deep",
            "dst/s2",
            "x",
            "x/y",
            "x/y/b",
            "x/y/b/c"
        ]
    );
    assert_consistent(&store).await;

    let deleted = svc
        .delete(DeleteRequest {
            id: rows["dst"].id.clone(),
            force: true,
            contents_count: 1,
        })
        .await
        .unwrap();
    assert_eq!(deleted.len(), 5);
    assert_eq!(
        paths(&all(&store).await),
        ["a", "x", "x/y", "x/y/b", "x/y/b/c"]
    );

    let listed = svc
        .list(ListQuery {
            parent_id: rows["x"].id.clone(),
            ..ListQuery::default()
        })
        .await
        .unwrap();
    let listed: Vec<String> = listed.projects.into_iter().map(|p| p.path).collect();
    assert_eq!(listed, ["x/y", "x/y/b", "x/y/b/c"]);
}

async fn concurrent_get_or_create_agree(url: &str) {
    let store = store(url).await;
    let svc = service(&store);
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let svc = svc.clone();
            tokio::spawn(async move {
                let request = NewProject {
                    path: "shared/parent/leaf".into(),
                    allow_existing: true,
                    ..NewProject::default()
                };
                svc.create(request, &format!("user-{i}")).await
            })
        })
        .collect();
    let mut ids = Vec::new();
    let mut created = 0;
    for task in tasks {
        let answer = task.await.unwrap().unwrap();
        created += usize::from(answer.created);
        ids.push(answer.project.id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every caller got the same project");
    assert_eq!(created, 1, "exactly one caller created it");
    assert_eq!(
        paths(&all(&store).await),
        ["shared", "shared/parent", "shared/parent/leaf"]
    );
}

async fn concurrent_tree_changes_stay_consistent(url: &str) {
    let store = store(url).await;
    let svc = service(&store);
    for path in ["a/b", "q"] {
        svc.create(
            NewProject {
                path: path.into(),
                ..NewProject::default()
            },
            "u",
        )
        .await
        .unwrap();
    }
    let rows = all(&store).await;
    let (a, q) = (rows["a"].id.clone(), rows["q"].id.clone());

    let mut tasks = Vec::new();
    for i in 0..6 {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            let path = format!("a/b/n{i}");
            svc.create(
                NewProject {
                    path,
                    ..NewProject::default()
                },
                "u",
            )
            .await
            .map(|_| ())
        }));
    }
    for name in ["r1", "r2", "r3"] {
        let (svc, a) = (svc.clone(), a.clone());
        tasks.push(tokio::spawn(async move {
            let changes = ProjectChanges {
                name: Some(name.into()),
                ..Default::default()
            };
            svc.update(&a, changes).await.map(|_| ())
        }));
    }
    {
        let (svc, a, q) = (svc.clone(), a.clone(), q.clone());
        tasks.push(tokio::spawn(async move {
            svc.move_project(&a, &q).await.map(|_| ())
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_consistent(&store).await;
    let rows = all(&store).await;
    for i in 0..6 {
        // Each created leaf exists under some `…/b`, whichever name `a`
        // had when its creation committed.
        assert!(
            rows.keys().any(|p| p.ends_with(&format!("/b/n{i}"))),
            "n{i} missing from {:?}",
            paths(&rows)
        );
    }
}

async fn migrations_are_idempotent_in_their_own_table(url: &str) {
    let first = tasklab_db::connect_and_migrate::<Migrator>(url)
        .await
        .unwrap();
    let again = tasklab_db::connect_and_migrate::<Migrator>(url)
        .await
        .unwrap();
    let backend = again.get_database_backend();
    let row = again
        .query_one_raw(Statement::from_string(
            backend,
            "SELECT COUNT(*) AS n FROM seaql_migrations_projects",
        ))
        .await
        .unwrap()
        .unwrap();
    let n: i64 = row.try_get("", "n").unwrap();
    assert_eq!(n, 1);
    // The default table name is left to whoever uses it.
    let default_table = first
        .query_one_raw(Statement::from_string(
            backend,
            "SELECT COUNT(*) AS n FROM seaql_migrations",
        ))
        .await;
    assert!(
        default_table.is_err(),
        "no seaql_migrations table was created"
    );
}
