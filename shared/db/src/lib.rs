//! Database plumbing shared by every service that owns tables.
//!
//! * [`connect`] opens a sea-orm connection to a `sqlite://` or
//!   `postgres://` URL. SQLite runs in WAL mode with `synchronous=NORMAL`
//!   (a committed transaction survives a killed process) and a busy timeout,
//!   so concurrent writers wait instead of failing.
//! * [`connect_and_migrate`] also applies a service's migrations at start.
//!   Each service names its own migration table (`seaql_migrations_<service>`)
//!   so services may share one PostgreSQL database without colliding.
//! * [`testing`] gives tests a fresh database per test on SQLite and, when
//!   `TASKLAB_TEST_POSTGRES_URL` is set, on PostgreSQL.
//! * [`lease`] runs a periodic job on one replica at a time (a lease row in
//!   the service's database, or a Redis key).

use std::path::Path;
use std::time::Duration;

use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbErr};
use sea_orm_migration::MigratorTrait;

pub mod lease;

pub use sea_orm;
pub use sea_orm_migration;

/// Which SQL engine a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite, the embedded store.
    Sqlite,
    /// PostgreSQL, the deployed store.
    Postgres,
}

impl Backend {
    /// The backend of a database URL, or `None` for an unsupported scheme.
    pub fn of_url(url: &str) -> Option<Backend> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }
}

/// The URL of a SQLite database file, created when missing.
pub fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}?mode=rwc", path.display())
}

/// Opens a connection pool to `url`.
pub async fn connect(url: &str) -> Result<DatabaseConnection, DbErr> {
    let backend = Backend::of_url(url)
        .ok_or_else(|| DbErr::Custom(format!("unsupported database URL scheme: {url}")))?;
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.sqlx_logging(false)
        .connect_timeout(Duration::from_secs(10));
    match backend {
        Backend::Sqlite => {
            opts.max_connections(4)
                .min_connections(1)
                .map_sqlx_sqlite_opts(|o| {
                    use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
                    o.journal_mode(SqliteJournalMode::Wal)
                        .synchronous(SqliteSynchronous::Normal)
                        .busy_timeout(Duration::from_secs(10))
                        .foreign_keys(true)
                });
        }
        Backend::Postgres => {
            opts.max_connections(16).min_connections(1);
        }
    }
    Database::connect(opts).await
}

/// Opens a connection and applies every pending migration of `M`.
pub async fn connect_and_migrate<M: MigratorTrait>(url: &str) -> Result<DatabaseConnection, DbErr> {
    let db = connect(url).await?;
    M::up(&db, None).await?;
    Ok(db)
}

pub mod testing {
    //! Fresh databases for tests.
    //!
    //! [`TestDb::sqlite`] makes a SQLite file in a temporary directory;
    //! [`TestDb::postgres`] creates a uniquely named database on the server
    //! at `TASKLAB_TEST_POSTGRES_URL` (an admin URL such as
    //! `postgres://postgres@127.0.0.1:5432/postgres`). Without that variable
    //! it returns `None` after printing a loud `SKIPPED` line — unless `CI`
    //! is set, where a missing backend is a failure, never a silent pass.

    use super::*;

    /// Environment variable with the admin URL of a PostgreSQL server for tests.
    pub const POSTGRES_ENV: &str = "TASKLAB_TEST_POSTGRES_URL";

    /// A database that lives as long as the value (SQLite) or the test
    /// cluster (PostgreSQL, which the test command creates fresh per run).
    #[derive(Debug)]
    pub struct TestDb {
        /// URL to pass to [`connect`] or a service.
        pub url: String,
        /// Which engine.
        pub backend: Backend,
        _dir: Option<tempfile::TempDir>,
    }

    impl TestDb {
        /// A fresh SQLite database file.
        pub fn sqlite() -> TestDb {
            let dir = tempfile::tempdir().expect("create temporary directory");
            let url = sqlite_url(&dir.path().join("test.db"));
            TestDb {
                url,
                backend: Backend::Sqlite,
                _dir: Some(dir),
            }
        }

        /// A fresh PostgreSQL database, or `None` (reported as skipped) when
        /// no server is configured outside CI.
        pub async fn postgres(test: &str) -> Option<TestDb> {
            let admin = require_env(POSTGRES_ENV, "PostgreSQL", test)?;
            let name = format!("tasklab_test_{}", uuid::Uuid::new_v4().simple());
            let conn = connect(&admin)
                .await
                .expect("connect to the test PostgreSQL server");
            use sea_orm::ConnectionTrait;
            conn.execute_unprepared(&format!("CREATE DATABASE {name}"))
                .await
                .expect("create test database");
            conn.close().await.ok();
            let base = admin
                .rsplit_once('/')
                .map_or(admin.as_str(), |(base, _)| base);
            let url = format!("{base}/{name}");
            Some(TestDb {
                url,
                backend: Backend::Postgres,
                _dir: None,
            })
        }

        /// Connects and applies the migrations of `M`.
        pub async fn migrated<M: MigratorTrait>(&self) -> DatabaseConnection {
            connect_and_migrate::<M>(&self.url)
                .await
                .expect("migrate test database")
        }
    }

    /// Reads `var`; when unset, prints a loud skip notice for `test` and
    /// returns `None`, or panics under CI where every backend must be present.
    pub fn require_env(var: &str, backend: &str, test: &str) -> Option<String> {
        match std::env::var(var) {
            Ok(value) if !value.is_empty() => Some(value),
            _ if std::env::var_os("CI").is_some() => {
                panic!("{test}: {backend} is required in CI but {var} is not set")
            }
            _ => {
                eprintln!(
                    "SKIPPED {test} on {backend}: set {var} to run it (the test command does)"
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::{ConnectionTrait, Statement};

    #[test]
    fn backend_of_url() {
        assert_eq!(
            Backend::of_url("sqlite://x.db?mode=rwc"),
            Some(Backend::Sqlite)
        );
        assert_eq!(
            Backend::of_url("postgres://u@h/db"),
            Some(Backend::Postgres)
        );
        assert_eq!(Backend::of_url("mysql://u@h/db"), None);
    }

    async fn select_one(url: &str) {
        let db = connect(url).await.unwrap();
        let row = db
            .query_one_raw(Statement::from_string(
                db.get_database_backend(),
                "SELECT 1 AS one",
            ))
            .await
            .unwrap()
            .unwrap();
        let one: i32 = row.try_get("", "one").unwrap();
        assert_eq!(one, 1);
    }

    #[tokio::test]
    async fn sqlite_connects_in_wal_mode() {
        let db = testing::TestDb::sqlite();
        select_one(&db.url).await;
        let conn = connect(&db.url).await.unwrap();
        let row = conn
            .query_one_raw(Statement::from_string(
                conn.get_database_backend(),
                "PRAGMA journal_mode",
            ))
            .await
            .unwrap()
            .unwrap();
        let mode: String = row.try_get("", "journal_mode").unwrap();
        assert_eq!(mode, "wal");
    }

    #[tokio::test]
    async fn postgres_test_database_is_fresh_and_usable() {
        let Some(db) =
            testing::TestDb::postgres("postgres_test_database_is_fresh_and_usable").await
        else {
            return;
        };
        select_one(&db.url).await;
    }

    #[tokio::test]
    async fn unsupported_scheme_is_an_error() {
        assert!(connect("mysql://nope").await.is_err());
    }
}
