//! Leases: run a periodic job on one replica at a time.
//!
//! A [`Lease`] is a named, expiring claim held by one holder (a string unique
//! per process, [`holder_id`]). [`Lease::acquire`] takes the lease when it is
//! free or expired and renews it when the caller already holds it, in one
//! atomic step; [`Lease::release`] gives it up if still held. Two
//! implementations:
//!
//! * [`SqlLease`] — a row in the table `tasklab_leases(name, holder,
//!   expires_at)` of the service's own database, on SQLite and PostgreSQL
//!   alike. Acquire/renew is one `INSERT … ON CONFLICT (name) DO UPDATE …
//!   WHERE holder = me OR expires_at < now`; times are the database's clock
//!   (milliseconds since the Unix epoch), so replicas' clocks do not matter.
//!   The table is created on first use (`CREATE TABLE IF NOT EXISTS`).
//! * [`RedisLease`] — the key `key` set by a Lua script: `SET key holder PX
//!   ttl` when absent, `PEXPIRE` when its value is the holder's, nothing
//!   otherwise; release deletes the key only when its value is the holder's.
//!
//! [`Leadership`] turns a lease into a yes/no for a job loop:
//! [`Leadership::spawn`] starts a task that calls `acquire` every `ttl / 3`,
//! and [`Leadership::is_leader`] is true only while the last successful
//! acquire is younger than `ttl` (minus a tenth, for safety) measured from
//! before the call was sent. So a holder that cannot renew (lost the lease,
//! or lost the store) stops running the job by the time the lease can
//! expire, and a crashed holder's lease expires after `ttl`, after which
//! another replica's renewal loop takes it within `ttl / 3`.
//! [`Leadership::unleased`] is always leader (a single-process deployment).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement};
use tokio::time::Instant;

/// Errors of a lease store.
pub type LeaseError = Box<dyn std::error::Error + Send + Sync>;

/// A named, expiring claim that one holder at a time may have.
#[async_trait]
pub trait Lease: Send + Sync + std::fmt::Debug {
    /// Takes the lease when it is free or expired, or renews it when this
    /// holder has it, for another `ttl`. Returns whether this holder now
    /// holds it.
    async fn acquire(&self) -> Result<bool, LeaseError>;
    /// Gives the lease up when this holder has it; otherwise does nothing.
    async fn release(&self) -> Result<(), LeaseError>;
    /// The lease's name (for logs).
    fn name(&self) -> &str;
    /// How long an acquire or renewal lasts.
    fn ttl(&self) -> Duration;
}

/// A holder id unique per process: `$HOSTNAME` (the pod name on Kubernetes)
/// and a random suffix.
pub fn holder_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "tasklab".to_owned());
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}", &id[..12])
}

/// The SQL table of leases.
pub const LEASE_TABLE: &str = "tasklab_leases";

/// A lease stored as a row of `tasklab_leases` in a SQLite or PostgreSQL
/// database.
#[derive(Debug, Clone)]
pub struct SqlLease {
    db: DatabaseConnection,
    name: String,
    holder: String,
    ttl: Duration,
}

impl SqlLease {
    /// A lease named `name` held as `holder`, creating the table when
    /// missing.
    pub async fn new(
        db: DatabaseConnection,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<SqlLease, DbErr> {
        let create = format!(
            "CREATE TABLE IF NOT EXISTS {LEASE_TABLE} (\
             name VARCHAR(200) NOT NULL PRIMARY KEY, \
             holder VARCHAR(200) NOT NULL, \
             expires_at BIGINT NOT NULL)"
        );
        // Two processes creating the table at once on PostgreSQL may race on
        // the catalog; the loser's retry sees the table.
        if let Err(first) = db.execute_unprepared(&create).await {
            tracing::debug!(error = %first, "creating the lease table failed; retrying once");
            db.execute_unprepared(&create).await?;
        }
        Ok(SqlLease {
            db,
            name: name.to_owned(),
            holder: holder.to_owned(),
            ttl,
        })
    }

    fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    /// The database's clock in milliseconds since the Unix epoch, as SQL.
    fn now_ms(&self) -> &'static str {
        match self.backend() {
            DbBackend::Postgres => "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT",
            _ => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
        }
    }

    /// Placeholder `n` (1-based) of the backend.
    fn p(&self, n: usize) -> String {
        match self.backend() {
            DbBackend::Postgres => format!("${n}"),
            _ => "?".to_owned(),
        }
    }
}

