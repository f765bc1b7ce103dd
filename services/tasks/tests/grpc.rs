//! The service over gRPC: the generated client, a real socket, SQLite and
//! PostgreSQL. Bad input gets its stable code and changes nothing.

mod common;

use std::collections::HashMap;

use prost_types::FieldMask;
use tasklab_config::Settings;
use tasklab_error::{Error, ErrorCode};
use tasklab_proto::common::v1 as common_pb;
use tasklab_proto::tasks::v1 as pb;
use tasklab_proto::tasks::v1::tasks_service_client::TasksServiceClient;
use tasklab_server::Server;
use tonic::transport::Channel;

on_both_backends!(
    create_read_list,
    lifecycle,
    bad_input_has_stable_codes_and_changes_nothing
);

type Client = TasksServiceClient<Channel>;

async fn start(url: &str) -> (tasklab_testkit::Running, Client) {
    let server = tasklab_tasks::mount(
        Server::new(&tasklab_testkit::test_grpc_settings()),
        &Settings::default(),
        url,
    )
    .await
    .expect("mount the tasks service");
    let running = tasklab_testkit::spawn(server).await;
    let client = TasksServiceClient::new(running.channel().await);
    (running, client)
}

fn as_user<T>(user: &str, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("tasklab-user-id", user.parse().unwrap());
    req
}

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

fn typed(name: &str, value: &str) -> (String, common_pb::TypedValue) {
    (
        name.to_owned(),
        common_pb::TypedValue {
            name: name.to_owned(),
            value: value.to_owned(),
            r#type: "str".into(),
            description: String::new(),
        },
    )
}

