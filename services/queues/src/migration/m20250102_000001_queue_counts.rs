//! Per-band entry counters and a pop-order index for the SQL backend's hot
//! path.
//!
//! * `queue_counts (queue_id, priority, waiting, leased)`: how many entries
//!   of each priority band wait or are leased in each queue. Triggers on
//!   `queue_entries` keep it exact in the same statement as every insert,
//!   delete and update of an entry, whatever code path writes it, so a
//!   queue's length, its capacity check, the position of an entry added to
//!   the back of its band and the pending count of a pop sample are sums
//!   over a few rows instead of counts over the queue.
//! * `queue_entries_pop_idx (queue_id, leased, priority DESC, rank,
//!   task_id)`: exactly the pop order, so the head of a queue is the first
//!   row of the index (the former index sorted priorities ascending, which
//!   made every pop sort the whole queue). It also serves band look-ups
//!   (`priority = ?` then `rank`), so it replaces the former index.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

const CREATE: &str = "CREATE TABLE IF NOT EXISTS queue_counts (
    queue_id VARCHAR(32) NOT NULL,
    priority INTEGER NOT NULL,
    waiting BIGINT NOT NULL,
    leased BIGINT NOT NULL,
    PRIMARY KEY (queue_id, priority)
)";

const BACKFILL: &str = "INSERT INTO queue_counts (queue_id, priority, waiting, leased)
    SELECT queue_id, priority,
           SUM(CASE WHEN leased THEN 0 ELSE 1 END),
           SUM(CASE WHEN leased THEN 1 ELSE 0 END)
    FROM queue_entries GROUP BY queue_id, priority";

const POP_INDEX: &str = "CREATE INDEX IF NOT EXISTS queue_entries_pop_idx
    ON queue_entries (queue_id, leased, priority DESC, rank, task_id)";

const SQLITE_TRIGGERS: [&str; 3] = [
    "CREATE TRIGGER IF NOT EXISTS queue_entries_count_insert AFTER INSERT ON queue_entries
     BEGIN
       INSERT OR IGNORE INTO queue_counts (queue_id, priority, waiting, leased)
         VALUES (NEW.queue_id, NEW.priority, 0, 0);
       UPDATE queue_counts
         SET waiting = waiting + (CASE WHEN NEW.leased THEN 0 ELSE 1 END),
             leased = leased + (CASE WHEN NEW.leased THEN 1 ELSE 0 END)
         WHERE queue_id = NEW.queue_id AND priority = NEW.priority;
     END",
    "CREATE TRIGGER IF NOT EXISTS queue_entries_count_delete AFTER DELETE ON queue_entries
     BEGIN
       UPDATE queue_counts
         SET waiting = waiting - (CASE WHEN OLD.leased THEN 0 ELSE 1 END),
             leased = leased - (CASE WHEN OLD.leased THEN 1 ELSE 0 END)
         WHERE queue_id = OLD.queue_id AND priority = OLD.priority;
     END",
    "CREATE TRIGGER IF NOT EXISTS queue_entries_count_update
     AFTER UPDATE OF queue_id, priority, leased ON queue_entries
     WHEN OLD.queue_id IS NOT NEW.queue_id OR OLD.priority IS NOT NEW.priority
       OR OLD.leased IS NOT NEW.leased
     BEGIN
       UPDATE queue_counts
         SET waiting = waiting - (CASE WHEN OLD.leased THEN 0 ELSE 1 END),
             leased = leased - (CASE WHEN OLD.leased THEN 1 ELSE 0 END)
         WHERE queue_id = OLD.queue_id AND priority = OLD.priority;
       INSERT OR IGNORE INTO queue_counts (queue_id, priority, waiting, leased)
         VALUES (NEW.queue_id, NEW.priority, 0, 0);
       UPDATE queue_counts
         SET waiting = waiting + (CASE WHEN NEW.leased THEN 0 ELSE 1 END),
             leased = leased + (CASE WHEN NEW.leased THEN 1 ELSE 0 END)
         WHERE queue_id = NEW.queue_id AND priority = NEW.priority;
     END",
];