#[async_trait]
impl Lease for SqlLease {
    async fn acquire(&self) -> Result<bool, LeaseError> {
        let now = self.now_ms();
        let (p1, p2, p3) = (self.p(1), self.p(2), self.p(3));
        let sql = format!(
            "INSERT INTO {LEASE_TABLE} (name, holder, expires_at) \
             VALUES ({p1}, {p2}, {now} + {p3}) \
             ON CONFLICT (name) DO UPDATE \
             SET holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE {LEASE_TABLE}.holder = excluded.holder OR {LEASE_TABLE}.expires_at < {now}"
        );
        let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX / 4);
        let result = self
            .db
            .execute_raw(Statement::from_sql_and_values(
                self.backend(),
                sql,
                [
                    self.name.clone().into(),
                    self.holder.clone().into(),
                    ttl_ms.into(),
                ],
            ))
            .await?;
        Ok(result.rows_affected() == 1)
    }

    async fn release(&self) -> Result<(), LeaseError> {
        let sql = format!(
            "DELETE FROM {LEASE_TABLE} WHERE name = {} AND holder = {}",
            self.p(1),
            self.p(2)
        );
        self.db
            .execute_raw(Statement::from_sql_and_values(
                self.backend(),
                sql,
                [self.name.clone().into(), self.holder.clone().into()],
            ))
            .await?;
        Ok(())
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn ttl(&self) -> Duration {
        self.ttl
    }
}

const REDIS_ACQUIRE: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

const REDIS_RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// A lease stored as a Redis key whose value is the holder.
#[derive(Clone)]
pub struct RedisLease {
    conn: redis::aio::ConnectionManager,
    key: String,
    holder: String,
    ttl: Duration,
    acquire: Arc<redis::Script>,
    release: Arc<redis::Script>,
}

