//! Store tests on SQLite and PostgreSQL: the chunk layout itself (tail
//! merging, no overlaps) and the migrations.

use std::sync::Arc;

use sea_orm_migration::MigratorTrait as _;

use super::*;
use crate::migration::Migrator;
use crate::service::{MetricsService, NewEvent, Payload};

macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let db = tasklab_db::testing::TestDb::sqlite();
                super::$name(&db.url).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(db) = tasklab_db::testing::TestDb::postgres(concat!(
                    "metrics_store_",
                    stringify!($name)
                ))
                .await
                else {
                    return;
                };
                super::$name(&db.url).await;
            }
        }
    )*};
}

both!(small_appends_fill_chunks, migrations_are_idempotent);

async fn open(url: &str) -> (SqlMetricsStore, MetricsService) {
    let read = tasklab_db::connect_and_migrate::<Migrator>(url)
        .await
        .unwrap();
    let write = connect_writer(url).await.unwrap();
    let store = SqlMetricsStore::new(read, write);
    (store.clone(), MetricsService::new(Arc::new(store)))
}

fn point(iteration: i64) -> NewEvent {
    NewEvent {
        task_id: "t".into(),
        model: false,
        timestamp_ms: Some(iteration),
        iteration,
        metric: "m".into(),
        variant: "v".into(),
        sequence: 0,
        allow_locked: false,
        payload: Some(Payload::Scalar {
            value: iteration as f64,
            x_axis_label: String::new(),
        }),
    }
}

async fn small_appends_fill_chunks(url: &str) {
    let (store, svc) = open(url).await;
    // The SDK pattern: one point per series per flush.
    for i in 0..600 {
        svc.add_events(vec![point(i)], String::new()).await.unwrap();
    }
    let series = store.series(&["t".into()], false).await.unwrap();
    let metas = store.chunk_metas(series[0].id, None).await.unwrap();
    assert!(metas.len() <= 6, "{} chunks for 600 points", metas.len());
    assert_eq!(metas.iter().map(|m| m.stats.count).sum::<u64>(), 600);
    for w in metas.windows(2) {
        assert!(w[0].end_iter < w[1].start_iter, "chunks overlap: {w:?}");
    }
    // A write into the middle rewrites only what it overlaps.
    svc.add_events(vec![point(300), point(1000)], String::new())
        .await
        .unwrap();
    let metas = store.chunk_metas(series[0].id, None).await.unwrap();
    assert_eq!(metas.iter().map(|m| m.stats.count).sum::<u64>(), 601);
    for w in metas.windows(2) {
        assert!(w[0].end_iter < w[1].start_iter, "chunks overlap: {w:?}");
    }
}

async fn migrations_are_idempotent(url: &str) {
    let db = tasklab_db::connect_and_migrate::<Migrator>(url)
        .await
        .unwrap();
    Migrator::up(&db, None).await.unwrap();
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT version FROM seaql_migrations_metrics",
        ))
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
}
