//! Rules of the domain core, on an in-memory store (the SQL store has its
//! own tests on SQLite and PostgreSQL in `store/tests.rs`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tasklab_error::{ErrorCode, Result};

use super::*;
use crate::store::{Candidates, ProjectStore, ProjectTx, Scope, conflict};

/// Projects in a map; a transaction works on a copy and swaps it in on
/// commit. Can be told to fail the next commits as if a concurrent
/// transaction won the race.
#[derive(Debug, Default, Clone)]
struct MemStore {
    rows: Arc<Mutex<BTreeMap<String, Project>>>,
    failing_commits: Arc<AtomicU32>,
    commits: Arc<AtomicU32>,
}

impl MemStore {
    fn snapshot(&self) -> BTreeMap<String, Project> {
        self.rows.lock().unwrap().clone()
    }

    fn by_path(&self, path: &str) -> Project {
        self.snapshot()
            .into_values()
            .find(|p| p.path == path)
            .unwrap_or_else(|| panic!("no project at {path}"))
    }

    fn paths(&self) -> Vec<String> {
        let mut paths: Vec<String> = self.snapshot().into_values().map(|p| p.path).collect();
        paths.sort();
        paths
    }
}

fn child_of(rows: &BTreeMap<String, Project>, parent: Option<&str>, name: &str) -> Option<Project> {
    rows.values()
        .find(|p| p.parent_id.as_deref() == parent && p.name == name)
        .cloned()
}

#[async_trait]
impl ProjectStore for MemStore {
    async fn get(&self, id: &str) -> Result<Option<Project>> {
        Ok(self.rows.lock().unwrap().get(id).cloned())
    }

    async fn find_child(&self, parent_id: Option<&str>, name: &str) -> Result<Option<Project>> {
        Ok(child_of(&self.rows.lock().unwrap(), parent_id, name))
    }

    async fn list(&self, candidates: &Candidates) -> Result<Vec<Project>> {
        let rows = self.rows.lock().unwrap();
        Ok(rows
            .values()
            .filter(|p| match &candidates.scope {
                Scope::All => true,
                Scope::ChildrenOf(parent) => p.parent_id == *parent,
                Scope::DescendantsOf(id) => p.ancestors.contains(id),
            })
            .cloned()
            .collect())
    }

    async fn begin(&self) -> Result<Box<dyn ProjectTx>> {
        Ok(Box::new(MemTx {
            store: self.clone(),
            rows: self.snapshot(),
        }))
    }
}

struct MemTx {
    store: MemStore,
    rows: BTreeMap<String, Project>,
}

#[async_trait]
impl ProjectTx for MemTx {
    async fn get(&mut self, id: &str) -> Result<Option<Project>> {
        Ok(self.rows.get(id).cloned())
    }

    async fn find_child(&mut self, parent_id: Option<&str>, name: &str) -> Result<Option<Project>> {
        Ok(child_of(&self.rows, parent_id, name))
    }

    async fn children(&mut self, id: &str) -> Result<Vec<Project>> {
        Ok(self
            .rows
            .values()
            .filter(|p| p.parent_id.as_deref() == Some(id))
            .cloned()
            .collect())
    }

    async fn descendants(&mut self, id: &str) -> Result<Vec<Project>> {
        Ok(self
            .rows
            .values()
            .filter(|p| p.ancestors.iter().any(|a| a == id))
            .cloned()
            .collect())
    }

    async fn insert(&mut self, project: &Project) -> Result<()> {
        assert!(
            child_of(&self.rows, project.parent_id.as_deref(), &project.name).is_none(),
            "duplicate sibling {}",
            project.path
        );
        assert!(
            self.rows
                .insert(project.id.clone(), project.clone())
                .is_none()
        );
        Ok(())
    }

    async fn update(&mut self, project: &Project) -> Result<()> {
        assert!(
            self.rows
                .insert(project.id.clone(), project.clone())
                .is_some()
        );
        Ok(())
    }

    async fn delete(&mut self, ids: &[String]) -> Result<u64> {
        Ok(ids
            .iter()
            .filter(|id| self.rows.remove(*id).is_some())
            .count() as u64)
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        let failing = &self.store.failing_commits;
        if failing.load(AtomicOrdering::SeqCst) > 0 {
            failing.fetch_sub(1, AtomicOrdering::SeqCst);
            return Err(conflict(sea_orm::DbErr::Custom("injected conflict".into())));
        }
        *self.store.rows.lock().unwrap() = self.rows;
        self.store.commits.fetch_add(1, AtomicOrdering::SeqCst);
        Ok(())
    }