impl std::fmt::Debug for RedisLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLease")
            .field("key", &self.key)
            .field("holder", &self.holder)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl RedisLease {
    /// A lease on the key `key` of the Redis at `url`, held as `holder`.
    pub async fn connect(
        url: &str,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<RedisLease, LeaseError> {
        let conn = redis::Client::open(url)?.get_connection_manager().await?;
        Ok(RedisLease {
            conn,
            key: key.to_owned(),
            holder: holder.to_owned(),
            ttl,
            acquire: Arc::new(redis::Script::new(REDIS_ACQUIRE)),
            release: Arc::new(redis::Script::new(REDIS_RELEASE)),
        })
    }
}

#[async_trait]
impl Lease for RedisLease {
    async fn acquire(&self) -> Result<bool, LeaseError> {
        let ttl_ms = u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut conn = self.conn.clone();
        let held: i64 = self
            .acquire
            .key(&self.key)
            .arg(&self.holder)
            .arg(ttl_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok(held == 1)
    }

    async fn release(&self) -> Result<(), LeaseError> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .release
            .key(&self.key)
            .arg(&self.holder)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    fn name(&self) -> &str {
        &self.key
    }

    fn ttl(&self) -> Duration {
        self.ttl
    }
}

/// Whether this process may run a singleton job now; see the module docs.
#[derive(Debug, Clone)]
pub struct Leadership {
    lease: Option<Arc<dyn Lease>>,
    valid_until: Arc<Mutex<Option<Instant>>>,
}

impl Leadership {
    /// Always leader: for a single process that runs every job itself.
    pub fn unleased() -> Leadership {
        Leadership {
            lease: None,
            valid_until: Arc::new(Mutex::new(None)),
        }
    }

    /// Leadership through `lease`, not yet acquired; call [`Self::renew`]
    /// (or use [`Self::spawn`]).
    pub fn new(lease: Arc<dyn Lease>) -> Leadership {
        Leadership {
            lease: Some(lease),
            valid_until: Arc::new(Mutex::new(None)),
        }
    }

    /// Leadership through `lease`, acquired at once and then renewed every
    /// `ttl / 3` by a task that lives as long as the runtime (or until the
    /// returned handle is aborted).
    pub fn spawn(lease: Arc<dyn Lease>) -> (Leadership, tokio::task::JoinHandle<()>) {
        let leadership = Leadership::new(lease.clone());
        let every = (lease.ttl() / 3).max(Duration::from_millis(10));
        let keeper = leadership.clone();
        let handle = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                keeper.renew().await;
            }
        });
        (leadership, handle)
    }

    /// Whether the job may run now: unleased, or the lease was acquired or
    /// renewed less than `ttl - ttl/10` ago.
    pub fn is_leader(&self) -> bool {
        if self.lease.is_none() {
            return true;
        }
        let until = *self.valid_until.lock().unwrap_or_else(|e| e.into_inner());
        until.is_some_and(|until| Instant::now() < until)
    }

    /// One acquire-or-renew attempt; returns [`Self::is_leader`] after it.
    /// A store error keeps the previous validity (the lease may still be
    /// ours until it expires) and is logged.
    pub async fn renew(&self) -> bool {
        let Some(lease) = &self.lease else {
            return true;
        };
        let was = self.is_leader();
        let sent = Instant::now();
        match lease.acquire().await {
            Ok(true) => {
                let ttl = lease.ttl();
                *self.valid_until.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(sent + ttl - ttl / 10);
                if !was {
                    tracing::info!(lease = lease.name(), "lease acquired; running the job here");
                }
            }
            Ok(false) => {
                *self.valid_until.lock().unwrap_or_else(|e| e.into_inner()) = None;
                if was {
                    tracing::warn!(
                        lease = lease.name(),
                        "lease lost to another holder; job stops here"
                    );
                }
            }
            Err(error) => {
                tracing::warn!(lease = lease.name(), %error, "lease renewal failed; retrying");
            }
        }
        self.is_leader()
    }

    /// Gives the lease up (on shutdown) so another replica takes over at its
    /// next renewal instead of after the ttl.
    pub async fn release(&self) {
        let Some(lease) = &self.lease else {
            return;
        };
        *self.valid_until.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if let Err(error) = lease.release().await {
            tracing::warn!(lease = lease.name(), %error, "lease release failed; it expires after its ttl");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{TestDb, require_env};

    const TTL: Duration = Duration::from_millis(600);

    /// Two contenders; the holder stops renewing; the other takes over after
    /// the ttl; the former holder knows it lost.
    async fn contend(a: Arc<dyn Lease>, b: Arc<dyn Lease>) {
        let la = Leadership::new(a.clone());
        let lb = Leadership::new(b.clone());
        assert!(!la.is_leader(), "nobody leads before acquiring");
        assert!(la.renew().await, "first contender takes the free lease");
        assert!(!lb.renew().await, "second contender is refused");
        assert!(la.is_leader() && !lb.is_leader());
        // Renewal by the holder works and keeps the other out.
        tokio::time::sleep(TTL / 3).await;
        assert!(la.renew().await);
        assert!(!lb.renew().await);
        // The holder stops renewing (crashed); within the ttl nobody else gets it.
        tokio::time::sleep(TTL / 2).await;
        assert!(!lb.renew().await, "lease not yet expired");
        tokio::time::sleep(TTL / 2 + Duration::from_millis(100)).await;
        assert!(
            !la.is_leader(),
            "a holder that stopped renewing stops leading"
        );
        assert!(
            lb.renew().await,
            "the other contender takes over after the ttl"
        );
        assert!(lb.is_leader());
        // The former holder learns it lost the lease.
        assert!(!la.renew().await);
        assert!(!la.is_leader());
        // Release hands it back at once.
        lb.release().await;
        assert!(!lb.is_leader());
        assert!(la.renew().await, "a released lease is free");
        assert!(!lb.renew().await);
        la.release().await;
    }

    async fn sql_pair(url: &str, name: &str) -> (Arc<dyn Lease>, Arc<dyn Lease>) {
        // Separate pools, as two replicas would have.
        let a = SqlLease::new(crate::connect(url).await.unwrap(), name, "a", TTL)
            .await
            .unwrap();
        let b = SqlLease::new(crate::connect(url).await.unwrap(), name, "b", TTL)
            .await
            .unwrap();
        (Arc::new(a), Arc::new(b))
    }

    #[tokio::test]
    async fn sql_lease_on_sqlite() {
        let db = TestDb::sqlite();
        let (a, b) = sql_pair(&db.url, "job").await;
        contend(a, b).await;
        // Another name is an independent lease.
        let (c, _) = sql_pair(&db.url, "other").await;
        assert!(c.acquire().await.unwrap());
    }

    #[tokio::test]
    async fn sql_lease_on_postgres() {
        let Some(db) = TestDb::postgres("sql_lease_on_postgres").await else {
            return;
        };
        let (a, b) = sql_pair(&db.url, "job").await;
        contend(a, b).await;
    }

    #[tokio::test]
    async fn sql_lease_many_contenders_one_winner() {
        let db = TestDb::sqlite();
        let conn = crate::connect(&db.url).await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..8 {
            let lease = SqlLease::new(conn.clone(), "race", &format!("h{i}"), TTL)
                .await
                .unwrap();
            tasks.push(tokio::spawn(async move { lease.acquire().await.unwrap() }));
        }
        let mut winners = 0;
        for t in tasks {
            winners += usize::from(t.await.unwrap());
        }
        assert_eq!(winners, 1);
    }

    #[tokio::test]
    async fn redis_lease() {
        let Some(url) = require_env("TASKLAB_TEST_REDIS_URL", "Redis", "redis_lease") else {
            return;
        };
        let key = format!("tasklab:test:lease:{}", uuid::Uuid::new_v4().simple());
        let a = RedisLease::connect(&url, &key, "a", TTL).await.unwrap();
        let b = RedisLease::connect(&url, &key, "b", TTL).await.unwrap();
        contend(Arc::new(a), Arc::new(b)).await;
    }

    #[tokio::test]
    async fn spawned_keeper_holds_and_unleased_always_leads() {
        assert!(Leadership::unleased().is_leader());
        let db = TestDb::sqlite();
        let (a, b) = sql_pair(&db.url, "kept").await;
        let (la, handle) = Leadership::spawn(a);
        let lb = Leadership::new(b);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(la.is_leader());
        // Well past one ttl: the keeper renewed, so the other is still out.
        tokio::time::sleep(TTL + TTL / 2).await;
        assert!(la.is_leader());
        assert!(!lb.renew().await);
        handle.abort();
    }
}
