//! The projects service through its generated gRPC client, on a real
//! socket, on SQLite and on PostgreSQL (skipped loudly without a server).

use prost_types::FieldMask;
use tasklab_config::Settings;
use tasklab_error::{Error, ErrorCode};
use tasklab_proto::common::v1::{OrderBy, PageRequest, TagFilter};
use tasklab_proto::projects::v1::projects_service_client::ProjectsServiceClient;
use tasklab_proto::projects::v1::{
    CreateProjectRequest, DeleteProjectRequest, GetProjectByPathRequest, GetProjectRequest,
    ListProjectsRequest, MergeProjectRequest, MoveProjectRequest, Project, UpdateProjectRequest,
};
use tasklab_server::Server;
use tasklab_testkit::Running;
use tonic::transport::Channel;

type Client = ProjectsServiceClient<Channel>;

macro_rules! on_both {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[tokio::test]
            async fn sqlite() {
                let db = tasklab_db::testing::TestDb::sqlite();
                super::$test(&db.url).await;
            }

            #[tokio::test]
            async fn postgres() {
                let name = concat!("projects_grpc_", stringify!($test));
                if let Some(db) = tasklab_db::testing::TestDb::postgres(name).await {
                    super::$test(&db.url).await;
                }
            }
        }
    )*};
}

on_both!(
    create_nested_then_read_it_back,
    lists_filter_order_and_page,
    rename_move_merge_and_delete,
    bad_input_has_a_stable_code_and_changes_nothing,
);

async fn start(url: &str) -> (Running, Client) {
    let server = Server::new(&tasklab_testkit::test_grpc_settings());
    let server = tasklab_projects::mount(server, &Settings::default(), url)
        .await
        .unwrap();
    let running = tasklab_testkit::spawn(server).await;
    let client = ProjectsServiceClient::new(running.channel().await);
    (running, client)
}

async fn create(client: &mut Client, path: &str) -> Project {
    let request = CreateProjectRequest {
        path: path.into(),
        ..Default::default()
    };
    client
        .create_project(request)
        .await
        .unwrap()
        .into_inner()
        .project
        .unwrap()
}

async fn by_path(client: &mut Client, path: &str) -> Project {
    let request = GetProjectByPathRequest {
        path: path.into(),
        read_mask: None,
    };
    client
        .get_project_by_path(request)
        .await
        .unwrap()
        .into_inner()
        .project
        .unwrap()
}

/// Every project, hidden and archived included, in path order.
async fn everything(client: &mut Client) -> Vec<Project> {
    let request = ListProjectsRequest {
        include_hidden: true,
        include_archived: true,
        page: Some(PageRequest {
            page_size: 1000,
            ..Default::default()
        }),
        ..Default::default()
    };
    let page = client.list_projects(request).await.unwrap().into_inner();
    assert!(page.page.unwrap().next_page_token.is_empty());
    page.projects
}

fn paths(projects: &[Project]) -> Vec<&str> {
    projects.iter().map(|p| p.path.as_str()).collect()
}

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

fn code(status: tonic::Status) -> ErrorCode {
    Error::from_status(&status).code()
}