    async fn rollback(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

fn service() -> (ProjectService, MemStore) {
    let store = MemStore::default();
    (ProjectService::new(Arc::new(store.clone())), store)
}

fn new(path: &str) -> NewProject {
    NewProject {
        path: path.to_owned(),
        ..NewProject::default()
    }
}

async fn create(svc: &ProjectService, path: &str) -> Project {
    svc.create(new(path), "alice").await.unwrap().project
}

fn code<T: std::fmt::Debug>(result: Result<T>) -> ErrorCode {
    result.expect_err("expected an error").code()
}

fn rename(name: &str) -> ProjectChanges {
    ProjectChanges {
        name: Some(name.to_owned()),
        ..ProjectChanges::default()
    }
}

// ------------------------------------------------------------ names

#[test]
fn paths_are_split_and_trimmed() {
    assert_eq!(
        parse_path("main/sub/subsub").unwrap(),
        ["main", "sub", "subsub"]
    );
    assert_eq!(parse_path("  main /  sub  ").unwrap(), ["main", "sub"]);
    assert_eq!(parse_path("a b/c-d.e").unwrap(), ["a b", "c-d.e"]);
}

#[test]
fn malformed_paths_are_invalid_project_names() {
    for path in ["", "   ", "/a", "a/", "a//b", "a/ /b", "/", "a\nb", "a\0b"] {
        let err = parse_path(path).expect_err(path);
        assert_eq!(err.code(), ErrorCode::InvalidProjectName, "{path:?}");
    }
    let long = "x".repeat(MAX_NAME_CHARS + 1);
    assert_eq!(
        code(parse_path(&format!("a/{long}"))),
        ErrorCode::InvalidProjectName
    );
    assert!(
        parse_path(&"é".repeat(MAX_NAME_CHARS)).is_ok(),
        "the limit counts characters"
    );
}

#[test]
fn rename_targets_are_single_names() {
    assert_eq!(parse_name("  new ").unwrap(), "new");
    for name in ["", "  ", "a/b", "/", "tab\there"] {
        assert_eq!(
            code(parse_name(name)),
            ErrorCode::InvalidProjectName,
            "{name:?}"
        );
    }
}

#[test]
fn project_ids_are_32_lowercase_hex() {
    assert!(is_project_id(&new_id()));
    assert!(is_project_id("0123456789abcdef0123456789abcdef"));
    assert!(!is_project_id("0123456789ABCDEF0123456789ABCDEF"));
    assert!(!is_project_id("0123456789abcdef0123456789abcde"));
    assert!(!is_project_id("%123456789abcdef0123456789abcdef"));
}

// ------------------------------------------------------------ create

#[tokio::test]
async fn create_makes_missing_parents_top_down() {
    let (svc, store) = service();
    let created = svc
        .create(
            NewProject {
                path: "main/sub/subsub".into(),
                fields: ProjectFields {
                    description: "leaf".into(),
                    tags: vec!["b".into(), "a".into(), "b".into()],
                    system_tags: vec!["hidden".into()],
                    default_output_destination: "s3://bucket".into(),
                    ..ProjectFields::default()
                },
                allow_existing: false,
            },
            "alice",
        )
        .await
        .unwrap();
    assert!(created.created);
    let main = store.by_path("main");
    let sub = store.by_path("main/sub");
    assert_eq!(
        created.created_parent_ids,
        [main.id.clone(), sub.id.clone()]
    );

    let leaf = created.project;
    assert_eq!(leaf.name, "subsub");
    assert_eq!(leaf.path, "main/sub/subsub");
    assert_eq!(leaf.parent_id.as_deref(), Some(sub.id.as_str()));
    assert_eq!(leaf.ancestors, [main.id.clone(), sub.id.clone()]);
    assert_eq!(leaf.tags, ["a", "b"], "tags are deduplicated and sorted");
    assert_eq!(leaf.description, "leaf");
    assert_eq!(leaf.user, "alice");
    assert_eq!(leaf.created, leaf.last_update);
    assert_eq!(store.by_path("main/sub/subsub"), leaf);

    // Ancestors get nothing of the leaf's fields.
    assert_eq!(sub.parent_id.as_deref(), Some(main.id.as_str()));
    assert_eq!(main.parent_id, None);
    for parent in [&main, &sub] {
        assert!(parent.description.is_empty() && parent.tags.is_empty());
        assert!(parent.system_tags.is_empty() && parent.default_output_destination.is_empty());
        assert_eq!(parent.user, "alice");
    }
}

#[tokio::test]
async fn create_reuses_existing_parents() {
    let (svc, store) = service();
    let main = create(&svc, "main").await;
    let created = svc.create(new(" main / a / b "), "bob").await.unwrap();
    assert_eq!(created.created_parent_ids, [store.by_path("main/a").id]);
    assert_eq!(created.project.path, "main/a/b");
    assert_eq!(
        store.by_path("main"),
        main,
        "an existing parent is not touched"
    );
}

#[tokio::test]
async fn create_of_an_existing_path_is_taken_unless_allowed() {
    let (svc, store) = service();
    let first = create(&svc, "a/b").await;
    let before = store.snapshot();

    assert_eq!(
        code(svc.create(new("a/b"), "bob").await),
        ErrorCode::ProjectNameTaken
    );
    assert_eq!(
        code(svc.create(new("a / b"), "bob").await),
        ErrorCode::ProjectNameTaken
    );
    assert_eq!(store.snapshot(), before);

    let again = svc
        .create(
            NewProject {
                allow_existing: true,
                ..new("a/b")
            },
            "bob",
        )
        .await
        .unwrap();
    assert!(!again.created);
    assert!(again.created_parent_ids.is_empty());
    assert_eq!(again.project, first);
    assert_eq!(store.snapshot(), before);
}

#[tokio::test]
async fn sibling_names_are_case_sensitive() {
    let (svc, store) = service();
    create(&svc, "Main").await;
    create(&svc, "main").await;
    assert_eq!(store.paths(), ["Main", "main"]);
}

#[tokio::test]
async fn create_rejects_bad_input_without_writing() {
    let (svc, store) = service();
    assert_eq!(
        code(svc.create(new("a//b"), "u").await),
        ErrorCode::InvalidProjectName
    );
    let nul = NewProject {
        fields: ProjectFields {
            description: "x\0y".into(),
            ..ProjectFields::default()
        },
        ..new("a/b")
    };
    assert_eq!(code(svc.create(nul, "u").await), ErrorCode::InvalidArgument);
    let nul_tag = NewProject {
        fields: ProjectFields {
            tags: vec!["\0".into()],
            ..ProjectFields::default()
        },
        ..new("a/b")
    };
    assert_eq!(
        code(svc.create(nul_tag, "u").await),
        ErrorCode::InvalidArgument
    );
    assert!(store.snapshot().is_empty());
}

// ------------------------------------------------------------ read

#[tokio::test]
async fn get_by_id_and_by_path() {
    let (svc, _store) = service();
    let leaf = create(&svc, "a/b/c").await;
    assert_eq!(svc.get(&leaf.id).await.unwrap(), leaf);
    assert_eq!(svc.get_by_path("a/b/c").await.unwrap(), leaf);
    assert_eq!(svc.get_by_path(" a/ b /c ").await.unwrap(), leaf);

    assert_eq!(code(svc.get("").await), ErrorCode::MissingField);
    assert_eq!(code(svc.get(&new_id()).await), ErrorCode::ProjectNotFound);
    assert_eq!(code(svc.get("not-an-id").await), ErrorCode::ProjectNotFound);
    assert_eq!(
        code(svc.get_by_path("a/b/x").await),
        ErrorCode::ProjectNotFound
    );
    assert_eq!(
        code(svc.get_by_path("a/x/c").await),
        ErrorCode::ProjectNotFound
    );
    assert_eq!(
        code(svc.get_by_path("A/b/c").await),
        ErrorCode::ProjectNotFound
    );
    assert_eq!(
        code(svc.get_by_path("a//c").await),
        ErrorCode::InvalidProjectName
    );
    assert_eq!(
        code(svc.get_by_path("").await),
        ErrorCode::InvalidProjectName
    );
}

// ------------------------------------------------------------ update

#[tokio::test]
async fn rename_rewrites_every_sub_project_path() {
    let (svc, store) = service();
    create(&svc, "main/sub/subsub").await;
    let main = store.by_path("main");
    create(&svc, "main/other").await;
    create(&svc, "mainly/kept").await;
    let sub = store.by_path("main/sub");

    let changed = svc.update(&main.id, rename(" top ")).await.unwrap();
    assert_eq!(changed.updated, 4, "the project and its three sub-projects");
    assert_eq!(changed.project.name, "top");
    assert_eq!(changed.project.path, "top");
    assert!(changed.project.last_update >= main.last_update);
    assert_eq!(
        store.paths(),
        [
            "mainly",
            "mainly/kept",
            "top",
            "top/other",
            "top/sub",
            "top/sub/subsub"
        ]
    );
    let sub_after = store.by_path("top/sub");
    assert_eq!(sub_after.id, sub.id, "ids never change");
    assert_eq!(sub_after.ancestors, sub.ancestors);
    assert_eq!(sub_after.created, sub.created);

    // A middle project: only its own subtree follows.
    let changed = svc.update(&sub.id, rename("mid")).await.unwrap();
    assert_eq!(changed.updated, 2);
    assert_eq!(changed.project.path, "top/mid");
    assert_eq!(
        store.paths(),
        [
            "mainly",
            "mainly/kept",
            "top",
            "top/mid",
            "top/mid/subsub",
            "top/other"
        ]
    );
}

#[tokio::test]
async fn rename_onto_a_sibling_is_refused_and_changes_nothing() {
    let (svc, store) = service();
    create(&svc, "p/a/x").await;
    create(&svc, "p/b").await;
    create(&svc, "q/a").await;
    let a = store.by_path("p/a");
    let before = store.snapshot();

    let err = svc.update(&a.id, rename("b")).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ProjectNameTaken);
    assert_eq!(err.fields()["path"], "p/b");
    // Combined with other fields: still nothing is written.
    let both = ProjectChanges {
        description: Some("d".into()),
        ..rename("b")
    };
    assert_eq!(
        code(svc.update(&a.id, both).await),
        ErrorCode::ProjectNameTaken
    );
    assert_eq!(store.snapshot(), before);

    // The same name under another parent is fine.
    let q = store.by_path("q");
    assert_eq!(svc.update(&q.id, rename("p2")).await.unwrap().updated, 2);
}

#[tokio::test]
async fn update_writes_the_named_fields_only() {
    let (svc, store) = service();
    let p = svc
        .create(
            NewProject {
                fields: ProjectFields {
                    description: "old".into(),
                    overview: "# old".into(),
                    tags: vec!["t".into()],
                    ..ProjectFields::default()
                },
                ..new("p")
            },
            "alice",
        )
        .await
        .unwrap()
        .project;
    let changes = ProjectChanges {
        description: Some(String::new()),
        system_tags: Some(vec!["archived".into(), "archived".into()]),
        default_output_destination: Some("s3://b/p".into()),
        ..ProjectChanges::default()
    };
    let changed = svc.update(&p.id, changes).await.unwrap();
    assert_eq!(changed.updated, 1);
    let after = store.by_path("p");
    assert_eq!(after, changed.project);
    assert_eq!(after.description, "", "a named field left empty clears it");
    assert_eq!(after.overview, "# old");
    assert_eq!(after.tags, ["t"]);
    assert_eq!(after.system_tags, ["archived"]);
    assert_eq!(after.default_output_destination, "s3://b/p");
    assert_eq!(after.created, p.created);
}

#[tokio::test]
async fn update_with_unchanged_values_writes_nothing() {
    let (svc, store) = service();
    create(&svc, "p/c").await;
    let p = store.by_path("p");
    let commits = store.commits.load(AtomicOrdering::SeqCst);
    let same = ProjectChanges {
        name: Some("p".into()),
        description: Some(String::new()),
        tags: Some(vec![]),
        ..ProjectChanges::default()
    };
    let changed = svc.update(&p.id, same).await.unwrap();
    assert_eq!(changed.updated, 0);
    assert_eq!(changed.project, p, "last_update is kept");
    assert_eq!(store.by_path("p"), p);
    assert_eq!(
        store.commits.load(AtomicOrdering::SeqCst),
        commits + 1,
        "an empty commit"
    );
}

#[tokio::test]
async fn update_rejects_bad_input() {
    let (svc, store) = service();
    let p = create(&svc, "p/c").await;
    let before = store.snapshot();
    assert_eq!(
        code(svc.update("", rename("x")).await),
        ErrorCode::MissingField
    );
    assert_eq!(
        code(svc.update(&p.id, ProjectChanges::default()).await),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        code(svc.update(&new_id(), rename("x")).await),
        ErrorCode::ProjectNotFound
    );
    assert_eq!(
        code(svc.update(&p.id, rename("")).await),
        ErrorCode::InvalidProjectName
    );
    assert_eq!(
        code(svc.update(&p.id, rename("x/y")).await),
        ErrorCode::InvalidProjectName
    );
    let nul = ProjectChanges {
        overview: Some("\0".into()),
        ..ProjectChanges::default()
    };
    assert_eq!(
        code(svc.update(&p.id, nul).await),
        ErrorCode::InvalidArgument
    );
    assert_eq!(store.snapshot(), before);
}

// ------------------------------------------------------------ move

#[tokio::test]
async fn move_takes_the_subtree_along() {
    let (svc, store) = service();
    create(&svc, "a/b/c/d").await;
    create(&svc, "x/y").await;
    let b = store.by_path("a/b");
    let c = store.by_path("a/b/c");
    let d = store.by_path("a/b/c/d");
    let y = store.by_path("x/y");

    let moved = svc.move_project(&b.id, &y.id).await.unwrap();
    assert_eq!(moved.updated, 3);
    assert_eq!(moved.project.path, "x/y/b");
    assert_eq!(moved.project.parent_id.as_deref(), Some(y.id.as_str()));
    assert_eq!(moved.project.ancestors, y.lineage());
    assert_eq!(
        store.paths(),
        ["a", "x", "x/y", "x/y/b", "x/y/b/c", "x/y/b/c/d"]
    );
    let c_after = store.by_path("x/y/b/c");
    assert_eq!(c_after.id, c.id);
    assert_eq!(c_after.parent_id.as_deref(), Some(b.id.as_str()));
    assert_eq!(
        c_after.ancestors,
        [y.ancestors[0].clone(), y.id.clone(), b.id.clone()]
    );
    assert_eq!(
        store.by_path("x/y/b/c/d").ancestors,
        [&c_after.ancestors[..], std::slice::from_ref(&c.id)].concat()
    );
    assert_eq!(store.by_path("x/y/b/c/d").id, d.id);

    // To the root.
    let moved = svc.move_project(&c.id, "").await.unwrap();
    assert_eq!(moved.updated, 2);
    assert_eq!(moved.project.parent_id, None);
    assert!(moved.project.ancestors.is_empty());
    assert_eq!(store.by_path("c/d").ancestors, std::slice::from_ref(&c.id));

    // Already there: nothing to do.
    let before = store.snapshot();
    let moved = svc.move_project(&c.id, "").await.unwrap();
    assert_eq!(moved.updated, 0);
    assert_eq!(store.snapshot(), before);
}

#[tokio::test]
async fn move_refuses_cycles_clashes_and_unknown_ids() {
    let (svc, store) = service();
    create(&svc, "a/b/c").await;
    create(&svc, "x/b").await;
    let a = store.by_path("a");
    let b = store.by_path("a/b");
    let c = store.by_path("a/b/c");
    let x = store.by_path("x");
    let before = store.snapshot();

    assert_eq!(
        code(svc.move_project(&a.id, &a.id).await),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        code(svc.move_project(&a.id, &c.id).await),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        code(svc.move_project(&b.id, &x.id).await),
        ErrorCode::ProjectNameTaken
    );
    assert_eq!(
        code(svc.move_project(&b.id, &new_id()).await),
        ErrorCode::ProjectNotFound
    );
    assert_eq!(
        code(svc.move_project(&new_id(), &x.id).await),
        ErrorCode::ProjectNotFound
    );
    assert_eq!(
        code(svc.move_project("", &x.id).await),
        ErrorCode::MissingField
    );
    assert_eq!(store.snapshot(), before);
}

// ------------------------------------------------------------ merge

#[tokio::test]
async fn merge_moves_sub_projects_and_deletes_the_source() {
    let (svc, store) = service();
    create(&svc, "src/a/deep").await;
    create(&svc, "src/b").await;
    create(&svc, "dst/keep").await;
    let src = store.by_path("src");
    let dst = store.by_path("dst");
    let a = store.by_path("src/a");
    let b = store.by_path("src/b");
    let deep = store.by_path("src/a/deep");

    let merged = svc.merge(&src.id, &dst.id, false).await.unwrap();
    assert!(merged.source_deleted);
    assert_eq!(merged.destination, dst);
    assert_eq!(merged.moved_project_ids, [a.id.clone(), b.id.clone()]);
    assert_eq!(
        store.paths(),
        ["dst", "dst/a", "dst/a/deep", "dst/b", "dst/keep"]
    );
    assert!(!store.snapshot().contains_key(&src.id));
    let a_after = store.by_path("dst/a");
    assert_eq!(a_after.id, a.id);
    assert_eq!(a_after.parent_id.as_deref(), Some(dst.id.as_str()));
    assert_eq!(a_after.ancestors, std::slice::from_ref(&dst.id));
    let deep_after = store.by_path("dst/a/deep");
    assert_eq!(deep_after.id, deep.id);
    assert_eq!(deep_after.parent_id.as_deref(), Some(a.id.as_str()));
    assert_eq!(deep_after.ancestors, [dst.id.clone(), a.id.clone()]);

    assert_eq!(
        code(svc.merge(&src.id, &dst.id, false).await),
        ErrorCode::ProjectNotFound
    );
}

#[tokio::test]
async fn merge_validate_only_changes_nothing() {
    let (svc, store) = service();
    create(&svc, "src/a").await;
    create(&svc, "dst").await;
    let src = store.by_path("src");
    let dst = store.by_path("dst");
    let before = store.snapshot();
    let merged = svc.merge(&src.id, &dst.id, true).await.unwrap();
    assert!(!merged.source_deleted);
    assert_eq!(merged.moved_project_ids, [store.by_path("src/a").id]);
    assert_eq!(store.snapshot(), before);
}

#[tokio::test]
async fn merge_into_the_parent_frees_the_source_name() {
    let (svc, store) = service();
    create(&svc, "p/s/s").await;
    create(&svc, "p/s/t").await;
    let p = store.by_path("p");
    let s = store.by_path("p/s");
    let merged = svc.merge(&s.id, &p.id, false).await.unwrap();
    assert_eq!(merged.moved_project_ids.len(), 2);
    assert_eq!(store.paths(), ["p", "p/s", "p/t"]);
    assert_ne!(store.by_path("p/s").id, s.id, "p/s is now the former p/s/s");
}

#[tokio::test]
async fn merge_refuses_bad_pairs_and_clashes() {
    let (svc, store) = service();
    create(&svc, "src/a/x").await;
    create(&svc, "dst/a").await;
    let src = store.by_path("src");
    let dst = store.by_path("dst");
    let inner = store.by_path("src/a/x");
    let before = store.snapshot();

    let err = svc.merge(&src.id, &dst.id, false).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ProjectNameTaken);
    assert_eq!(err.fields()["path"], "dst/a");
    assert_eq!(
        code(svc.merge(&src.id, &dst.id, true).await),
        ErrorCode::ProjectNameTaken
    );
    assert_eq!(
        code(svc.merge(&src.id, &src.id, false).await),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        code(svc.merge(&src.id, &inner.id, false).await),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        code(svc.merge(&new_id(), &dst.id, false).await),
        ErrorCode::ProjectNotFound
    );
    assert_eq!(
        code(svc.merge(&src.id, &new_id(), false).await),
        ErrorCode::ProjectNotFound
    );
    assert_eq!(
        code(svc.merge("", &dst.id, false).await),
        ErrorCode::MissingField
    );
    assert_eq!(
        code(svc.merge(&src.id, "", false).await),
        ErrorCode::MissingField
    );
    assert_eq!(store.snapshot(), before);
}

