//! Project operations the gateway composes with the tasks service: delete
//! (refused while the subtree holds tasks, unless forced), merge, move and
//! task statistics including sub-projects, over ClearML REST and gRPC.

mod common;

use common::{ACCESS_KEY, Embedded, SECRET_KEY, basic};
use serde_json::{Value, json};

async fn create_project(tl: &Embedded, t: &str, path: &str) -> String {
    tl.ok(
        t,
        "projects.create",
        json!({"name": path, "description": ""}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn project_id(tl: &Embedded, t: &str, path: &str) -> String {
    let found = tl
        .ok(
            t,
            "projects.get_all",
            json!({"name": format!("^{path}$"), "search_hidden": true}),
        )
        .await;
    found["projects"][0]["id"].as_str().unwrap().to_owned()
}

async fn create_task(tl: &Embedded, t: &str, project: &str, name: &str, ty: &str) -> String {
    tl.ok(
        t,
        "tasks.create",
        json!({"name": name, "type": ty, "project": project}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn task_project(tl: &Embedded, t: &str, task: &str) -> Value {
    tl.ok(t, "tasks.get_by_id", json!({"task": task})).await["task"]["project"].clone()
}

async fn exists(tl: &Embedded, t: &str, endpoint: &str, key: &str, id: &str) -> bool {
    let reply = tl.call(t, endpoint, json!({ key: id })).await;
    match reply.status {
        200 => true,
        400 => false,
        other => panic!("{endpoint}: unexpected {other}: {}", reply.text()),
    }
}

fn with<T>(auth: &str, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("authorization", auth.parse().unwrap());
    req
}

#[tokio::test]
async fn delete_is_refused_while_the_subtree_holds_tasks_unless_forced() {
    use tasklab_proto::projects::v1 as ppb;
    use tasklab_proto::projects::v1::projects_service_client::ProjectsServiceClient;

    let tl = Embedded::start().await;
    let t = tl.token().await;
    let sub = create_project(&tl, &t, "del/sub").await;
    let top = project_id(&tl, &t, "del").await;
    let task = create_task(&tl, &t, &sub, "in sub", "training").await;

    // REST, not forced: project_not_empty (400/405), nothing changed.
    let reply = tl
        .call(&t, "projects.delete", json!({"project": top}))
        .await;
    assert_eq!(reply.codes(), (400, 400, 405), "{}", reply.text());
    assert!(exists(&tl, &t, "projects.get_by_id", "project", &top).await);
    assert!(exists(&tl, &t, "projects.get_by_id", "project", &sub).await);
    assert_eq!(task_project(&tl, &t, &task).await, sub.as_str());

    // gRPC: a client-supplied contents_count of 0 is ignored.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", tl.api))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut projects = ProjectsServiceClient::new(channel);
    let auth = basic(ACCESS_KEY, SECRET_KEY);
    let err = projects
        .delete_project(with(
            &auth,
            ppb::DeleteProjectRequest {
                id: top.clone(),
                force: false,
                contents_count: 0,
                delete_contents: false,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(exists(&tl, &t, "projects.get_by_id", "project", &sub).await);
    assert!(exists(&tl, &t, "tasks.get_by_id", "task", &task).await);
    // Other RPCs are forwarded as they were.
    let listed = projects
        .list_projects(with(
            &auth,
            ppb::ListProjectsRequest {
                parent_id: top.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.projects.len(), 1);

    // Forced with delete_contents: the subtree and its tasks are gone.
    let deleted = tl
        .ok(
            &t,
            "projects.delete",
            json!({"project": top, "force": true, "delete_contents": true}),
        )
        .await;
    assert_eq!(deleted["deleted"], 2, "{deleted}");
    assert_eq!(deleted["deleted_tasks"], 1, "{deleted}");
    assert!(!exists(&tl, &t, "projects.get_by_id", "project", &top).await);
    assert!(!exists(&tl, &t, "projects.get_by_id", "project", &sub).await);
    assert!(!exists(&tl, &t, "tasks.get_by_id", "task", &task).await);
    // A retry says the project is gone.
    let again = tl
        .call(
            &t,
            "projects.delete",
            json!({"project": top, "force": true}),
        )
        .await;
    assert_eq!(again.status, 400, "{}", again.text());

    // Forced without delete_contents (gRPC): tasks leave the project.
    let sub2 = create_project(&tl, &t, "keep/sub").await;
    let top2 = project_id(&tl, &t, "keep").await;
    let kept = create_task(&tl, &t, &sub2, "kept", "testing").await;
    let reply = projects
        .delete_project(with(
            &auth,
            ppb::DeleteProjectRequest {
                id: top2.clone(),
                force: true,
                contents_count: 0,
                delete_contents: false,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.deleted, 2);
    assert_eq!(reply.deleted_project_ids[0], top2);
    assert!(exists(&tl, &t, "tasks.get_by_id", "task", &kept).await);
    let project = task_project(&tl, &t, &kept).await;
    assert!(
        project.is_null() || project == "",
        "task left the project: {project}"
    );

    // An empty project is deleted without force.
    let empty = create_project(&tl, &t, "empty").await;
    let deleted = tl
        .ok(&t, "projects.delete", json!({"project": empty}))
        .await;
    assert_eq!(deleted["deleted"], 1);
    tl.stop().await;
}

#[tokio::test]
async fn merge_moves_tasks_and_sub_projects_and_move_changes_the_parent() {
    let tl = Embedded::start().await;
    let t = tl.token().await;
    let src_child = create_project(&tl, &t, "src/child").await;
    let src = project_id(&tl, &t, "src").await;
    let dst = create_project(&tl, &t, "dst").await;
    let in_src = create_task(&tl, &t, &src, "in source", "training").await;
    let in_child = create_task(&tl, &t, &src_child, "in child", "training").await;

    let merged = tl
        .ok(
            &t,
            "projects.merge",
            json!({"project": src, "destination_project": dst}),
        )
        .await;
    assert_eq!(merged["moved_entities"], 1, "{merged}");
    assert_eq!(merged["moved_projects"], 1, "{merged}");
    assert!(!exists(&tl, &t, "projects.get_by_id", "project", &src).await);
    assert_eq!(task_project(&tl, &t, &in_src).await, dst.as_str());
    assert_eq!(task_project(&tl, &t, &in_child).await, src_child.as_str());
    let child = tl
        .ok(&t, "projects.get_by_id", json!({"project": src_child}))
        .await;
    assert_eq!(child["project"]["name"], "dst/child");

    // Merging into its own sub-project is refused and changes nothing.
    let reply = tl
        .call(
            &t,
            "projects.merge",
            json!({"project": dst, "destination_project": src_child}),
        )
        .await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert_eq!(task_project(&tl, &t, &in_src).await, dst.as_str());

    // Move under a new (created) location, then back to the root.
    let moved = tl
        .ok(
            &t,
            "projects.move",
            json!({"project": src_child, "new_location": "elsewhere/deep"}),
        )
        .await;
    assert_eq!(moved["moved"], 1, "{moved}");
    let child = tl
        .ok(&t, "projects.get_by_id", json!({"project": src_child}))
        .await;
    assert_eq!(child["project"]["name"], "elsewhere/deep/child");
    assert_eq!(task_project(&tl, &t, &in_child).await, src_child.as_str());
    tl.ok(&t, "projects.move", json!({"project": src_child}))
        .await;
    let child = tl
        .ok(&t, "projects.get_by_id", json!({"project": src_child}))
        .await;
    assert_eq!(child["project"]["name"], "child");
    tl.stop().await;
}

#[tokio::test]
async fn get_all_ex_counts_tasks_per_status_including_sub_projects() {
    let tl = Embedded::start().await;
    let t = tl.token().await;
    let sub = create_project(&tl, &t, "stats/sub").await;
    let top = project_id(&tl, &t, "stats").await;
    let other = create_project(&tl, &t, "other").await;

    create_task(&tl, &t, &top, "draft", "training").await;
    let running = create_task(&tl, &t, &sub, "running", "training").await;
    tl.ok(&t, "tasks.started", json!({"task": running})).await;
    let done = create_task(&tl, &t, &sub, "done", "testing").await;
    tl.ok(&t, "tasks.started", json!({"task": done})).await;
    tl.ok(&t, "tasks.completed", json!({"task": done})).await;
    let failed = create_task(&tl, &t, &sub, "failed", "testing").await;
    tl.ok(&t, "tasks.started", json!({"task": failed})).await;
    tl.ok(&t, "tasks.failed", json!({"task": failed})).await;
    let archived = create_task(&tl, &t, &sub, "archived", "training").await;
    tl.ok(&t, "tasks.archive", json!({"tasks": [archived]}))
        .await;
    create_task(&tl, &t, &other, "elsewhere", "training").await;

    let all = tl
        .ok(
            &t,
            "projects.get_all_ex",
            json!({"include_stats": true, "search_hidden": true}),
        )
        .await;
    let by_id = |id: &str| -> Value {
        all["projects"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id)
            .unwrap_or_else(|| panic!("{id} missing: {all}"))
            .clone()
    };
    let stats = by_id(&top)["stats"]["active"].clone();
    let counts = &stats["status_count"];
    assert_eq!(counts["created"], 1, "{stats}");
    assert_eq!(counts["in_progress"], 1, "{stats}");
    assert_eq!(counts["completed"], 1, "{stats}");
    assert_eq!(counts["failed"], 1, "{stats}");
    assert_eq!(counts["queued"], 0, "{stats}");
    assert_eq!(stats["total_tasks"], 4, "{stats}");
    assert_eq!(stats["type_count"]["testing"], 2, "{stats}");
    let sub_counts = by_id(&sub)["stats"]["active"]["status_count"].clone();
    assert_eq!(sub_counts["created"], 0, "{sub_counts}");
    assert_eq!(sub_counts["in_progress"], 1, "{sub_counts}");
    assert_eq!(
        by_id(&other)["stats"]["active"]["status_count"]["created"],
        1
    );

    // Both states: the archived task is counted apart.
    let both = tl
        .ok(
            &t,
            "projects.get_all_ex",
            json!({"id": [top], "include_stats": true, "stats_for_state": ""}),
        )
        .await;
    let stats = &both["projects"][0]["stats"];
    assert_eq!(stats["archived"]["status_count"]["created"], 1, "{stats}");
    assert_eq!(stats["active"]["status_count"]["created"], 1, "{stats}");

    // Without include_stats get_all_ex is get_all.
    let plain = tl.ok(&t, "projects.get_all_ex", json!({"id": [top]})).await;
    assert!(plain["projects"][0].get("stats").is_none(), "{plain}");
    tl.stop().await;
}