async fn create_nested_then_read_it_back(url: &str) {
    let (_server, mut client) = start(url).await;
    let mut request = tonic::Request::new(CreateProjectRequest {
        path: " main / sub /subsub".into(),
        description: "the leaf".into(),
        overview: "# Overview".into(),
        tags: vec!["b".into(), "a".into(), "a".into()],
        system_tags: vec!["hidden".into()],
        default_output_destination: "s3://bucket/prefix".into(),
        allow_existing: false,
    });
    request
        .metadata_mut()
        .insert("tasklab-user-id", "alice".parse().unwrap());
    let created = client.create_project(request).await.unwrap().into_inner();
    assert!(created.created);
    let leaf = created.project.unwrap();
    assert_eq!(leaf.path, "main/sub/subsub");
    assert_eq!(leaf.name, "subsub");
    assert_eq!(leaf.tags, ["a", "b"]);
    assert_eq!(leaf.system_tags, ["hidden"]);
    assert_eq!(leaf.user, "alice");
    assert_eq!(leaf.id.len(), 32);
    assert!(
        leaf.id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    assert!(leaf.created.is_some() && leaf.created == leaf.last_update);

    let main = by_path(&mut client, "main").await;
    let sub = by_path(&mut client, "main/sub").await;
    assert_eq!(
        created.created_parent_ids,
        [main.id.clone(), sub.id.clone()]
    );
    assert_eq!(main.parent_id, "");
    assert_eq!(sub.parent_id, main.id);
    assert_eq!(leaf.parent_id, sub.id);
    assert!(main.description.is_empty() && main.tags.is_empty() && main.system_tags.is_empty());

    let got = client
        .get_project(GetProjectRequest {
            id: leaf.id.clone(),
            read_mask: None,
        })
        .await
        .unwrap()
        .into_inner()
        .project
        .unwrap();
    assert_eq!(got, leaf, "what was returned is what was stored");
    assert_eq!(by_path(&mut client, "main/sub/subsub").await, leaf);

    let masked = client
        .get_project(GetProjectRequest {
            id: leaf.id.clone(),
            read_mask: mask(&["id", "path"]),
        })
        .await
        .unwrap()
        .into_inner()
        .project
        .unwrap();
    assert_eq!(
        masked,
        Project {
            id: leaf.id.clone(),
            path: leaf.path.clone(),
            ..Project::default()
        }
    );

    // ClearML's `Task.init` lookup: exact match on the path, hidden included.
    let found = client
        .list_projects(ListProjectsRequest {
            path_regex: "^main/sub/subsub$".into(),
            include_hidden: true,
            read_mask: mask(&["id"]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .projects;
    assert_eq!(
        found,
        [Project {
            id: leaf.id.clone(),
            ..Project::default()
        }]
    );

    // Get-or-create returns the existing project.
    let again = client
        .create_project(CreateProjectRequest {
            path: "main/sub/subsub".into(),
            description: "ignored".into(),
            allow_existing: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!again.created);
    assert!(again.created_parent_ids.is_empty());
    assert_eq!(again.project.unwrap(), leaf);
}

async fn lists_filter_order_and_page(url: &str) {
    let (_server, mut client) = start(url).await;
    for path in ["a/b/c", "a/d", "e", ".datasets/x"] {
        create(&mut client, path).await;
    }
    let hidden = by_path(&mut client, ".datasets").await;
    let archive = UpdateProjectRequest {
        id: hidden.id.clone(),
        system_tags: vec!["hidden".into()],
        update_mask: mask(&["system_tags"]),
        ..Default::default()
    };
    client.update_project(archive).await.unwrap();
    let e = by_path(&mut client, "e").await;
    let tag = UpdateProjectRequest {
        id: e.id.clone(),
        tags: vec!["red".into()],
        system_tags: vec!["archived".into()],
        update_mask: mask(&["tags", "system_tags"]),
        ..Default::default()
    };
    client.update_project(tag).await.unwrap();
    let a = by_path(&mut client, "a").await;

    let list = |request: ListProjectsRequest| {
        let mut client = client.clone();
        async move {
            let page = client.list_projects(request).await.unwrap().into_inner();
            page.projects
                .into_iter()
                .map(|p| p.path)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        list(ListProjectsRequest::default()).await,
        [".datasets/x", "a", "a/b", "a/b/c", "a/d"]
    );
    let shallow = ListProjectsRequest {
        shallow: true,
        ..Default::default()
    };
    assert_eq!(list(shallow).await, ["a"]);
    let under_a = ListProjectsRequest {
        parent_id: a.id.clone(),
        ..Default::default()
    };
    assert_eq!(list(under_a).await, ["a/b", "a/b/c", "a/d"]);
    let children = ListProjectsRequest {
        parent_id: a.id.clone(),
        shallow: true,
        ..Default::default()
    };
    assert_eq!(list(children).await, ["a/b", "a/d"]);
    let with_archived = ListProjectsRequest {
        shallow: true,
        include_archived: true,
        ..Default::default()
    };
    assert_eq!(list(with_archived).await, ["a", "e"]);
    let red = ListProjectsRequest {
        tags: Some(TagFilter {
            any_of: vec!["red".into()],
            ..Default::default()
        }),
        include_archived: true,
        ..Default::default()
    };
    assert_eq!(list(red).await, ["e"]);
    let by_name = ListProjectsRequest {
        name_regex: "^[bcx]$".into(),
        ..Default::default()
    };
    assert_eq!(list(by_name).await, [".datasets/x", "a/b", "a/b/c"]);
    let unknown_parent = ListProjectsRequest {
        parent_id: "f".repeat(32),
        ..Default::default()
    };
    assert!(list(unknown_parent).await.is_empty());

    // Paging by creation time, newest first, two at a time, with a total.
    let mut token = String::new();
    let mut seen = Vec::new();
    loop {
        let request = ListProjectsRequest {
            include_hidden: true,
            include_archived: true,
            order_by: vec![OrderBy {
                field: "created".into(),
                descending: true,
            }],
            page: Some(PageRequest {
                page_size: 2,
                page_token: token,
                include_total: true,
            }),
            ..Default::default()
        };
        let page = client.list_projects(request).await.unwrap().into_inner();
        let info = page.page.unwrap();
        assert_eq!(info.total_size, Some(7));
        assert!(page.projects.len() <= 2);
        seen.extend(page.projects);
        if info.next_page_token.is_empty() {
            break;
        }
        token = info.next_page_token;
    }
    assert_eq!(seen.len(), 7);
    for pair in seen.windows(2) {
        let (x, y) = (&pair[0], &pair[1]);
        let (tx, ty) = (x.created.unwrap(), y.created.unwrap());
        let key = |t: prost_types::Timestamp| (t.seconds, t.nanos);
        assert!(
            key(tx) > key(ty) || (key(tx) == key(ty) && x.id < y.id),
            "{} then {}",
            x.path,
            y.path
        );
    }
}

async fn rename_move_merge_and_delete(url: &str) {
    let (_server, mut client) = start(url).await;
    for path in [
        "main/sub/subsub",
        "mainly",
        "other/x",
        "src/s1/deep",
        "dst/keep",
    ] {
        create(&mut client, path).await;
    }
    let main = by_path(&mut client, "main").await;
    let subsub = by_path(&mut client, "main/sub/subsub").await;

    // Rename: the subtree's paths follow, ids stay.
    let renamed = client
        .update_project(UpdateProjectRequest {
            id: main.id.clone(),
            name: "top".into(),
            description: "described".into(),
            update_mask: mask(&["name", "description"]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(renamed.updated, 3);
    let top = renamed.project.unwrap();
    assert_eq!(
        (top.id.as_str(), top.path.as_str()),
        (main.id.as_str(), "top")
    );
    assert_eq!(top.description, "described");
    assert_eq!(by_path(&mut client, "top/sub/subsub").await.id, subsub.id);
    assert_eq!(by_path(&mut client, "mainly").await.path, "mainly");

    // Move under another project, then back to the root.
    let other = by_path(&mut client, "other").await;
    let sub = by_path(&mut client, "top/sub").await;
    let moved = client
        .move_project(MoveProjectRequest {
            id: sub.id.clone(),
            new_parent_id: other.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(moved.updated, 2);
    assert_eq!(moved.project.unwrap().path, "other/sub");
    assert_eq!(by_path(&mut client, "other/sub/subsub").await.id, subsub.id);
    let moved = client
        .move_project(MoveProjectRequest {
            id: sub.id.clone(),
            new_parent_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(moved.project.unwrap().parent_id, "");

    // Merge: validate first, then do it.
    let src = by_path(&mut client, "src").await;
    let dst = by_path(&mut client, "dst").await;
    let s1 = by_path(&mut client, "src/s1").await;
    let before = everything(&mut client).await;
    let check = client
        .merge_project(MergeProjectRequest {
            source_id: src.id.clone(),
            destination_id: dst.id.clone(),
            validate_only: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!check.source_deleted);
    assert_eq!(check.moved_project_ids, std::slice::from_ref(&s1.id));
    assert_eq!(everything(&mut client).await, before);
    let merged = client
        .merge_project(MergeProjectRequest {
            source_id: src.id.clone(),
            destination_id: dst.id.clone(),
            validate_only: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(merged.source_deleted);
    assert_eq!(merged.destination.unwrap().id, dst.id);
    assert_eq!(by_path(&mut client, "dst/s1/deep").await.parent_id, s1.id);

    // Delete: refused while the caller counted contents, unless forced.
    let refused = client
        .delete_project(DeleteProjectRequest {
            id: dst.id.clone(),
            contents_count: 4,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(code(refused), ErrorCode::ProjectNotEmpty);
    let deleted = client
        .delete_project(DeleteProjectRequest {
            id: dst.id.clone(),
            force: true,
            contents_count: 4,
            delete_contents: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.deleted, 4);
    assert_eq!(deleted.deleted_project_ids[0], dst.id);
    assert_eq!(
        paths(&everything(&mut client).await),
        ["mainly", "other", "other/x", "sub", "sub/subsub", "top"]
    );
    let again = client
        .delete_project(DeleteProjectRequest {
            id: dst.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(code(again), ErrorCode::ProjectNotFound);
}

async fn bad_input_has_a_stable_code_and_changes_nothing(url: &str) {
    let (_server, mut client) = start(url).await;
    for path in ["a/b/c", "a/x", "q/b"] {
        create(&mut client, path).await;
    }
    let a = by_path(&mut client, "a").await;
    let b = by_path(&mut client, "a/b").await;
    let c = by_path(&mut client, "a/b/c").await;
    let q = by_path(&mut client, "q").await;
    let unknown = "0".repeat(32);
    let before = everything(&mut client).await;
    let c_ = &mut client;

    // (what, status, expected code, expected gRPC code)
    let mut checks: Vec<(&str, tonic::Status, ErrorCode, tonic::Code)> = Vec::new();
    let mut check = |what: &'static str, status: tonic::Status, expected: ErrorCode, grpc| {
        checks.push((what, status, expected, grpc));
    };
    use tonic::Code::{AlreadyExists, FailedPrecondition, InvalidArgument, NotFound};

    let create_req = |path: &str| CreateProjectRequest {
        path: path.into(),
        ..Default::default()
    };
    check(
        "empty path",
        c_.create_project(create_req("")).await.unwrap_err(),
        ErrorCode::InvalidProjectName,
        InvalidArgument,
    );
    check(
        "doubled slash",
        c_.create_project(create_req("a//z")).await.unwrap_err(),
        ErrorCode::InvalidProjectName,
        InvalidArgument,
    );
    check(
        "trailing slash",
        c_.create_project(create_req("z/")).await.unwrap_err(),
        ErrorCode::InvalidProjectName,
        InvalidArgument,
    );
    check(
        "existing path",
        c_.create_project(create_req("a/b")).await.unwrap_err(),
        ErrorCode::ProjectNameTaken,
        AlreadyExists,
    );

    let get = |id: &str, read_mask| GetProjectRequest {
        id: id.into(),
        read_mask,
    };
    check(
        "unknown id",
        c_.get_project(get(&unknown, None)).await.unwrap_err(),
        ErrorCode::ProjectNotFound,
        NotFound,
    );
    check(
        "empty id",
        c_.get_project(get("", None)).await.unwrap_err(),
        ErrorCode::MissingField,
        InvalidArgument,
    );
    check(
        "bad read mask",
        c_.get_project(get(&a.id, mask(&["id", "bogus"])))
            .await
            .unwrap_err(),
        ErrorCode::InvalidArgument,
        InvalidArgument,
    );
    let by_path = |path: &str| GetProjectByPathRequest {
        path: path.into(),
        read_mask: None,
    };
    check(
        "malformed path",
        c_.get_project_by_path(by_path("/a")).await.unwrap_err(),
        ErrorCode::InvalidProjectName,
        InvalidArgument,
    );
    check(
        "unknown path",
        c_.get_project_by_path(by_path("a/zzz")).await.unwrap_err(),
        ErrorCode::ProjectNotFound,
        NotFound,
    );

    let list = |f: fn(&mut ListProjectsRequest)| {
        let mut request = ListProjectsRequest::default();
        f(&mut request);
        request
    };
    check(
        "invalid regex",
        c_.list_projects(list(|r| r.path_regex = "(".into()))
            .await
            .unwrap_err(),
        ErrorCode::InvalidRegex,
        InvalidArgument,
    );
    check(
        "invalid name regex",
        c_.list_projects(list(|r| r.name_regex = "[z-a]".into()))
            .await
            .unwrap_err(),
        ErrorCode::InvalidRegex,
        InvalidArgument,
    );
    check(
        "bad ordering",
        c_.list_projects(list(|r| {
            r.order_by = vec![OrderBy {
                field: "status".into(),
                descending: false,
            }]
        }))
        .await
        .unwrap_err(),
        ErrorCode::InvalidOrderBy,
        InvalidArgument,
    );
    check(
        "bad page token",
        c_.list_projects(list(|r| {
            r.page = Some(PageRequest {
                page_token: "not-a-token".into(),
                ..Default::default()
            })
        }))
        .await
        .unwrap_err(),
        ErrorCode::InvalidPageToken,
        InvalidArgument,
    );
    check(
        "bad list mask",
        c_.list_projects(list(|r| r.read_mask = mask(&["execution.queue"])))
            .await
            .unwrap_err(),
        ErrorCode::InvalidArgument,
        InvalidArgument,
    );

    let update = |id: &str, name: &str, paths: &[&str]| UpdateProjectRequest {
        id: id.into(),
        name: name.into(),
        description: "must not be written".into(),
        update_mask: mask(paths),
        ..Default::default()
    };
    check(
        "update unknown id",
        c_.update_project(update(&unknown, "n", &["name"]))
            .await
            .unwrap_err(),
        ErrorCode::ProjectNotFound,
        NotFound,
    );
    check(
        "rename collides",
        c_.update_project(update(&b.id, "x", &["name", "description"]))
            .await
            .unwrap_err(),
        ErrorCode::ProjectNameTaken,
        AlreadyExists,
    );
    check(
        "rename with slash",
        c_.update_project(update(&b.id, "y/z", &["name"]))
            .await
            .unwrap_err(),
        ErrorCode::InvalidProjectName,
        InvalidArgument,
    );
    check(
        "rename to empty",
        c_.update_project(update(&b.id, "  ", &["name"]))
            .await
            .unwrap_err(),
        ErrorCode::InvalidProjectName,
        InvalidArgument,
    );
    check(
        "empty update mask",
        c_.update_project(update(&b.id, "n", &[]))
            .await
            .unwrap_err(),
        ErrorCode::InvalidArgument,
        InvalidArgument,
    );
    check(
        "output-only mask path",
        c_.update_project(update(&b.id, "n", &["description", "user"]))
            .await
            .unwrap_err(),
        ErrorCode::InvalidArgument,
        InvalidArgument,
    );

    let mv = |id: &str, parent: &str| MoveProjectRequest {
        id: id.into(),
        new_parent_id: parent.into(),
    };
    check(
        "move under own child",
        c_.move_project(mv(&a.id, &c.id)).await.unwrap_err(),
        ErrorCode::InvalidArgument,
        InvalidArgument,
    );
    check(
        "move under itself",
        c_.move_project(mv(&a.id, &a.id)).await.unwrap_err(),
        ErrorCode::InvalidArgument,
        InvalidArgument,
    );
    check(
        "move unknown parent",
        c_.move_project(mv(&b.id, &unknown)).await.unwrap_err(),
        ErrorCode::ProjectNotFound,
        NotFound,
    );
    check(
        "move collides",
        c_.move_project(mv(&b.id, &q.id)).await.unwrap_err(),
        ErrorCode::ProjectNameTaken,
        AlreadyExists,
    );
    check(
        "move without id",
        c_.move_project(mv("", &q.id)).await.unwrap_err(),
        ErrorCode::MissingField,
        InvalidArgument,
    );

    let merge = |source: &str, destination: &str| MergeProjectRequest {
        source_id: source.into(),
        destination_id: destination.into(),
        validate_only: false,
    };
    check(
        "merge into itself",
        c_.merge_project(merge(&a.id, &a.id)).await.unwrap_err(),
        ErrorCode::InvalidArgument,
        InvalidArgument,
    );
    check(
        "merge into own child",
        c_.merge_project(merge(&a.id, &b.id)).await.unwrap_err(),
        ErrorCode::InvalidArgument,
        InvalidArgument,
    );
    check(
        "merge unknown source",
        c_.merge_project(merge(&unknown, &q.id)).await.unwrap_err(),
        ErrorCode::ProjectNotFound,
        NotFound,
    );
    check(
        "merge clash",
        c_.merge_project(merge(&a.id, &q.id)).await.unwrap_err(),
        ErrorCode::ProjectNameTaken,
        AlreadyExists,
    );

    let delete = |id: &str, contents_count| DeleteProjectRequest {
        id: id.into(),
        contents_count,
        ..Default::default()
    };
    check(
        "delete non-empty",
        c_.delete_project(delete(&a.id, 1)).await.unwrap_err(),
        ErrorCode::ProjectNotEmpty,
        FailedPrecondition,
    );
    check(
        "delete unknown",
        c_.delete_project(delete(&unknown, 0)).await.unwrap_err(),
        ErrorCode::ProjectNotFound,
        NotFound,
    );
    check(
        "delete without id",
        c_.delete_project(delete("", 0)).await.unwrap_err(),
        ErrorCode::MissingField,
        InvalidArgument,
    );

    for (what, status, expected, grpc) in checks {
        assert_eq!(status.code(), grpc, "{what}: {status:?}");
        assert_eq!(code(status), expected, "{what}");
    }
    assert_eq!(
        everything(&mut client).await,
        before,
        "no refused request changed anything"
    );
}