// ------------------------------------------------------------ delete

#[tokio::test]
async fn delete_refuses_a_non_empty_subtree_unless_forced() {
    let (svc, store) = service();
    create(&svc, "a/b/c").await;
    create(&svc, "a/b2").await;
    create(&svc, "keep").await;
    let a = store.by_path("a");
    let before = store.snapshot();

    let refused = svc
        .delete(DeleteRequest {
            id: a.id.clone(),
            force: false,
            contents_count: 3,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), ErrorCode::ProjectNotEmpty);
    assert_eq!(refused.fields()["contents_count"], "3");
    assert_eq!(store.snapshot(), before);

    let deleted = svc
        .delete(DeleteRequest {
            id: a.id.clone(),
            force: true,
            contents_count: 3,
        })
        .await
        .unwrap();
    let expected: Vec<String> = ["a", "a/b", "a/b/c", "a/b2"]
        .iter()
        .map(|p| before.values().find(|x| x.path == *p).unwrap().id.clone())
        .collect();
    assert_eq!(
        deleted, expected,
        "the requested project first, then its subtree by path"
    );
    assert_eq!(store.paths(), ["keep"]);

    assert_eq!(
        code(
            svc.delete(DeleteRequest {
                id: a.id,
                ..DeleteRequest::default()
            })
            .await
        ),
        ErrorCode::ProjectNotFound,
        "a second delete is distinguishable"
    );
    assert_eq!(
        code(svc.delete(DeleteRequest::default()).await),
        ErrorCode::MissingField
    );
}

