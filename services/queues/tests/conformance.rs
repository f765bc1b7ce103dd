//! One conformance suite for every `QueueBackend`: each test body below runs
//! unchanged on SQL over SQLite, SQL over PostgreSQL
//! (`TASKLAB_TEST_POSTGRES_URL`) and Redis (`TASKLAB_TEST_REDIS_URL`, a fresh
//! key prefix per test). Time is a hand-driven clock: leases, the reaper and
//! worker expiry are tested without sleeping.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Fx, Kind, fixture};
use tasklab_error::{Error, ErrorCode};
use tasklab_queues::backend::{Acked, Disposition, LeaseTarget, Move};
use tasklab_queues::service::{
    Expected, Heartbeat, MachineStats, MetricsQuery, NewQueue, PageQuery, PopOrder, PopRequest,
    QueueQuery, QueueUpdate, ReconcileAction, ReconcileRequest, Registration, TagFilter,
    WorkerQuery, reason,
};

fn assert_err(err: &Error, code: ErrorCode, why: &str) {
    assert_eq!(err.code(), code, "{err:?}");
    assert_eq!(reason(err), why, "{err:?}");
}

async fn queue(fx: &Fx, name: &str) -> String {
    fx.svc
        .create_queue(NewQueue {
            name: name.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .0
        .row
        .id
}

async fn order(fx: &Fx, q: &str) -> Vec<String> {
    fx.svc
        .list_entries(q, &PageQuery::default(), false)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| e.task_id)
        .collect()
}

fn pop_req(queues: &[&str], worker: &str) -> PopRequest {
    PopRequest {
        worker_id: worker.to_owned(),
        queue_ids: queues.iter().map(|q| (*q).to_owned()).collect(),
        ..Default::default()
    }
}

fn tick(fx: &Fx, ms: u64) {
    fx.clock.advance(Duration::from_millis(ms));
}

// ---------------------------------------------------------------------------

async fn queue_crud(fx: Fx) {
    let (q, created) = fx
        .svc
        .create_queue(NewQueue {
            name: "gpu-a100".into(),
            tags: vec!["gpu".into(), "gpu".into(), "fast".into()],
            metadata: BTreeMap::from([("owner".into(), "ml".into())]),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(created);
    assert_eq!(q.row.tags, ["gpu", "fast"]);
    assert_eq!(q.row.id.len(), 32);
    queue(&fx, "cpu").await;

    let err = fx
        .svc
        .create_queue(NewQueue {
            name: "gpu-a100".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_err(&err, ErrorCode::AlreadyExists, "queue_name_taken");
    let (same, created) = fx
        .svc
        .create_queue(NewQueue {
            name: "gpu-a100".into(),
            if_not_exists: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(same.row.id, q.row.id);

    let err = fx
        .svc
        .create_queue(NewQueue {
            name: " padded".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_err(&err, ErrorCode::InvalidArgument, "invalid_name");

    assert_eq!(
        fx.svc.get_queue(&q.row.id).await.unwrap().row.name,
        "gpu-a100"
    );
    assert_eq!(
        fx.svc.get_queue_by_name("gpu-a100").await.unwrap().row.id,
        q.row.id
    );
    let err = fx.svc.get_queue_by_name("gpu").await.unwrap_err();
    assert_err(&err, ErrorCode::QueueNotFound, "queue_not_found");

    let page = fx
        .svc
        .list_queues(QueueQuery {
            name_pattern: "^gpu".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    let page = fx
        .svc
        .list_queues(QueueQuery {
            tags: TagFilter {
                none_of: vec!["gpu".into()],
                ..Default::default()
            },
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        page.items
            .iter()
            .map(|q| q.row.name.as_str())
            .collect::<Vec<_>>(),
        ["cpu"]
    );
    let err = fx
        .svc
        .list_queues(QueueQuery {
            name_pattern: "(".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_err(&err, ErrorCode::InvalidRegex, "invalid_regex");

    let updated = fx
        .svc
        .update_queue(QueueUpdate {
            id: q.row.id.clone(),
            name: "gpu-h100".into(),
            metadata: BTreeMap::from([("zone".into(), "eu".into())]),
            paths: vec!["name".into(), "metadata.zone".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(updated.row.name, "gpu-h100");
    assert_eq!(updated.row.metadata.len(), 2);
    let err = fx
        .svc
        .update_queue(QueueUpdate {
            id: q.row.id.clone(),
            name: "cpu".into(),
            paths: vec!["name".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_err(&err, ErrorCode::AlreadyExists, "queue_name_taken");
    assert_eq!(
        fx.svc.get_queue(&q.row.id).await.unwrap().row.name,
        "gpu-h100"
    );

    fx.svc.delete_queue(&q.row.id, false).await.unwrap();
    let err = fx.svc.get_queue(&q.row.id).await.unwrap_err();
    assert_err(&err, ErrorCode::QueueNotFound, "queue_not_found");
}

async fn default_queue(fx: Fx) {
    queue(&fx, "plain").await;
    let err = fx.svc.get_default_queue().await.unwrap_err();
    assert_err(&err, ErrorCode::NoDefaultQueue, "no_default_queue");
    let (d, _) = fx
        .svc
        .create_queue(NewQueue {
            name: "default".into(),
            system_tags: vec!["default".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(fx.svc.get_default_queue().await.unwrap().row.id, d.row.id);
}

async fn priority_then_fifo(fx: Fx) {
    let q = queue(&fx, "q").await;
    for t in ["a", "b", "c"] {
        fx.svc.add_entry(&q, t, 0, false).await.unwrap();
        tick(&fx, 1);
    }
    let added = fx.svc.add_entry(&q, "urgent", 5, false).await.unwrap();
    assert_eq!(added.entry.position, Some(0));
    fx.svc.add_entry(&q, "low", -3, false).await.unwrap();
    assert_eq!(order(&fx, &q).await, ["urgent", "a", "b", "c", "low"]);
    assert_eq!(fx.svc.queue_length(&q).await.unwrap(), (5, 0));
    let found = fx.svc.find_task_queue("b").await.unwrap().unwrap();
    assert_eq!(
        (found.queue_id.as_str(), found.position),
        (q.as_str(), Some(2))
    );

    // Same-millisecond adds keep their order too.
    for t in ["d", "e"] {
        fx.svc.add_entry(&q, t, 0, false).await.unwrap();
    }
    assert_eq!(
        order(&fx, &q).await,
        ["urgent", "a", "b", "c", "d", "e", "low"]
    );

    let moved = fx.svc.set_entry_priority("c", 5).await.unwrap();
    assert_eq!(moved.position, Some(1));
    let popped: Vec<String> = {
        let mut out = Vec::new();
        while let Some((e, _)) = fx.svc.pop(pop_req(&[&q], "w")).await.unwrap() {
            out.push(e.task_id);
        }
        out
    };
    assert_eq!(popped, ["urgent", "c", "a", "b", "d", "e", "low"]);

    // Paging walks the same order.
    let q2 = queue(&fx, "q2").await;
    for i in 0..5 {
        fx.svc
            .add_entry(&q2, &format!("t{i}"), 0, false)
            .await
            .unwrap();
    }
    let first = fx
        .svc
        .list_entries(
            &q2,
            &PageQuery {
                size: 2,
                ..Default::default()
            },
            false,
        )
        .await
        .unwrap();
    let second = fx
        .svc
        .list_entries(
            &q2,
            &PageQuery {
                size: 10,
                token: first.next_token.clone(),
                include_total: true,
            },
            false,
        )
        .await
        .unwrap();
    assert_eq!(first.items.len(), 2);
    assert_eq!(second.items[0].task_id, "t2");
    assert_eq!(second.items[0].position, Some(2));
    assert_eq!(second.total, Some(5));
    assert!(second.next_token.is_empty());
}

async fn moves_within_band(fx: Fx) {
    let q = queue(&fx, "q").await;
    for t in ["a", "b", "c", "d"] {
        fx.svc.add_entry(&q, t, 0, false).await.unwrap();
        tick(&fx, 1);
    }
    fx.svc.add_entry(&q, "hi", 9, false).await.unwrap();
    let e = fx
        .svc
        .move_entry("d", "", Some(Move::ToFront))
        .await
        .unwrap();
    // The front of its band, never ahead of a higher priority.
    assert_eq!(e.position, Some(1));
    assert_eq!(order(&fx, &q).await, ["hi", "d", "a", "b", "c"]);
    fx.svc
        .move_entry("d", &q, Some(Move::ToBack))
        .await
        .unwrap();
    assert_eq!(order(&fx, &q).await, ["hi", "a", "b", "c", "d"]);
    fx.svc
        .move_entry("c", "", Some(Move::Forward(2)))
        .await
        .unwrap();
    assert_eq!(order(&fx, &q).await, ["hi", "c", "a", "b", "d"]);
    fx.svc
        .move_entry("c", "", Some(Move::Backward(1)))
        .await
        .unwrap();
    assert_eq!(order(&fx, &q).await, ["hi", "a", "c", "b", "d"]);
    fx.svc
        .move_entry("a", "", Some(Move::Forward(10)))
        .await
        .unwrap();
    fx.svc
        .move_entry("b", "", Some(Move::Backward(10)))
        .await
        .unwrap();
    assert_eq!(order(&fx, &q).await, ["hi", "a", "c", "d", "b"]);

    let err = fx.svc.move_entry("a", "", None).await.unwrap_err();
    assert_err(&err, ErrorCode::InvalidArgument, "invalid_argument");
    let err = fx
        .svc
        .move_entry("ghost", "", Some(Move::ToFront))
        .await
        .unwrap_err();
    assert_err(&err, ErrorCode::TaskNotQueued, "task_not_queued");
    fx.svc.pop(pop_req(&[&q], "w")).await.unwrap().unwrap();
    let err = fx
        .svc
        .move_entry("hi", "", Some(Move::ToBack))
        .await
        .unwrap_err();
    assert_err(&err, ErrorCode::TaskNotQueued, "entry_leased");
    assert_eq!(order(&fx, &q).await, ["a", "c", "d", "b"]);
}

async fn one_queue_per_task(fx: Fx) {
    let q1 = queue(&fx, "q1").await;
    let q2 = queue(&fx, "q2").await;
    assert!(fx.svc.add_entry(&q1, "t", 0, false).await.unwrap().created);
    let again = fx.svc.add_entry(&q1, "t", 7, false).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.entry.priority, 0);

    let err = fx.svc.add_entry(&q2, "t", 0, false).await.unwrap_err();
    assert_err(&err, ErrorCode::TaskAlreadyQueued, "task_already_queued");
    assert_eq!(order(&fx, &q1).await, ["t"]);
    assert!(order(&fx, &q2).await.is_empty());

    // A leased task counts as queued too.
    fx.svc.pop(pop_req(&[&q1], "w")).await.unwrap().unwrap();
    let err = fx.svc.add_entry(&q2, "t", 0, false).await.unwrap_err();
    assert_err(&err, ErrorCode::TaskAlreadyQueued, "task_already_queued");
    assert_eq!(fx.svc.queue_length(&q1).await.unwrap(), (0, 1));

    let moved = fx.svc.add_entry(&q2, "t", 0, true).await.unwrap();
    assert_eq!(moved.previous_queue_id.as_deref(), Some(q1.as_str()));
    assert_eq!(fx.svc.queue_length(&q1).await.unwrap(), (0, 0));
    assert_eq!(order(&fx, &q2).await, ["t"]);
    let acked = fx
        .svc
        .ack(&LeaseTarget::TaskId("t".into()), "")
        .await
        .unwrap();
    assert!(matches!(acked, Acked::Reclaimed(_)), "{acked:?}");
}

async fn bad_input_changes_nothing(fx: Fx) {
    let q = queue(&fx, "q").await;
    fx.svc.add_entry(&q, "t1", 0, false).await.unwrap();
    let before = order(&fx, &q).await;

    let err = fx
        .svc
        .add_entry("0123456789abcdef0123456789abcdef", "t2", 0, false)
        .await
        .unwrap_err();
    assert_err(&err, ErrorCode::QueueNotFound, "queue_not_found");
    assert!(fx.svc.find_task_queue("t2").await.unwrap().is_none());

    let err = fx.svc.add_entry(&q, "", 0, false).await.unwrap_err();
    assert_err(&err, ErrorCode::InvalidArgument, "invalid_argument");
    let err = fx
        .svc
        .add_entry(&q, &"x".repeat(129), 0, false)
        .await
        .unwrap_err();
    assert_err(&err, ErrorCode::InvalidArgument, "invalid_argument");

    assert!(fx.svc.remove_entry("ghost", "").await.unwrap().is_none());
    let err = fx
        .svc
        .remove_entry("t1", "ffffffffffffffffffffffffffffffff")
        .await
        .unwrap_err();
    assert_err(&err, ErrorCode::QueueNotFound, "queue_not_found");

    let err = fx.svc.delete_queue(&q, false).await.unwrap_err();
    assert_err(&err, ErrorCode::QueueNotEmpty, "queue_not_empty");
    assert_eq!(order(&fx, &q).await, before);
    assert_eq!(fx.svc.get_queue(&q).await.unwrap().entry_count, 1);

    let err = fx.svc.pop(pop_req(&[&q, "nope"], "w")).await.unwrap_err();
    assert_err(&err, ErrorCode::QueueNotFound, "queue_not_found");
    let err = fx.svc.pop(pop_req(&[&q, &q], "w")).await.unwrap_err();
    assert_err(&err, ErrorCode::InvalidArgument, "invalid_argument");
    let err = fx
        .svc
        .pop(PopRequest {
            lease: Some(Duration::from_secs(1)),
            ..pop_req(&[&q], "w")
        })
        .await
        .unwrap_err();
    assert_err(&err, ErrorCode::InvalidArgument, "invalid_argument");
    assert_eq!(order(&fx, &q).await, before);

    let err = fx
        .svc
        .ack(&LeaseTarget::LeaseId("nope".into()), "")
        .await
        .unwrap_err();
    assert_err(&err, ErrorCode::LeaseNotFound, "lease_not_found");
    assert_eq!(
        fx.svc
            .ack(&LeaseTarget::TaskId("ghost".into()), "")
            .await
            .unwrap(),
        Acked::NoLease
    );
    assert_eq!(order(&fx, &q).await, before);

    // Forced delete drops the entries and cancels the leases.
    fx.svc.add_entry(&q, "t2", 0, false).await.unwrap();
    fx.svc.pop(pop_req(&[&q], "w")).await.unwrap().unwrap();
    let deleted = fx.svc.delete_queue(&q, true).await.unwrap();
    assert_eq!(deleted.removed_task_ids, ["t2"]);
    assert_eq!(deleted.cancelled_lease_task_ids, ["t1"]);
    assert!(fx.svc.find_task_queue("t1").await.unwrap().is_none());
    assert!(fx.backend.leases().await.unwrap().is_empty());
}

async fn pop_lease_ack(fx: Fx) {
    let q1 = queue(&fx, "q1").await;
    let q2 = queue(&fx, "q2").await;
    fx.svc.add_entry(&q2, "b", 0, false).await.unwrap();
    tick(&fx, 1500);
    let (entry, lease) = fx
        .svc
        .pop(PopRequest {
            lease: Some(Duration::from_secs(20)),
            ..pop_req(&[&q1, &q2], "w1")
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!((entry.task_id.as_str(), entry.position), ("b", Some(0)));
    assert_eq!(lease.queue_id, q2);
    assert_eq!(lease.worker_id, "w1");
    assert_eq!(lease.delivery_attempt, 1);
    assert_eq!(
        lease.expires - lease.acquired,
        chrono::Duration::seconds(20)
    );
    let found = fx.svc.find_task_queue("b").await.unwrap().unwrap();
    assert_eq!(found.position, None);
    assert_eq!(
        found.lease.as_ref().map(|l| l.lease_id.as_str()),
        Some(lease.lease_id.as_str())
    );
    assert_eq!(fx.svc.queue_length(&q2).await.unwrap(), (0, 1));
    let with_leased = fx
        .svc
        .list_entries(&q2, &PageQuery::default(), true)
        .await
        .unwrap();
    assert_eq!(with_leased.items.len(), 1);
    assert!(with_leased.items[0].lease.is_some());

    // The empty pop returns at once.
    assert!(
        fx.svc
            .pop(pop_req(&[&q1, &q2], "w1"))
            .await
            .unwrap()
            .is_none()
    );

    let err = fx
        .svc
        .ack(&LeaseTarget::LeaseId(lease.lease_id.clone()), "w2")
        .await
        .unwrap_err();
    assert_err(&err, ErrorCode::LeaseNotFound, "lease_not_owned");
    let acked = fx
        .svc
        .ack(&LeaseTarget::LeaseId(lease.lease_id.clone()), "w1")
        .await
        .unwrap();
    assert_eq!(acked, Acked::Acknowledged(lease.clone()));
    assert_eq!(fx.svc.queue_length(&q2).await.unwrap(), (0, 0));
    assert_eq!(
        fx.svc
            .ack(&LeaseTarget::TaskId("b".into()), "")
            .await
            .unwrap(),
        Acked::NoLease
    );
    let err = fx
        .svc
        .ack(&LeaseTarget::LeaseId(lease.lease_id), "")
        .await
        .unwrap_err();
    assert_err(&err, ErrorCode::LeaseNotFound, "lease_not_found");
}

async fn release_dispositions(fx: Fx) {
    let q = queue(&fx, "q").await;
    for t in ["a", "b", "c"] {
        fx.svc.add_entry(&q, t, 0, false).await.unwrap();
        tick(&fx, 1);
    }
    let (_, la) = fx.svc.pop(pop_req(&[&q], "w")).await.unwrap().unwrap();
    let err = fx
        .svc
        .release(
            &LeaseTarget::LeaseId(la.lease_id.clone()),
            "other",
            Disposition::Front,
            "",
        )
        .await
        .unwrap_err();
    assert_err(&err, ErrorCode::LeaseNotFound, "lease_not_owned");
    let r = fx
        .svc
        .release(
            &LeaseTarget::LeaseId(la.lease_id.clone()),
            "w",
            Disposition::Front,
            "gpu busy",
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.entry.as_ref().and_then(|e| e.position), Some(0));
    assert_eq!(r.entry.as_ref().map(|e| e.added), Some(la.added));
    assert_eq!(order(&fx, &q).await, ["a", "b", "c"]);

    fx.svc.pop(pop_req(&[&q], "w")).await.unwrap().unwrap();
    fx.svc
        .release(&LeaseTarget::TaskId("a".into()), "", Disposition::Back, "")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(order(&fx, &q).await, ["b", "c", "a"]);
    let (e, l) = fx.svc.pop(pop_req(&[&q], "w")).await.unwrap().unwrap();
    assert_eq!((e.task_id.as_str(), e.delivery_count), ("b", 0));
    assert_eq!(l.delivery_attempt, 1);
    let r = fx
        .svc
        .release(
            &LeaseTarget::TaskId("b".into()),
            "w",
            Disposition::Discard,
            "",
        )
        .await
        .unwrap()
        .unwrap();
    assert!(r.entry.is_none());
    assert!(fx.svc.find_task_queue("b").await.unwrap().is_none());
    assert!(
        fx.svc
            .release(&LeaseTarget::TaskId("b".into()), "", Disposition::Front, "")
            .await
            .unwrap()
            .is_none()
    );
    // `a` was delivered twice.
    fx.svc.pop(pop_req(&[&q], "w")).await.unwrap().unwrap();
    let (e, l) = fx.svc.pop(pop_req(&[&q], "w")).await.unwrap().unwrap();
    assert_eq!((e.task_id.as_str(), l.delivery_attempt), ("a", 3));
}

async fn reaper_returns_expired_leases(fx: Fx) {
    let q = queue(&fx, "q").await;
    for t in ["a", "b"] {
        fx.svc.add_entry(&q, t, 0, false).await.unwrap();
        tick(&fx, 1);
    }
    let five = Some(Duration::from_secs(5));
    let (_, la) = fx
        .svc
        .pop(PopRequest {
            lease: five,
            ..pop_req(&[&q], "w")
        })
        .await
        .unwrap()
        .unwrap();
    tick(&fx, 4_000);
    assert!(fx.svc.reap_once().await.unwrap().is_empty());
    // A heartbeat of the holder renews its lease.
    fx.svc
        .register_worker(Registration {
            worker_id: "w".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let hb = fx
        .svc
        .heartbeat(Heartbeat {
            worker_id: "w".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(hb.renewed.len(), 1);
    assert_eq!(hb.worker.leased_task_ids, ["a"]);
    tick(&fx, 4_000);
    assert!(fx.svc.reap_once().await.unwrap().is_empty());
    let renewed = fx
        .svc
        .renew(&LeaseTarget::TaskId("a".into()), "w")
        .await
        .unwrap();
    assert_eq!(
        renewed.expires - renewed.last_renewed,
        chrono::Duration::seconds(5)
    );
    tick(&fx, 5_001);
    let expired = fx
        .svc
        .list_leases(tasklab_queues::service::LeaseQuery {
            expired_only: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(expired.items.len(), 1);
    let err = fx
        .svc
        .renew(&LeaseTarget::TaskId("a".into()), "w")
        .await
        .unwrap_err();
    assert_err(&err, ErrorCode::LeaseNotFound, "lease_expired");

    let reaped = fx.svc.reap_once().await.unwrap();
    assert_eq!(
        reaped
            .iter()
            .map(|l| l.task_id.as_str())
            .collect::<Vec<_>>(),
        ["a"]
    );
    // A second reaper (another replica) finds nothing.
    assert!(fx.svc.reap_once().await.unwrap().is_empty());
    let back = fx.svc.find_task_queue("a").await.unwrap().unwrap();
    assert_eq!(
        (back.position, back.delivery_count, back.added),
        (Some(0), 1, la.added)
    );
    assert_eq!(order(&fx, &q).await, ["a", "b"]);

    // The task started after all: acknowledging by task reclaims the entry.
    let acked = fx
        .svc
        .ack(&LeaseTarget::TaskId("a".into()), "")
        .await
        .unwrap();
    assert!(
        matches!(acked, Acked::Reclaimed(ref e) if e.task_id == "a"),
        "{acked:?}"
    );
    assert_eq!(order(&fx, &q).await, ["b"]);
}

async fn workers_register_heartbeat_expire(fx: Fx) {
    let q = queue(&fx, "q").await;
    let (w, created) = fx
        .svc
        .register_worker(Registration {
            worker_id: "host:0".into(),
            queue_ids: vec![q.clone()],
            timeout: Some(Duration::from_secs(10)),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(created && !w.expired);
    let err = fx
        .svc
        .register_worker(Registration {
            worker_id: "x".into(),
            timeout: Some(Duration::from_secs(1)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_err(&err, ErrorCode::InvalidArgument, "invalid_argument");
    let err = fx
        .svc
        .heartbeat(Heartbeat {
            worker_id: "ghost".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_err(&err, ErrorCode::WorkerNotFound, "worker_not_found");
    let auto = fx
        .svc
        .heartbeat(Heartbeat {
            worker_id: "auto".into(),
            auto_register: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(auto.auto_registered);

    fx.svc.add_entry(&q, "t", 0, false).await.unwrap();
    fx.svc.pop(pop_req(&[&q], "host:0")).await.unwrap().unwrap();
    fx.svc
        .ack(&LeaseTarget::TaskId("t".into()), "")
        .await
        .unwrap();
    let w = fx.svc.get_worker("host:0").await.unwrap();
    assert_eq!(
        (
            w.row.current_task_id.as_str(),
            w.row.current_queue_id.as_str()
        ),
        ("t", q.as_str())
    );

    tick(&fx, 3_000);
    let stats = MachineStats {
        cpu_usage_percent: vec![12.5, 80.0],
        memory_used_mib: Some(2048.0),
        ..Default::default()
    };
    let hb = fx
        .svc
        .heartbeat(Heartbeat {
            worker_id: "host:0".into(),
            machine_stats: Some(stats.clone()),
            current_task_id: "t".into(),
            current_queue_id: q.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(hb.worker.machine_stats.as_ref(), Some(&stats));
    let seen = hb.worker.row.last_seen;
    let listed = fx.svc.list_workers(WorkerQuery::default()).await.unwrap();
    assert_eq!(listed.items.len(), 2);

    tick(&fx, 10_001);
    let listed = fx.svc.list_workers(WorkerQuery::default()).await.unwrap();
    assert_eq!(
        listed
            .items
            .iter()
            .map(|w| w.row.id.as_str())
            .collect::<Vec<_>>(),
        ["auto"]
    );
    let expired = fx
        .svc
        .list_expired_workers(true, &PageQuery::default())
        .await
        .unwrap();
    assert_eq!(expired.items.len(), 1);
    assert!(expired.items[0].expired);
    assert_eq!(expired.items[0].row.current_task_id, "t");
    assert_eq!(expired.items[0].row.last_seen, seen);

    // The gateway's reaper removes it unless it came back in between.
    let hb = fx
        .svc
        .heartbeat(Heartbeat {
            worker_id: "host:0".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(hb.revived);
    let err = fx
        .svc
        .unregister_worker("host:0", Some(seen), "expired")
        .await
        .unwrap_err();
    assert_err(&err, ErrorCode::TaskStatusChanged, "worker_changed");
    assert!(fx.svc.get_worker("host:0").await.is_ok());

    fx.svc.add_entry(&q, "u", 0, false).await.unwrap();
    fx.svc.pop(pop_req(&[&q], "host:0")).await.unwrap().unwrap();
    let gone = fx
        .svc
        .unregister_worker("host:0", Some(hb.worker.row.last_seen), "shutdown")
        .await
        .unwrap();
    assert_eq!(
        gone.returned
            .iter()
            .map(|l| l.task_id.as_str())
            .collect::<Vec<_>>(),
        ["u"]
    );
    assert_eq!(order(&fx, &q).await, ["u"]);
    let err = fx.svc.get_worker("host:0").await.unwrap_err();
    assert_err(&err, ErrorCode::WorkerNotFound, "worker_not_found");
    assert!(
        fx.svc
            .unregister_worker("host:0", None, "")
            .await
            .unwrap()
            .worker
            .is_none()
    );
}

async fn pop_waits_for_the_push(fx: Fx) {
    let q = queue(&fx, "q").await;
    let other = queue(&fx, "other").await;
    let svc = fx.svc.clone();
    let (q1, o1) = (q.clone(), other.clone());
    let waiter = tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let got = svc
            .pop(PopRequest {
                wait: Duration::from_secs(30),
                ..pop_req(&[&o1, &q1], "w")
            })
            .await
            .unwrap();
        (got, started.elapsed())
    });
    // Wait until the pop is registered as waiting, then push.
    let mut spins = 0;
    loop {
        let m = fx
            .svc
            .metrics(MetricsQuery {
                queue_ids: vec![q.clone()],
                ..Default::default()
            })
            .await
            .unwrap();
        if m[0].waiting_workers == 1 {
            break;
        }
        spins += 1;
        assert!(spins < 5_000, "the pop never started waiting");
        tokio::task::yield_now().await;
    }
    fx.svc.add_entry(&q, "t", 0, false).await.unwrap();
    let (got, elapsed) = waiter.await.unwrap();
    let (entry, _) = got.expect("woken by the push");
    assert_eq!(entry.task_id, "t");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");

    // With nothing pushed, a short wait ends empty.
    let none = fx
        .svc
        .pop(PopRequest {
            wait: Duration::from_millis(30),
            ..pop_req(&[&q], "w")
        })
        .await
        .unwrap();
    assert!(none.is_none());
}

async fn round_robin_fairness(fx: Fx) {
    let q1 = queue(&fx, "q1").await;
    let q2 = queue(&fx, "q2").await;
    for i in 0..3 {
        fx.svc
            .add_entry(&q1, &format!("a{i}"), 0, false)
            .await
            .unwrap();
        fx.svc
            .add_entry(&q2, &format!("b{i}"), 0, false)
            .await
            .unwrap();
    }
    let mut strict = Vec::new();
    let mut rr = Vec::new();
    for _ in 0..2 {
        let (e, _) = fx
            .svc
            .pop(pop_req(&[&q1, &q2], "s"))
            .await
            .unwrap()
            .unwrap();
        strict.push(e.task_id);
    }
    for _ in 0..4 {
        let (e, _) = fx
            .svc
            .pop(PopRequest {
                order: PopOrder::RoundRobin,
                ..pop_req(&[&q1, &q2], "r")
            })
            .await
            .unwrap()
            .unwrap();
        rr.push(e.task_id);
    }
    assert_eq!(strict, ["a0", "a1"]);
    assert_eq!(rr, ["a2", "b0", "b1", "b2"]);
}

async fn queue_metrics(fx: Fx) {
    let q = queue(&fx, "q").await;
    let start = fx.clock_now();
    fx.svc.add_entry(&q, "a", 0, false).await.unwrap();
    fx.svc.add_entry(&q, "b", 0, false).await.unwrap();
    tick(&fx, 3_000);
    fx.svc.pop(pop_req(&[&q], "w")).await.unwrap().unwrap();
    tick(&fx, 1_000);
    let m = fx
        .svc
        .metrics(MetricsQuery {
            queue_ids: vec![q.clone()],
            history: Some((
                start,
                start + chrono::Duration::seconds(60),
                Duration::from_secs(10),
            )),
            ..Default::default()
        })
        .await
        .unwrap();
    let m = &m[0];
    assert_eq!((m.pending_count, m.leased_count, m.popped_count), (1, 1, 1));
    assert_eq!(m.oldest_entry_age, Some(Duration::from_secs(4)));
    assert_eq!(m.average_wait, Some(Duration::from_secs(3)));
    assert_eq!(m.history.len(), 1);
    assert_eq!(m.history[0].max_pending_count, 1);
    let err = fx
        .svc
        .metrics(MetricsQuery {
            window: Some(Duration::from_secs(90_000)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_err(&err, ErrorCode::InvalidArgument, "invalid_argument");
}

trait ClockNow {
    fn clock_now(&self) -> chrono::DateTime<chrono::Utc>;
}

impl ClockNow for Fx {
    fn clock_now(&self) -> chrono::DateTime<chrono::Utc> {
        use tasklab_queues::service::Clock;
        self.clock.now()
    }
}

fn expected(task: &str, queue: &str) -> Expected {
    Expected {
        task_id: task.to_owned(),
        queue_id: queue.to_owned(),
        priority: 0,
        enqueued: None,
    }
}

async fn reconciliation(fx: Fx) {
    let q1 = queue(&fx, "q1").await;
    let q2 = queue(&fx, "q2").await;
    fx.svc.add_entry(&q1, "moved", 0, false).await.unwrap();
    fx.svc.add_entry(&q1, "stale", 0, false).await.unwrap();
    fx.svc.add_entry(&q1, "kept", 0, false).await.unwrap();
    fx.svc
        .add_entry(&q1, "stale-lease", 0, false)
        .await
        .unwrap();
    fx.svc.add_entry(&q1, "dequeued", 0, false).await.unwrap();
    fx.svc
        .move_entry("stale-lease", "", Some(Move::ToFront))
        .await
        .unwrap();
    fx.svc.pop(pop_req(&[&q1], "w")).await.unwrap().unwrap();

    let fence = fx.svc.start_reconciliation("").await.unwrap();
    assert!(!fence.epoch_changed);
    // Changes after the fence, unknown to the snapshot.
    fx.svc.add_entry(&q2, "fresh", 0, false).await.unwrap();
    fx.svc.remove_entry("dequeued", "").await.unwrap().unwrap();

    let req = ReconcileRequest {
        fence: fence.fence.clone(),
        expected: vec![
            expected("moved", &q2),
            expected("kept", &q1),
            expected("missing", &q2),
            expected("dequeued", &q1),
            expected("nowhere", "ffffffffffffffffffffffffffffffff"),
        ],
        ..Default::default()
    };
    let dry = fx
        .svc
        .reconcile(ReconcileRequest {
            dry_run: true,
            ..req.clone()
        })
        .await
        .unwrap();
    assert!(dry.dry_run);
    assert_eq!(order(&fx, &q2).await, ["fresh"]);

    let report = fx.svc.reconcile(req).await.unwrap();
    let mut changes: Vec<(ReconcileAction, String)> = report
        .changes
        .iter()
        .map(|c| (c.action, c.task_id.clone()))
        .collect();
    changes.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        changes,
        [
            (ReconcileAction::SkippedRecent, "dequeued".to_owned()),
            (ReconcileAction::Added, "missing".to_owned()),
            (ReconcileAction::Moved, "moved".to_owned()),
            (ReconcileAction::SkippedUnknownQueue, "nowhere".to_owned()),
            (ReconcileAction::Removed, "stale".to_owned()),
            (ReconcileAction::LeaseCancelled, "stale-lease".to_owned()),
        ]
    );
    assert_eq!(
        (
            report.added,
            report.moved,
            report.removed,
            report.leases_cancelled
        ),
        (1, 1, 1, 1)
    );
    assert_eq!((report.skipped, report.unchanged), (2, 1));
    assert_eq!(order(&fx, &q1).await, ["kept"]);
    let mut q2_tasks = order(&fx, &q2).await;
    assert_eq!(q2_tasks[0], "fresh");
    q2_tasks.sort();
    assert_eq!(q2_tasks, ["fresh", "missing", "moved"]);
    assert!(fx.svc.find_task_queue("dequeued").await.unwrap().is_none());

    let err = fx
        .svc
        .reconcile(ReconcileRequest {
            fence: "garbage".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_err(&err, ErrorCode::InvalidArgument, "invalid_fence");
    tick(&fx, 11 * 60 * 1000);
    let err = fx
        .svc
        .reconcile(ReconcileRequest {
            fence: fence.fence,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_err(&err, ErrorCode::TaskStatusChanged, "reconcile_fence_stale");
    assert_eq!(order(&fx, &q2).await.len(), 3);
}

async fn rebuild_keeps_fifo_by_enqueue_time(fx: Fx) {
    let q = queue(&fx, "q").await;
    let t0 = fx.clock_now();
    fx.svc.add_entry(&q, "live", 0, false).await.unwrap();
    let fence = fx.svc.start_reconciliation("").await.unwrap();
    let at = |s: i64| Some(t0 - chrono::Duration::seconds(s));
    let report = fx
        .svc
        .reconcile(ReconcileRequest {
            fence: fence.fence,
            add_only: true,
            expected: vec![
                Expected {
                    enqueued: at(10),
                    ..expected("second", &q)
                },
                Expected {
                    enqueued: at(20),
                    ..expected("first", &q)
                },
                Expected {
                    enqueued: at(5),
                    priority: 1,
                    ..expected("urgent", &q)
                },
            ],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(report.added, 3);
    assert_eq!(order(&fx, &q).await, ["urgent", "first", "second", "live"]);
    let first = fx.svc.find_task_queue("first").await.unwrap().unwrap();
    assert_eq!(first.added, t0 - chrono::Duration::seconds(20));
}

/// The per-queue counts (the SQL backend's trigger-kept counters, Redis's
/// set sizes) agree with the entries actually listed, after many clients
/// mixed adds, replacing adds across queues, pops, acks, releases, removes,
/// moves and priority changes concurrently.
/// Accepts a refusal of the contract (it carries a reason), not a failure.
fn refused<T>(res: Result<T, Error>) {
    if let Err(err) = res {
        assert!(!reason(&err).is_empty(), "{err:?}");
    }
}

async fn counters_stay_consistent(fx: Fx) {
    let queues = [queue(&fx, "a").await, queue(&fx, "b").await];
    let mut clients = Vec::new();
    for c in 0..6u64 {
        let (svc, queues) = (fx.svc.clone(), queues.clone());
        clients.push(tokio::spawn(async move {
            let mut x = 0x9e37_79b9_7f4a_7c15_u64 ^ (c + 1);
            let mut next = move || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            let worker = format!("w{c}");
            for _ in 0..40 {
                let r = next();
                let task = format!("t{}", r % 24);
                let q = &queues[(r >> 8) as usize % 2];
                let priority = ((r >> 16) % 3) as i32;
                // Refusals (not queued, leased, queued elsewhere) are part
                // of the mix; they must change nothing.
                match (r >> 24) % 8 {
                    0 | 1 => refused(svc.add_entry(q, &task, priority, false).await),
                    2 => refused(svc.add_entry(q, &task, priority, true).await),
                    3 => {
                        let popped = svc
                            .pop(PopRequest {
                                worker_id: worker.clone(),
                                queue_ids: queues.to_vec(),
                                ..Default::default()
                            })
                            .await
                            .unwrap();
                        if let Some((_, lease)) = popped {
                            let target = LeaseTarget::LeaseId(lease.lease_id);
                            // Another client may have taken the task meanwhile.
                            match (r >> 32) % 4 {
                                0 => refused(svc.ack(&target, &worker).await),
                                1 => refused(
                                    svc.release(&target, &worker, Disposition::Front, "").await,
                                ),
                                2 => refused(
                                    svc.release(&target, &worker, Disposition::Discard, "")
                                        .await,
                                ),
                                _ => {} // keep the lease
                            }
                        }
                    }
                    4 => refused(svc.remove_entry(&task, "").await),
                    5 => refused(svc.move_entry(&task, "", Some(Move::ToFront)).await),
                    6 => refused(svc.set_entry_priority(&task, priority).await),
                    _ => refused(svc.ack(&LeaseTarget::TaskId(task.clone()), "").await),
                }
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    let leases = fx.backend.leases().await.unwrap();
    let mut seen = std::collections::HashSet::new();
    for q in &queues {
        let (waiting, leased) = fx.svc.queue_length(q).await.unwrap();
        let listed = fx
            .svc
            .list_entries(
                q,
                &PageQuery {
                    size: 1000,
                    ..Default::default()
                },
                true,
            )
            .await
            .unwrap()
            .items;
        let positions: Vec<Option<u32>> = listed.iter().map(|e| e.position).collect();
        let expected: Vec<Option<u32>> = (0..waiting)
            .map(Some)
            .chain((0..leased).map(|_| None))
            .collect();
        assert_eq!(positions, expected, "queue {q}: {listed:?}");
        assert_eq!(
            leases.iter().filter(|l| l.queue_id == *q).count(),
            leased as usize
        );
        let got = fx.svc.get_queue(q).await.unwrap();
        assert_eq!((got.entry_count, got.leased_count), (waiting, leased));
        for e in &listed {
            assert!(seen.insert(e.task_id.clone()), "{} twice", e.task_id);
            let found = fx.svc.find_task_queue(&e.task_id).await.unwrap().unwrap();
            assert_eq!((&found.queue_id, found.position), (q, e.position));
        }
        // An add at the back of the lowest band reports the queue length.
        let added = fx
            .svc
            .add_entry(q, &format!("last-{q}"), -1, false)
            .await
            .unwrap();
        assert_eq!(added.entry.position, Some(waiting));
    }
    // Deleting a queue leaves nothing behind in its counts.
    fx.svc.delete_queue(&queues[1], true).await.unwrap();
    let again = queue(&fx, "b2").await;
    assert_eq!(fx.svc.queue_length(&again).await.unwrap(), (0, 0));
}

/// A queue deleted through one replica refuses adds and pops through
/// another at once, whatever that replica read or cached before.
async fn deleted_queue_refuses_other_replicas(fx: Fx) {
    let other = fx.replica();
    let q = queue(&fx, "doomed").await;
    other.add_entry(&q, "t1", 0, false).await.unwrap();
    other.pop(pop_req(&[&q], "w")).await.unwrap().unwrap();
    let deleted = fx.svc.delete_queue(&q, true).await.unwrap();
    assert_eq!(deleted.cancelled_lease_task_ids, ["t1"]);
    let err = other.add_entry(&q, "t2", 0, false).await.unwrap_err();
    assert_err(&err, ErrorCode::QueueNotFound, "queue_not_found");
    let err = other.pop(pop_req(&[&q], "w")).await.unwrap_err();
    assert_err(&err, ErrorCode::QueueNotFound, "queue_not_found");
    assert!(other.find_task_queue("t2").await.unwrap().is_none());
    // Every queue of a pop must exist, even after a non-empty one.
    let live = queue(&fx, "live").await;
    fx.svc.add_entry(&live, "t3", 0, false).await.unwrap();
    let err = other.pop(pop_req(&[&live, &q], "w")).await.unwrap_err();
    assert_err(&err, ErrorCode::QueueNotFound, "queue_not_found");
    assert_eq!(fx.svc.queue_length(&live).await.unwrap(), (1, 0));
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let fx = super::fixture(super::Kind::Sqlite, stringify!($name)).await.unwrap();
                    super::$name(fx).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    if let Some(fx) = super::fixture(super::Kind::Postgres, stringify!($name)).await {
                        super::$name(fx).await;
                    }
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $name() {
                    if let Some(fx) = super::fixture(super::Kind::Redis, stringify!($name)).await {
                        super::$name(fx).await;
                    }
                }
            )*
        }
    };
}

conformance!(
    queue_crud,
    default_queue,
    priority_then_fifo,
    moves_within_band,
    one_queue_per_task,
    bad_input_changes_nothing,
    pop_lease_ack,
    release_dispositions,
    reaper_returns_expired_leases,
    workers_register_heartbeat_expire,
    pop_waits_for_the_push,
    round_robin_fairness,
    queue_metrics,
    reconciliation,
    rebuild_keeps_fifo_by_enqueue_time,
    counters_stay_consistent,
    deleted_queue_refuses_other_replicas,
);
