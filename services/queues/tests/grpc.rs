//! The gRPC surface through the generated clients on a real socket.

use std::time::Duration;

use tasklab_config::{QueueBackendKind, Settings};
use tasklab_db::testing::TestDb;
use tasklab_error::{Error, ErrorCode};
use tasklab_proto::queues::v1::queues_service_client::QueuesServiceClient;
use tasklab_proto::queues::v1::workers_service_client::WorkersServiceClient;
use tasklab_proto::queues::v1::{self as pb, reconcile_entries_request::Part};
use tasklab_server::Server;
use tonic::transport::Channel;

async fn start(db: &TestDb) -> (tasklab_testkit::Running, Channel) {
    let settings = Settings::default();
    let server = tasklab_queues::mount(
        Server::new(&tasklab_testkit::test_grpc_settings()),
        &settings,
        &db.url,
    )
    .await
    .unwrap();
    let running = tasklab_testkit::spawn(server).await;
    let channel = running.channel().await;
    (running, channel)
}

fn reason(status: &tonic::Status) -> (ErrorCode, String) {
    let err = Error::from_status(status);
    (
        err.code(),
        err.fields().get("reason").cloned().unwrap_or_default(),
    )
}

async fn create(client: &mut QueuesServiceClient<Channel>, name: &str) -> String {
    client
        .create_queue(pb::CreateQueueRequest {
            name: name.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .queue
        .unwrap()
        .id
}

async fn length(client: &mut QueuesServiceClient<Channel>, q: &str) -> (u32, u32) {
    let r = client
        .get_queue_length(pb::GetQueueLengthRequest { queue_id: q.into() })
        .await
        .unwrap()
        .into_inner();
    (r.length, r.leased)
}

#[tokio::test]
async fn entries_pop_and_errors_over_grpc() {
    let db = TestDb::sqlite();
    let (running, channel) = start(&db).await;
    let mut client = QueuesServiceClient::new(channel.clone());
    let q1 = create(&mut client, "q1").await;
    let q2 = create(&mut client, "q2").await;

    let added = client
        .add_entry(pb::AddEntryRequest {
            queue_id: q1.clone(),
            task_id: "t1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(added.created);
    assert_eq!(added.entry.unwrap().position, Some(0));

    // A second add of a queued task elsewhere: stable code, nothing changed.
    let status = client
        .add_entry(pb::AddEntryRequest {
            queue_id: q2.clone(),
            task_id: "t1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        reason(&status),
        (ErrorCode::TaskAlreadyQueued, "task_already_queued".into())
    );
    assert_eq!(length(&mut client, &q2).await, (0, 0));

    let status = client
        .add_entry(pb::AddEntryRequest {
            queue_id: "ffffffffffffffffffffffffffffffff".into(),
            task_id: "t9".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(reason(&status).0, ErrorCode::QueueNotFound);

    let status = client
        .delete_queue(pb::DeleteQueueRequest {
            queue_id: q1.clone(),
            force: false,
        })
        .await
        .unwrap_err();
    assert_eq!(
        reason(&status),
        (ErrorCode::QueueNotEmpty, "queue_not_empty".into())
    );
    assert_eq!(length(&mut client, &q1).await, (1, 0));

    let status = client
        .get_queue(pb::GetQueueRequest {
            queue_id: q1.clone(),
            read_mask: Some(prost_types::FieldMask {
                paths: vec!["nope".into()],
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let masked = client
        .get_queue(pb::GetQueueRequest {
            queue_id: q1.clone(),
            read_mask: Some(prost_types::FieldMask {
                paths: vec!["entry_count".into()],
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .queue
        .unwrap();
    assert_eq!((masked.name.as_str(), masked.entry_count), ("", 1));

    // A pop waiting on an empty queue is woken by the add.
    let mut popper = QueuesServiceClient::new(channel.clone());
    let q2c = q2.clone();
    let waiter = tokio::spawn(async move {
        popper
            .pop_entry(pb::PopEntryRequest {
                worker_id: "w".into(),
                queue_ids: vec![q2c],
                wait_timeout: Some(prost_types::Duration {
                    seconds: 20,
                    nanos: 0,
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    });
    loop {
        let m = client
            .get_queue_metrics(pb::GetQueueMetricsRequest {
                queue_ids: vec![q2.clone()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        if m.queues[0].waiting_workers == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    client
        .add_entry(pb::AddEntryRequest {
            queue_id: q2.clone(),
            task_id: "t2".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let popped = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("woken by the push")
        .unwrap();
    let lease = popped.lease.unwrap();
    assert_eq!(lease.task_id, "t2");
    let acked = client
        .ack_lease(pb::AckLeaseRequest {
            target: Some(pb::ack_lease_request::Target::TaskId("t2".into())),
            worker_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acked.outcome, pb::AckOutcome::Acknowledged as i32);

    let deleted = client
        .delete_queue(pb::DeleteQueueRequest {
            queue_id: q1.clone(),
            force: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.removed_task_ids, ["t1"]);
    running.stop().await.unwrap();
}

#[tokio::test]
async fn workers_and_reconciliation_over_grpc() {
    let db = TestDb::sqlite();
    let (running, channel) = start(&db).await;
    let mut queues = QueuesServiceClient::new(channel.clone());
    let mut workers = WorkersServiceClient::new(channel);
    let q = create(&mut queues, "q").await;

    let reg = workers
        .register_worker(pb::RegisterWorkerRequest {
            worker_id: "host:1".into(),
            queue_ids: vec![q.clone()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(reg.created);
    assert_eq!(reg.worker.unwrap().state, pb::WorkerState::Active as i32);
    let status = workers
        .heartbeat(pb::HeartbeatRequest {
            worker_id: "ghost".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&status).0, ErrorCode::WorkerNotFound);
    let hb = workers
        .heartbeat(pb::HeartbeatRequest {
            worker_id: "host:1".into(),
            machine_stats: Some(pb::MachineStats {
                cpu_usage_percent: vec![50.0],
                gpus: vec![pb::GpuStats {
                    index: 0,
                    usage_percent: Some(99.0),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let stats = hb.worker.unwrap().machine_stats.unwrap();
    assert_eq!(stats.gpus[0].usage_percent, Some(99.0));
    let listed = workers
        .list_workers(pb::ListWorkersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.workers.len(), 1);
    assert!(listed.workers[0].last_seen.is_some());

    let fence = queues
        .start_reconciliation(pb::StartReconciliationRequest::default())
        .await
        .unwrap()
        .into_inner();
    let msgs = vec![
        pb::ReconcileEntriesRequest {
            part: Some(Part::Header(pb::ReconcileHeader {
                fence: fence.fence,
                ..Default::default()
            })),
        },
        pb::ReconcileEntriesRequest {
            part: Some(Part::Batch(pb::ReconcileBatch {
                entries: vec![pb::ExpectedEntry {
                    task_id: "lost".into(),
                    queue_id: q.clone(),
                    ..Default::default()
                }],
            })),
        },
    ];
    let report = queues
        .reconcile_entries(tokio_stream::iter(msgs))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(report.added, 1);
    assert_eq!(length(&mut queues, &q).await, (1, 0));

    // A batch before the header is refused and changes nothing.
    let bad = vec![pb::ReconcileEntriesRequest {
        part: Some(Part::Batch(pb::ReconcileBatch::default())),
    }];
    let status = queues
        .reconcile_entries(tokio_stream::iter(bad))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(length(&mut queues, &q).await, (1, 0));
    running.stop().await.unwrap();
}

#[tokio::test]
async fn redis_backend_without_url_is_refused() {
    let db = TestDb::sqlite();
    let mut settings = Settings::default();
    settings.queues.backend = QueueBackendKind::Redis;
    let err = tasklab_queues::mount(
        Server::new(&tasklab_testkit::test_grpc_settings()),
        &settings,
        &db.url,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
}