#[tokio::test]
async fn delete_of_an_empty_leaf_needs_no_force() {
    let (svc, store) = service();
    let leaf = create(&svc, "a/b").await;
    let deleted = svc
        .delete(DeleteRequest {
            id: leaf.id.clone(),
            ..DeleteRequest::default()
        })
        .await;
    assert_eq!(deleted.unwrap(), [leaf.id]);
    assert_eq!(store.paths(), ["a"]);
}

// ------------------------------------------------------------ retries

#[tokio::test]
async fn a_lost_race_is_retried_from_scratch() {
    let (svc, store) = service();
    store
        .failing_commits
        .store(MAX_ATTEMPTS - 1, AtomicOrdering::SeqCst);
    let created = svc.create(new("a/b"), "u").await.unwrap();
    assert_eq!(store.paths(), ["a", "a/b"]);
    assert_eq!(store.by_path("a/b"), created.project);
    assert_eq!(store.failing_commits.load(AtomicOrdering::SeqCst), 0);
}

#[tokio::test]
async fn retries_give_up_with_unavailable_and_nothing_written() {
    let (svc, store) = service();
    store
        .failing_commits
        .store(MAX_ATTEMPTS + 3, AtomicOrdering::SeqCst);
    assert_eq!(
        code(svc.create(new("a/b"), "u").await),
        ErrorCode::Unavailable
    );
    assert!(store.snapshot().is_empty());
    assert_eq!(
        store.failing_commits.load(AtomicOrdering::SeqCst),
        3,
        "exactly MAX_ATTEMPTS tries"
    );
}