const POSTGRES_TRIGGERS: [&str; 5] = [
    "CREATE OR REPLACE FUNCTION queue_entries_count() RETURNS trigger LANGUAGE plpgsql AS $$
     BEGIN
       IF TG_OP <> 'INSERT' THEN
         UPDATE queue_counts
           SET waiting = waiting - (CASE WHEN OLD.leased THEN 0 ELSE 1 END),
               leased = leased - (CASE WHEN OLD.leased THEN 1 ELSE 0 END)
           WHERE queue_id = OLD.queue_id AND priority = OLD.priority;
       END IF;
       IF TG_OP <> 'DELETE' THEN
         INSERT INTO queue_counts AS c (queue_id, priority, waiting, leased)
           VALUES (NEW.queue_id, NEW.priority,
                   CASE WHEN NEW.leased THEN 0 ELSE 1 END,
                   CASE WHEN NEW.leased THEN 1 ELSE 0 END)
           ON CONFLICT (queue_id, priority) DO UPDATE
             SET waiting = c.waiting + EXCLUDED.waiting, leased = c.leased + EXCLUDED.leased;
       END IF;
       RETURN NULL;
     END $$",
    "DROP TRIGGER IF EXISTS queue_entries_count_change ON queue_entries",
    "CREATE TRIGGER queue_entries_count_change AFTER INSERT OR DELETE ON queue_entries
     FOR EACH ROW EXECUTE FUNCTION queue_entries_count()",
    "DROP TRIGGER IF EXISTS queue_entries_count_update ON queue_entries",
    "CREATE TRIGGER queue_entries_count_update
     AFTER UPDATE OF queue_id, priority, leased ON queue_entries FOR EACH ROW
     WHEN (OLD.queue_id IS DISTINCT FROM NEW.queue_id OR OLD.priority IS DISTINCT FROM NEW.priority
       OR OLD.leased IS DISTINCT FROM NEW.leased)
     EXECUTE FUNCTION queue_entries_count()",
];

// The trait elides `SchemaManager`'s lifetime; naming it here would not match.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let triggers: &[&str] = match db.get_database_backend() {
            DbBackend::Postgres => &POSTGRES_TRIGGERS,
            _ => &SQLITE_TRIGGERS,
        };
        // Counters and their triggers in one step, so no entry written in
        // between escapes the backfill (migrations run in a transaction on
        // PostgreSQL; SQLite runs them before the service serves).
        db.execute_unprepared(CREATE).await?;
        db.execute_unprepared("DELETE FROM queue_counts").await?;
        for sql in triggers {
            db.execute_unprepared(sql).await?;
        }
        db.execute_unprepared(BACKFILL).await?;
        db.execute_unprepared(POP_INDEX).await?;
        db.execute_unprepared("DROP INDEX IF EXISTS queue_entries_order_idx")
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let drops: &[&str] = match db.get_database_backend() {
            DbBackend::Postgres => &[
                "DROP TRIGGER IF EXISTS queue_entries_count_change ON queue_entries",
                "DROP TRIGGER IF EXISTS queue_entries_count_update ON queue_entries",
                "DROP FUNCTION IF EXISTS queue_entries_count()",
            ],
            _ => &[
                "DROP TRIGGER IF EXISTS queue_entries_count_insert",
                "DROP TRIGGER IF EXISTS queue_entries_count_delete",
                "DROP TRIGGER IF EXISTS queue_entries_count_update",
            ],
        };
        for sql in drops {
            db.execute_unprepared(sql).await?;
        }
        db.execute_unprepared(
            "CREATE INDEX IF NOT EXISTS queue_entries_order_idx
             ON queue_entries (queue_id, leased, priority, rank)",
        )
        .await?;
        db.execute_unprepared("DROP INDEX IF EXISTS queue_entries_pop_idx")
            .await?;
        db.execute_unprepared("DROP TABLE IF EXISTS queue_counts")
            .await?;
        Ok(())
    }
}
