//! The writer's database handle and its transactions.
//!
//! On PostgreSQL the writer uses a pool (several connections, reconnection
//! after a server restart) and sea-orm transactions. On SQLite it owns one
//! connection for its whole life and runs `BEGIN IMMEDIATE` / `COMMIT`
//! itself: a pooled connection is pinged by the pool every time a
//! transaction returns it, and the next transaction waits for that round
//! trip to the connection's thread — a third of the time a small group
//! took besides its commit. Statements reach both through sea-orm's
//! [`ConnectionTrait`], so the write code is the same on both engines.

use std::str::FromStr as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use sea_orm::sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteSynchronous,
};
use sea_orm::sqlx::{self, ConnectOptions as _};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, ExecResult,
    QueryResult, RuntimeErr, SqliteTransactionMode, Statement, TransactionOptions,
    TransactionTrait, Value,
};
use tokio::sync::Mutex;

/// Pages the SQLite WAL may hold before the committing writer copies them
/// into the database file (SQLite's default is 1000). Every commit is still
/// fsynced to the WAL (`synchronous=FULL`); a larger WAL only checkpoints
/// less often, so a page rewritten by many commits (the tail of a series'
/// chunk index) is copied once, and the checkpoint's own fsyncs are paid
/// every few hundred commits instead of every few.
const WAL_AUTOCHECKPOINT_PAGES: u32 = 10_000;

/// Where the writer writes.
#[derive(Debug)]
pub(crate) enum WriteDb {
    /// PostgreSQL: a pool.
    Pool(DatabaseConnection),
    /// SQLite: the one write connection.
    Sqlite(SqliteWriter),
}

/// The owned SQLite write connection.
#[derive(Debug)]
pub(crate) struct SqliteWriter {
    conn: Mutex<SqliteConnection>,
    /// A transaction was dropped without commit or rollback (an error cut
    /// it short): the next `begin` rolls it back first.
    left_open: AtomicBool,
}

/// Opens the write handle for `url`. On SQLite: one connection in WAL mode
/// with `synchronous=FULL`, so a commit is fsynced before the writer
/// answers.
pub(crate) async fn connect(url: &str) -> Result<WriteDb, DbErr> {
    if tasklab_db::Backend::of_url(url) != Some(tasklab_db::Backend::Sqlite) {
        // The pool of `tasklab_db::connect`, except that a connection is
        // not pinged when the writer takes it (the pool already pings it
        // when a transaction gives it back; a second ping was one more
        // round trip per group), unless it sat idle for a while.
        let mut opts = sea_orm::ConnectOptions::new(url.to_owned());
        opts.sqlx_logging(false)
            .connect_timeout(Duration::from_secs(10))
            .max_connections(16)
            .min_connections(1)
            .test_before_acquire_if_idle_for(Duration::from_secs(10));
        return sea_orm::Database::connect(opts).await.map(WriteDb::Pool);
    }
    let options = SqliteConnectOptions::from_str(url)
        .map_err(conn_err)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10))
        // 16 MiB: the writer reads little besides the upper levels of the
        // chunk index (about 9 MiB at a billion points) and the rows of the
        // series it writes. SQLite scans the whole page-cache hash table at
        // the end of each write transaction here, so a larger cache costs
        // every commit (64 MiB: 4% of the ingest CPU).
        .pragma("cache_size", "-16384")
        // A multi-row statement inside a transaction keeps a statement
        // journal (the pages it changed, to undo it alone); past 64 KiB
        // SQLite spills it to a temporary file. A group's chunk insert
        // changes more than that, so every commit wrote and deleted a temp
        // file, as many bytes as half its WAL. In memory it costs a few
        // hundred KiB and nothing else: statement journals play no part in
        // crash recovery.
        .pragma("temp_store", "memory")
        .pragma("wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES.to_string());
    let conn = tokio::time::timeout(Duration::from_secs(10), options.connect())
        .await
        .map_err(|_| DbErr::Conn(RuntimeErr::Internal("connect timed out".into())))?
        .map_err(conn_err)?;
    Ok(WriteDb::Sqlite(SqliteWriter {
        conn: Mutex::new(conn),
        left_open: AtomicBool::new(false),
    }))
}

impl WriteDb {
    /// Starts a write transaction (`IMMEDIATE` on SQLite: it takes the write
    /// lock now rather than at the first write).
    pub(crate) async fn begin(&self) -> Result<Tx<'_>, DbErr> {
        match self {
            WriteDb::Pool(db) => {
                let options = match db.get_database_backend() {
                    DbBackend::Sqlite => TransactionOptions {
                        sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                        ..TransactionOptions::default()
                    },
                    _ => TransactionOptions::default(),
                };
                db.begin_with_options(options).await.map(Tx::Pool)
            }
            WriteDb::Sqlite(writer) => {
                if writer.left_open.swap(false, Ordering::SeqCst) {
                    // Fails harmlessly when SQLite already rolled it back.
                    let _ = run(&writer.conn, "ROLLBACK").await;
                }
                run(&writer.conn, "BEGIN IMMEDIATE").await?;
                Ok(Tx::Sqlite(SqliteTx { writer, open: true }))
            }
        }
    }
}

/// A write transaction. Dropped without [`Tx::commit`] or [`Tx::rollback`]
/// it rolls back (on SQLite at the next [`WriteDb::begin`]).
#[derive(Debug)]
pub(crate) enum Tx<'a> {
    Pool(DatabaseTransaction),
    Sqlite(SqliteTx<'a>),
}