// ------------------------------------------------------------ list

async fn tree(svc: &ProjectService, store: &MemStore) {
    for path in ["a/b/c", "a/d", "e", ".pipelines/p", "old/x"] {
        create(svc, path).await;
    }
    let hide = ProjectChanges {
        system_tags: Some(vec!["hidden".into()]),
        ..Default::default()
    };
    svc.update(&store.by_path(".pipelines").id, hide.clone())
        .await
        .unwrap();
    svc.update(&store.by_path(".pipelines/p").id, hide)
        .await
        .unwrap();
    let archive = ProjectChanges {
        system_tags: Some(vec!["archived".into()]),
        ..Default::default()
    };
    svc.update(&store.by_path("old").id, archive).await.unwrap();
    let tags = ProjectChanges {
        tags: Some(vec!["red".into(), "big".into()]),
        ..Default::default()
    };
    svc.update(&store.by_path("a/b").id, tags).await.unwrap();
    let tags = ProjectChanges {
        tags: Some(vec!["red".into()]),
        ..Default::default()
    };
    svc.update(&store.by_path("e").id, tags).await.unwrap();
}

async fn list_paths(svc: &ProjectService, query: ListQuery) -> Vec<String> {
    svc.list(query)
        .await
        .unwrap()
        .projects
        .into_iter()
        .map(|p| p.path)
        .collect()
}