fn create_request(name: &str) -> pb::CreateTaskRequest {
    pb::CreateTaskRequest {
        name: name.to_owned(),
        project_id: "proj".into(),
        r#type: pb::TaskType::Testing as i32,
        comment: "made over grpc".into(),
        tags: vec!["b".into(), "a".into()],
        system_tags: vec!["development".into()],
        script: Some(pb::Script {
            repository: "https://example.invalid/r.git".into(),
            entry_point: "train.py".into(),
            requirements: Some(pb::Requirements {
                pip: "torch\n".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        container: Some(pb::Container {
            image: "python:3.12".into(),
            ..Default::default()
        }),
        execution: Some(pb::Execution {
            framework: "PyTorch".into(),
            ..Default::default()
        }),
        output_destination: "s3://bucket".into(),
        hyperparams: HashMap::from([(
            "Args".to_owned(),
            pb::HyperParamSection {
                params: HashMap::from([typed("lr", "0.1")]),
            },
        )]),
        configuration: HashMap::from([typed("General", "a: 1")]),
        user_properties: HashMap::from([typed("owner", "team")]),
        runtime: Some(prost_types::Struct {
            fields: [(
                "progress".to_owned(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue("0".into())),
                },
            )]
            .into_iter()
            .collect(),
        }),
        models: Some(pb::TaskModels {
            input: vec![pb::ModelRef {
                name: "base".into(),
                model_id: "m1".into(),
                updated: None,
            }],
            output: vec![],
        }),
        ..Default::default()
    }
}

async fn get(client: &mut Client, id: &str) -> pb::Task {
    client
        .get_task(pb::GetTaskRequest {
            id: id.to_owned(),
            read_mask: None,
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap()
}

fn code(status: tonic::Status) -> ErrorCode {
    Error::from_status(&status).code()
}

async fn create_read_list(url: &str) {
    let (running, mut client) = start(url).await;
    let created = client
        .create_task(as_user("alice", create_request("grpc task")))
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(created.id.len(), 32);
    assert_eq!(created.status, pb::TaskStatus::Created as i32);
    assert_eq!(created.r#type, pb::TaskType::Testing as i32);
    assert_eq!(
        (created.user.as_str(), created.tags.clone()),
        ("alice", vec!["a".to_owned(), "b".to_owned()])
    );
    assert_eq!(created.hyperparams["Args"].params["lr"].name, "lr");
    assert_eq!(created.output.as_ref().unwrap().destination, "s3://bucket");
    assert!(created.models.as_ref().unwrap().input[0].updated.is_some());
    assert_eq!(get(&mut client, &created.id).await, created);

    // Projection: the SDK's abort monitor asks for two fields.
    let small = client
        .get_task(pb::GetTaskRequest {
            id: created.id.clone(),
            read_mask: mask(&["status", "status_message", "script.entry_point"]),
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(small.status, pb::TaskStatus::Created as i32);
    assert_eq!(small.name, "");
    assert!(small.hyperparams.is_empty() && small.output.is_none() && small.created.is_none());
    let script = small.script.unwrap();
    assert_eq!(
        (script.entry_point.as_str(), script.repository.as_str()),
        ("train.py", "")
    );

    let second = client
        .create_task(as_user("bob", create_request("grpc task")))
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    let by_name = client
        .get_task_by_name(pb::GetTaskByNameRequest {
            project_id: "proj".into(),
            name: " grpc task ".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(by_name.id, second.id, "the last modified task of that name");

    for i in 0..7 {
        let mut req = create_request(&format!("listed {i}"));
        req.tags = vec![if i % 2 == 0 {
            "even".into()
        } else {
            "odd".into()
        }];
        client.create_task(as_user("carol", req)).await.unwrap();
    }
    let list = |token: String| pb::ListTasksRequest {
        tags: Some(common_pb::TagFilter {
            any_of: vec!["even".into()],
            ..Default::default()
        }),
        statuses: vec![pb::TaskStatus::Created as i32],
        name_regex: "^listed".into(),
        users: vec!["carol".into()],
        page: Some(common_pb::PageRequest {
            page_size: 3,
            page_token: token,
            include_total: true,
        }),
        order_by: vec![common_pb::OrderBy {
            field: "name".into(),
            descending: true,
        }],
        read_mask: mask(&["id", "name"]),
        ..Default::default()
    };
    let first = client
        .list_tasks(list(String::new()))
        .await
        .unwrap()
        .into_inner();
    let page = first.page.unwrap();
    assert_eq!(page.total_size, Some(4));
    assert_eq!(
        first
            .tasks
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        vec!["listed 6", "listed 4", "listed 2"]
    );
    assert!(
        first
            .tasks
            .iter()
            .all(|t| t.status == 0 && t.script.is_none()),
        "projection applies to lists"
    );
    let rest = client
        .list_tasks(list(page.next_page_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        rest.tasks
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        vec!["listed 0"]
    );
    assert_eq!(rest.page.unwrap().next_page_token, "");

    let stats = client
        .get_task_stats(pb::GetTaskStatsRequest {
            groups: vec![pb::TaskStatsGroup {
                key: "k".into(),
                project_ids: vec!["proj".into()],
                include_subprojects: false,
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.groups[0].total, 9);
    assert_eq!(
        stats.groups[0].by_type,
        vec![pb::TypeCount {
            r#type: pb::TaskType::Testing as i32,
            count: 9
        }]
    );
    running.stop().await.unwrap();
}

async fn lifecycle(url: &str) {
    let (running, mut client) = start(url).await;
    let id = client
        .create_task(as_user("u", create_request("life")))
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap()
        .id;
    let options = |force: bool| {
        Some(pb::StatusChangeOptions {
            force,
            ..Default::default()
        })
    };

    let q = client
        .enqueue_task(pb::EnqueueTaskRequest {
            id: id.clone(),
            queue_id: "q1".into(),
            options: options(false),
            read_mask: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        q.task.unwrap().enqueue_status,
        pb::TaskStatus::Created as i32
    );
    let s = client
        .start_task(pb::StartTaskRequest {
            id: id.clone(),
            options: options(true),
            worker: "host:0".into(),
            read_mask: mask(&["status", "last_worker"]),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (s.previous_status, s.left_queue_id.as_str()),
        (pb::TaskStatus::Queued as i32, "q1")
    );
    let t = s.task.unwrap();
    assert_eq!(
        (t.status, t.last_worker.as_str(), t.name.as_str()),
        (pb::TaskStatus::InProgress as i32, "host:0", "")
    );

    let stop = client
        .request_stop(as_user(
            "ui",
            pb::RequestStopRequest {
                id: id.clone(),
                options: None,
                read_mask: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(stop.stopping, "a live worker is asked to stop");
    assert_eq!(stop.task.unwrap().status_message, "stopping");
    let stopped = client
        .stop_task(pb::StopTaskRequest {
            id: id.clone(),
            options: options(false),
            read_mask: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stopped.task.unwrap().status, pb::TaskStatus::Stopped as i32);

    client
        .set_models(pb::SetModelsRequest {
            id: id.clone(),
            output: vec![pb::ModelRef {
                name: "model".into(),
                model_id: "m7".into(),
                updated: None,
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    let reset = client
        .reset_task(pb::ResetTaskRequest {
            id: id.clone(),
            options: None,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let cleanup = reset.cleanup.unwrap();
    assert_eq!(cleanup.output_model_ids, vec!["m7"]);
    assert!(cleanup.delete_events && cleanup.delete_output_artifacts);
    let t = reset.task.unwrap();
    assert_eq!(t.status, pb::TaskStatus::Created as i32);
    assert!(t.started.is_none() && t.completed.is_none());

    let clone = client
        .clone_task(as_user(
            "cloner",
            pb::CloneTaskRequest {
                source_id: id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(
        (
            clone.name.as_str(),
            clone.parent_id.as_str(),
            clone.user.as_str()
        ),
        ("Clone Of life", id.as_str(), "cloner")
    );

    let ping = client
        .ping_task(pb::PingTaskRequest {
            id: clone.id.clone(),
            worker: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ping.updated, 1);
    assert_eq!(
        get(&mut client, &clone.id).await.last_update,
        ping.last_update
    );

    let deleted = client
        .delete_task(pb::DeleteTaskRequest {
            id: clone.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (deleted.deleted, deleted.previous_status),
        (1, pb::TaskStatus::Created as i32)
    );
    let err = client
        .get_task(pb::GetTaskRequest {
            id: clone.id,
            read_mask: None,
        })
        .await
        .unwrap_err();
    assert_eq!(code(err), ErrorCode::TaskNotFound);
    running.stop().await.unwrap();
}

async fn bad_input_has_stable_codes_and_changes_nothing(url: &str) {
    let (running, mut client) = start(url).await;
    let count = |client: &mut Client| {
        let mut client = client.clone();
        async move {
            let req = pb::ListTasksRequest {
                include_archived: true,
                include_hidden: true,
                ..Default::default()
            };
            client
                .list_tasks(req)
                .await
                .unwrap()
                .into_inner()
                .tasks
                .len()
        }
    };
    let ghost = "0".repeat(32);

    // Unknown ids.
    let err = client
        .get_task(pb::GetTaskRequest {
            id: ghost.clone(),
            read_mask: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), code(err)),
        (tonic::Code::NotFound, ErrorCode::TaskNotFound)
    );
    let err = client
        .start_task(pb::StartTaskRequest {
            id: ghost.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(code(err), ErrorCode::TaskNotFound);
    let err = client
        .add_tags(pb::AddTagsRequest {
            ids: vec![ghost.clone()],
            tags: vec!["t".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(code(err), ErrorCode::TaskNotFound);
    let err = client
        .get_task(pb::GetTaskRequest {
            id: String::new(),
            read_mask: None,
        })
        .await
        .unwrap_err();
    assert_eq!(code(err), ErrorCode::MissingField);

    // A short name, an unknown type, a mismatched value name: nothing created.
    let err = client.create_task(create_request("ab")).await.unwrap_err();
    assert_eq!(
        (err.code(), code(err)),
        (tonic::Code::InvalidArgument, ErrorCode::InvalidTaskName)
    );
    let mut req = create_request("typed");
    req.r#type = 99;
    assert_eq!(
        code(client.create_task(req).await.unwrap_err()),
        ErrorCode::InvalidTaskType
    );
    let mut req = create_request("mismatch");
    req.configuration.get_mut("General").unwrap().name = "Other".into();
    assert_eq!(
        code(client.create_task(req).await.unwrap_err()),
        ErrorCode::InvalidArgument
    );
    let mut req = create_request("masked");
    req.read_mask = mask(&["no_such_field"]);
    assert_eq!(
        code(client.create_task(req).await.unwrap_err()),
        ErrorCode::InvalidArgument
    );
    assert_eq!(count(&mut client).await, 0);

    // Invalid lists.
    let list = |f: fn(&mut pb::ListTasksRequest)| {
        let mut req = pb::ListTasksRequest::default();
        f(&mut req);
        req
    };
    let err = client
        .list_tasks(list(|r| r.name_regex = "a(".into()))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), code(err)),
        (tonic::Code::InvalidArgument, ErrorCode::InvalidRegex)
    );
    assert_eq!(
        code(
            client
                .list_tasks(list(|r| r.search_text = "*".into()))
                .await
                .unwrap_err()
        ),
        ErrorCode::InvalidRegex
    );
    assert_eq!(
        code(
            client
                .list_tasks(list(|r| r.order_by = vec![common_pb::OrderBy {
                    field: "user".into(),
                    descending: false
                }]))
                .await
                .unwrap_err()
        ),
        ErrorCode::InvalidOrderBy
    );
    assert_eq!(
        code(
            client
                .list_tasks(list(|r| r.page = Some(common_pb::PageRequest {
                    page_token: "x".into(),
                    ..Default::default()
                })))
                .await
                .unwrap_err()
        ),
        ErrorCode::InvalidPageToken
    );
    assert_eq!(
        code(
            client
                .list_tasks(list(|r| r.include_subprojects = true))
                .await
                .unwrap_err()
        ),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        code(
            client
                .list_tasks(list(|r| r.statuses = vec![0]))
                .await
                .unwrap_err()
        ),
        ErrorCode::InvalidArgument
    );

    // Input edits of a running task need force; the task stays as it was.
    let id = client
        .create_task(create_request("running"))
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap()
        .id;
    client
        .start_task(pb::StartTaskRequest {
            id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let before = get(&mut client, &id).await;
    let edit = |force: bool| pb::EditTaskRequest {
        id: id.clone(),
        script: Some(pb::Script {
            entry_point: "other.py".into(),
            ..Default::default()
        }),
        update_mask: mask(&["script"]),
        force,
        ..Default::default()
    };
    let err = client.edit_task(edit(false)).await.unwrap_err();
    assert_eq!(
        (err.code(), code(err)),
        (tonic::Code::FailedPrecondition, ErrorCode::TaskNotDraft)
    );
    let err = client
        .set_hyper_params(pb::SetHyperParamsRequest {
            id: id.clone(),
            hyperparams: HashMap::from([(
                "Args".to_owned(),
                pb::HyperParamSection {
                    params: HashMap::from([typed("lr", "9")]),
                },
            )]),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(code(err), ErrorCode::TaskNotDraft);
    let err = client
        .edit_task(pb::EditTaskRequest {
            id: id.clone(),
            update_mask: mask(&["nope"]),
            force: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(code(err), ErrorCode::InvalidArgument);
    let err = client
        .update_task(pb::UpdateTaskRequest {
            id: id.clone(),
            name: "x".into(),
            update_mask: mask(&["name"]),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(code(err), ErrorCode::InvalidTaskName);
    let err = client
        .close_task(pb::CloseTaskRequest {
            id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let detail = Error::from_status(&err);
    assert_eq!(detail.code(), ErrorCode::InvalidTaskStatus);
    assert_eq!(
        (
            detail.fields()["current_status"].as_str(),
            detail.fields()["new_status"].as_str()
        ),
        ("in_progress", "closed")
    );
    let err = client
        .stop_task(pb::StopTaskRequest {
            id: id.clone(),
            options: Some(pb::StatusChangeOptions {
                expected_status: pb::TaskStatus::Queued as i32,
                ..Default::default()
            }),
            read_mask: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), code(err)),
        (tonic::Code::Aborted, ErrorCode::TaskStatusChanged)
    );
    assert_eq!(
        get(&mut client, &id).await,
        before,
        "refused requests changed nothing"
    );
    // With force the same edit goes through.
    assert_eq!(
        client
            .edit_task(edit(true))
            .await
            .unwrap()
            .into_inner()
            .updated,
        1
    );

    // Any change to a published task.
    client
        .complete_task(pb::CompleteTaskRequest {
            id: id.clone(),
            publish: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let published = get(&mut client, &id).await;
    assert_eq!(published.status, pb::TaskStatus::Published as i32);
    let refusals = vec![
        client.edit_task(edit(true)).await.map(drop),
        client
            .update_task(pb::UpdateTaskRequest {
                id: id.clone(),
                comment: "c".into(),
                update_mask: mask(&["comment"]),
                ..Default::default()
            })
            .await
            .map(drop),
        client
            .set_requirements(pb::SetRequirementsRequest {
                id: id.clone(),
                force: true,
                ..Default::default()
            })
            .await
            .map(drop),
        client
            .set_user_properties(pb::SetUserPropertiesRequest {
                id: id.clone(),
                user_properties: HashMap::from([typed("k", "v")]),
                ..Default::default()
            })
            .await
            .map(drop),
        client
            .reset_task(pb::ResetTaskRequest {
                id: id.clone(),
                ..Default::default()
            })
            .await
            .map(drop),
        client
            .start_task(pb::StartTaskRequest {
                id: id.clone(),
                options: Some(pb::StatusChangeOptions {
                    force: true,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .map(drop),
        client
            .delete_task(pb::DeleteTaskRequest {
                id: id.clone(),
                ..Default::default()
            })
            .await
            .map(drop),
    ];
    for r in refusals {
        let err = r.unwrap_err();
        assert_eq!(
            (err.code(), code(err)),
            (tonic::Code::FailedPrecondition, ErrorCode::TaskPublished)
        );
    }
    assert_eq!(
        get(&mut client, &id).await,
        published,
        "a published task did not change"
    );
    running.stop().await.unwrap();
}