/// A transaction on the owned SQLite connection.
#[derive(Debug)]
pub(crate) struct SqliteTx<'a> {
    writer: &'a SqliteWriter,
    open: bool,
}

impl Drop for SqliteTx<'_> {
    fn drop(&mut self) {
        if self.open {
            self.writer.left_open.store(true, Ordering::SeqCst);
        }
    }
}

impl Tx<'_> {
    /// Commits; on SQLite a failed commit is rolled back.
    pub(crate) async fn commit(self) -> Result<(), DbErr> {
        match self {
            Tx::Pool(txn) => txn.commit().await,
            Tx::Sqlite(mut tx) => {
                let result = run(&tx.writer.conn, "COMMIT").await;
                if result.is_err() {
                    let _ = run(&tx.writer.conn, "ROLLBACK").await;
                }
                tx.open = false;
                result
            }
        }
    }

    /// Rolls back.
    pub(crate) async fn rollback(self) -> Result<(), DbErr> {
        match self {
            Tx::Pool(txn) => txn.rollback().await,
            Tx::Sqlite(mut tx) => {
                tx.open = false;
                run(&tx.writer.conn, "ROLLBACK").await
            }
        }
    }
}

fn conn_err(err: sqlx::Error) -> DbErr {
    DbErr::Conn(RuntimeErr::SqlxError(Arc::new(err)))
}

/// Connection-level failures become `DbErr::Conn` (the store's
/// `unavailable`), the others `Exec`/`Query`.
fn sqlx_err(err: sqlx::Error, query: bool) -> DbErr {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed => conn_err(err),
        other if query => DbErr::Query(RuntimeErr::SqlxError(Arc::new(other))),
        other => DbErr::Exec(RuntimeErr::SqlxError(Arc::new(other))),
    }
}

async fn run(conn: &Mutex<SqliteConnection>, sql: &'static str) -> Result<(), DbErr> {
    let mut conn = conn.lock().await;
    sqlx::raw_sql(sql)
        .execute(&mut *conn)
        .await
        .map(|_| ())
        .map_err(|e| sqlx_err(e, false))
}

type SqliteQuery<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>;

/// `stmt` as a sqlx query with its values bound, by value (blobs are moved,
/// not copied).
fn query(stmt: Statement) -> Result<SqliteQuery<'static>, DbErr> {
    let mut q = sqlx::query(sqlx::AssertSqlSafe(stmt.sql));
    for value in stmt.values.map(|v| v.0).unwrap_or_default() {
        q = match value {
            Value::Bool(v) => q.bind(v),
            Value::TinyInt(v) => q.bind(v.map(i64::from)),
            Value::SmallInt(v) => q.bind(v.map(i64::from)),
            Value::Int(v) => q.bind(v.map(i64::from)),
            Value::BigInt(v) => q.bind(v),
            Value::TinyUnsigned(v) => q.bind(v.map(i64::from)),
            Value::SmallUnsigned(v) => q.bind(v.map(i64::from)),
            Value::Unsigned(v) => q.bind(v.map(i64::from)),
            Value::BigUnsigned(v) => q.bind(
                v.map(i64::try_from)
                    .transpose()
                    .map_err(|_| DbErr::Custom("integer out of range".into()))?,
            ),
            Value::Float(v) => q.bind(v.map(f64::from)),
            Value::Double(v) => q.bind(v),
            Value::String(v) => q.bind(v),
            Value::Bytes(v) => q.bind(v),
            other => {
                return Err(DbErr::Custom(format!(
                    "the SQLite writer cannot bind {other:?}"
                )));
            }
        };
    }
    Ok(q)
}

#[async_trait]
impl ConnectionTrait for Tx<'_> {
    fn get_database_backend(&self) -> DbBackend {
        match self {
            Tx::Pool(txn) => txn.get_database_backend(),
            Tx::Sqlite(_) => DbBackend::Sqlite,
        }
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        match self {
            Tx::Pool(txn) => txn.execute_raw(stmt).await,
            Tx::Sqlite(tx) => {
                let q = query(stmt)?;
                let mut conn = tx.writer.conn.lock().await;
                q.execute(&mut *conn)
                    .await
                    .map(ExecResult::from)
                    .map_err(|e| sqlx_err(e, false))
            }
        }
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        match self {
            Tx::Pool(txn) => txn.execute_unprepared(sql).await,
            Tx::Sqlite(tx) => {
                let mut conn = tx.writer.conn.lock().await;
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                    .execute(&mut *conn)
                    .await
                    .map(ExecResult::from)
                    .map_err(|e| sqlx_err(e, false))
            }
        }
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        match self {
            Tx::Pool(txn) => txn.query_one_raw(stmt).await,
            Tx::Sqlite(tx) => {
                let q = query(stmt)?;
                let mut conn = tx.writer.conn.lock().await;
                q.fetch_optional(&mut *conn)
                    .await
                    .map(|row| row.map(QueryResult::from))
                    .map_err(|e| sqlx_err(e, true))
            }
        }
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        match self {
            Tx::Pool(txn) => txn.query_all_raw(stmt).await,
            Tx::Sqlite(tx) => {
                let q = query(stmt)?;
                let mut conn = tx.writer.conn.lock().await;
                q.fetch_all(&mut *conn)
                    .await
                    .map(|rows| rows.into_iter().map(QueryResult::from).collect())
                    .map_err(|e| sqlx_err(e, true))
            }
        }
    }
}