#[tokio::test]
async fn list_scopes_shallow_and_deep() {
    let (svc, store) = service();
    tree(&svc, &store).await;
    let a = store.by_path("a").id;

    let all = list_paths(&svc, ListQuery::default()).await;
    assert_eq!(all, ["a", "a/b", "a/b/c", "a/d", "e", "old/x"]);
    let top = list_paths(
        &svc,
        ListQuery {
            shallow: true,
            ..ListQuery::default()
        },
    )
    .await;
    assert_eq!(top, ["a", "e"]);
    let under_a = ListQuery {
        parent_id: a.clone(),
        ..ListQuery::default()
    };
    assert_eq!(list_paths(&svc, under_a).await, ["a/b", "a/b/c", "a/d"]);
    let children = ListQuery {
        parent_id: a,
        shallow: true,
        ..ListQuery::default()
    };
    assert_eq!(list_paths(&svc, children).await, ["a/b", "a/d"]);
    let unknown = ListQuery {
        parent_id: new_id(),
        ..ListQuery::default()
    };
    assert!(list_paths(&svc, unknown).await.is_empty());
}

#[tokio::test]
async fn list_hides_hidden_and_archived_unless_asked() {
    let (svc, store) = service();
    tree(&svc, &store).await;
    let with_hidden = ListQuery {
        include_hidden: true,
        ..ListQuery::default()
    };
    assert_eq!(
        list_paths(&svc, with_hidden).await,
        [
            ".pipelines",
            ".pipelines/p",
            "a",
            "a/b",
            "a/b/c",
            "a/d",
            "e",
            "old/x"
        ]
    );
    let with_archived = ListQuery {
        include_archived: true,
        ..ListQuery::default()
    };
    assert_eq!(
        list_paths(&svc, with_archived).await,
        ["a", "a/b", "a/b/c", "a/d", "e", "old", "old/x"]
    );
    let asking = ListQuery {
        system_tags: TagFilter {
            any_of: vec!["archived".into()],
            ..TagFilter::default()
        },
        ..ListQuery::default()
    };
    assert_eq!(list_paths(&svc, asking).await, ["old"]);
    let asking = ListQuery {
        system_tags: TagFilter {
            all_of: vec!["hidden".into()],
            ..TagFilter::default()
        },
        ..ListQuery::default()
    };
    assert_eq!(
        list_paths(&svc, asking).await,
        [".pipelines", ".pipelines/p"]
    );
    let excluding = ListQuery {
        include_hidden: true,
        system_tags: TagFilter {
            none_of: vec!["hidden".into()],
            ..TagFilter::default()
        },
        ..ListQuery::default()
    };
    assert_eq!(
        list_paths(&svc, excluding).await,
        ["a", "a/b", "a/b/c", "a/d", "e", "old/x"]
    );
}

#[tokio::test]
async fn list_filters_by_regex_tags_ids_and_users() {
    let (svc, store) = service();
    tree(&svc, &store).await;
    let other = svc.create(new("zed"), "bob").await.unwrap().project;

    let exact = ListQuery {
        path_regex: "^a$".into(),
        ..ListQuery::default()
    };
    assert_eq!(list_paths(&svc, exact).await, ["a"]);
    let unanchored = ListQuery {
        path_regex: "b".into(),
        ..ListQuery::default()
    };
    assert_eq!(list_paths(&svc, unanchored).await, ["a/b", "a/b/c"]);
    let by_name = ListQuery {
        name_regex: "^[cd]$".into(),
        ..ListQuery::default()
    };
    assert_eq!(list_paths(&svc, by_name).await, ["a/b/c", "a/d"]);
    let case = ListQuery {
        path_regex: "(?i)^A/B$".into(),
        ..ListQuery::default()
    };
    assert_eq!(list_paths(&svc, case).await, ["a/b"]);
    let case = ListQuery {
        path_regex: "^A/B$".into(),
        ..ListQuery::default()
    };
    assert!(list_paths(&svc, case).await.is_empty());

    let red = TagFilter {
        any_of: vec!["red".into()],
        ..TagFilter::default()
    };
    assert_eq!(
        list_paths(
            &svc,
            ListQuery {
                tags: red,
                ..ListQuery::default()
            }
        )
        .await,
        ["a/b", "e"]
    );
    let red_not_big = TagFilter {
        all_of: vec!["red".into()],
        none_of: vec!["big".into()],
        ..TagFilter::default()
    };
    let query = ListQuery {
        tags: red_not_big,
        ..ListQuery::default()
    };
    assert_eq!(list_paths(&svc, query).await, ["e"]);

    let ids = vec![store.by_path("e").id, store.by_path("a/d").id, new_id()];
    assert_eq!(
        list_paths(
            &svc,
            ListQuery {
                ids,
                ..ListQuery::default()
            }
        )
        .await,
        ["a/d", "e"]
    );
    let users = vec!["bob".to_owned()];
    assert_eq!(
        svc.list(ListQuery {
            users,
            ..ListQuery::default()
        })
        .await
        .unwrap()
        .projects,
        [other]
    );
}

#[tokio::test]
async fn list_rejects_bad_regexes_orderings_and_tokens() {
    let (svc, store) = service();
    tree(&svc, &store).await;
    let bad = ListQuery {
        path_regex: "(".into(),
        ..ListQuery::default()
    };
    assert_eq!(code(svc.list(bad).await), ErrorCode::InvalidRegex);
    let bad = ListQuery {
        name_regex: "a{2,1}".into(),
        ..ListQuery::default()
    };
    assert_eq!(code(svc.list(bad).await), ErrorCode::InvalidRegex);
    // An invalid pattern is an error even where nothing would be listed.
    let bad = ListQuery {
        parent_id: new_id(),
        path_regex: "[".into(),
        ..ListQuery::default()
    };
    assert_eq!(code(svc.list(bad).await), ErrorCode::InvalidRegex);
    for field in ["status", "", "Path", "tags"] {
        let order_by = vec![OrderBy {
            field: field.into(),
            descending: false,
        }];
        let bad = ListQuery {
            order_by,
            ..ListQuery::default()
        };
        assert_eq!(
            code(svc.list(bad).await),
            ErrorCode::InvalidOrderBy,
            "{field:?}"
        );
    }
    for token in ["garbage!", "e30", "eyJmIjoiMCIsImsiOltdfQ"] {
        let bad = ListQuery {
            page_token: token.into(),
            ..ListQuery::default()
        };
        assert_eq!(
            code(svc.list(bad).await),
            ErrorCode::InvalidPageToken,
            "{token:?}"
        );
    }
    // A token only works with the request that issued it.
    let first = svc
        .list(ListQuery {
            page_size: 2,
            ..ListQuery::default()
        })
        .await
        .unwrap();
    assert!(!first.next_page_token.is_empty());
    let other = ListQuery {
        page_size: 2,
        path_regex: "a".into(),
        page_token: first.next_page_token.clone(),
        ..ListQuery::default()
    };
    assert_eq!(code(svc.list(other).await), ErrorCode::InvalidPageToken);
    let reordered = ListQuery {
        page_size: 2,
        order_by: vec![OrderBy {
            field: "created".into(),
            descending: true,
        }],
        page_token: first.next_page_token,
        ..ListQuery::default()
    };
    assert_eq!(code(svc.list(reordered).await), ErrorCode::InvalidPageToken);
}

/// Walks every page of `query` and returns the ids in the order received.
async fn walk(svc: &ProjectService, mut query: ListQuery) -> Vec<String> {
    let mut ids = Vec::new();
    loop {
        let page = svc.list(query.clone()).await.unwrap();
        assert!(page.projects.len() <= query.page_size.max(1) as usize);
        ids.extend(page.projects.into_iter().map(|p| p.id));
        if page.next_page_token.is_empty() {
            return ids;
        }
        query.page_token = page.next_page_token;
    }
}

#[tokio::test]
async fn pages_cover_the_list_once_in_order() {
    let (svc, store) = service();
    for i in 0..23 {
        create(&svc, &format!("p{:02}/{}", i % 7, i)).await;
    }
    let everything = svc
        .list(ListQuery {
            include_total: true,
            ..ListQuery::default()
        })
        .await;
    let everything = everything.unwrap();
    assert_eq!(everything.total_size, Some(30));
    assert!(everything.next_page_token.is_empty());
    let all_ids: Vec<String> = everything.projects.iter().map(|p| p.id.clone()).collect();
    let paths: Vec<&str> = everything
        .projects
        .iter()
        .map(|p| p.path.as_str())
        .collect();
    let mut sorted = paths.clone();
    sorted.sort_unstable();
    assert_eq!(paths, sorted, "default order is the path");

    for page_size in [1, 2, 7, 29, 30, 31] {
        let query = ListQuery {
            page_size,
            ..ListQuery::default()
        };
        assert_eq!(walk(&svc, query).await, all_ids, "page size {page_size}");
    }

    // Descending by name, with many ties broken by id.
    let order_by = vec![OrderBy {
        field: "name".into(),
        descending: true,
    }];
    let full = svc
        .list(ListQuery {
            order_by: order_by.clone(),
            ..ListQuery::default()
        })
        .await;
    let full: Vec<Project> = full.unwrap().projects;
    for pair in full.windows(2) {
        let (x, y) = (&pair[0], &pair[1]);
        assert!(
            x.name > y.name || (x.name == y.name && x.id < y.id),
            "{x:?} before {y:?}"
        );
    }
    let ids: Vec<String> = full.into_iter().map(|p| p.id).collect();
    let query = ListQuery {
        page_size: 4,
        order_by,
        ..ListQuery::default()
    };
    assert_eq!(walk(&svc, query).await, ids);

    // Every project was created in its own instant or shares it with its
    // parents: ordering by time still pages stably.
    let order_by = vec![
        OrderBy {
            field: "created".into(),
            descending: true,
        },
        OrderBy {
            field: "path".into(),
            descending: false,
        },
    ];
    let full = svc
        .list(ListQuery {
            order_by: order_by.clone(),
            ..ListQuery::default()
        })
        .await;
    let ids: Vec<String> = full.unwrap().projects.into_iter().map(|p| p.id).collect();
    let query = ListQuery {
        page_size: 3,
        order_by,
        ..ListQuery::default()
    };
    assert_eq!(walk(&svc, query).await, ids);
    assert_eq!(ids.len(), store.snapshot().len());
}

#[tokio::test]
async fn paging_survives_inserts_and_deletes_between_pages() {
    let (svc, store) = service();
    for name in ["b", "d", "f", "h"] {
        create(&svc, name).await;
    }
    let query = ListQuery {
        page_size: 2,
        ..ListQuery::default()
    };
    let first = svc.list(query.clone()).await.unwrap();
    let seen: Vec<String> = first.projects.iter().map(|p| p.path.clone()).collect();
    assert_eq!(seen, ["b", "d"]);
    // Before the cursor: not seen again; after it: seen.
    create(&svc, "a").await;
    create(&svc, "e").await;
    let f = store.by_path("f");
    svc.delete(DeleteRequest {
        id: f.id,
        ..DeleteRequest::default()
    })
    .await
    .unwrap();
    let second = svc
        .list(ListQuery {
            page_token: first.next_page_token,
            ..query.clone()
        })
        .await
        .unwrap();
    let seen: Vec<String> = second.projects.iter().map(|p| p.path.clone()).collect();
    assert_eq!(seen, ["e", "h"]);
    assert!(second.next_page_token.is_empty());
}

#[tokio::test]
async fn page_sizes_default_and_clamp() {
    let (svc, store) = service();
    {
        // Insert directly: 1001 projects through the service would be slow
        // for no gain.
        let mut rows = store.rows.lock().unwrap();
        let now = now();
        for i in 0..1001 {
            let p = Project::new(
                None,
                &format!("p{i:04}"),
                ProjectFields::default(),
                "u",
                now,
            );
            rows.insert(p.id.clone(), p);
        }
    }
    let default = svc.list(ListQuery::default()).await.unwrap();
    assert_eq!(default.projects.len(), DEFAULT_PAGE_SIZE);
    let huge = svc
        .list(ListQuery {
            page_size: 5000,
            ..ListQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(huge.projects.len(), MAX_PAGE_SIZE);
    assert!(!huge.next_page_token.is_empty());
}
