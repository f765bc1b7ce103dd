//! The Redis queue backend: every mutation is one Lua script, so multi-key
//! moves (waiting ⇄ leased, queue ⇄ queue) are atomic and a script run twice
//! (two reapers) cannot act twice.
//!
//! Keys, all under one hash tag `{prefix}` (`queues.redis_prefix`, default
//! [`DEFAULT_PREFIX`]; deployments sharing a Redis database need distinct
//! prefixes) so a cluster keeps them in one slot (the scripts build key
//! names from the first key, which is only valid within that slot):
//!
//! * `{p}:q:<queue>` — ZSET of waiting entries, all scores 0, ordered by
//!   member: 10 digits of `2147483647 - priority`, 16 digits of
//!   `rank + 2^52`, then the task id. `ZPOPMIN` pops the head, `ZRANK` is
//!   the position, and a band is a lexicographic range.
//! * `{p}:t:<task>` — HASH of the task's entry: `q p r m a d s l` (queue,
//!   priority, rank, member, added ms, deliveries, seq, leased) and, when
//!   leased, `lid w acq exp dur ren`.
//! * `{p}:ql:<queue>` — ZSET of leased task ids by acquisition time.
//! * `{p}:exp` — ZSET of leased task ids by expiry (the reaper's index).
//! * `{p}:lid` — HASH lease id → task id; `{p}:w:<worker>` — SET of the
//!   tasks a worker holds leases on; `{p}:all` — SET of every present task.
//! * `{p}:seq` — the change counter; `{p}:chg` — ZSET task → last change seq.
//! * `{p}:pops:<queue>` — ZSET of pop samples by time
//!   (`<lease id>:<wait ms>:<pending>`); `{p}:popq` — SET of such queues.
//! * `{p}:qm:<queue>` — present while the queue exists: written when the
//!   queue is created (or found in SQL without it, e.g. after a restart),
//!   deleted with the queue's entries. Adds and pops check it in their
//!   script, so no SQL look-up precedes them and no add lands in a queue
//!   deleted meanwhile. `{p}:qdead` — SET of deleted queue ids, so a replica
//!   that read the queue from SQL just before its deletion cannot write the
//!   key back.
//! * `{p}:epoch` — the store epoch: missing after a restart without
//!   persistence, so the next reader creates a new one.
//! * `{p}:wakers` — ZSET of the live wake listeners (one per replica) by
//!   expiry in server time; channel `{p}:wake:<listener>` — each push
//!   publishes the queue id to every listener but the pushing backend's own
//!   ([`RedisBackend::spawn_wake_listener`]): the service that pushed wakes
//!   its own waiters in process, so a single replica sends no message at
//!   all.
//!
//! Times are milliseconds (exact in Lua's doubles and in `%.0f`).
//!
//! Round trips: every call is one `EVALSHA` on a connection the calling task
//! drives itself (`conn.rs` says why); the scripts are loaded once at
//! connect, and again by the first call that finds them gone. A handoff
//! (add, pop, ack) is three round trips, and its scripts (`lua.rs`) keep to
//! about a dozen `redis.call`s each.

mod conn;
mod lua;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redis::Value;
use tasklab_error::{Error, Result};

use self::conn::{CallError, Pool, Subscription, pack};
use self::lua::{Lua, Scripts};
use super::{
    Acked, Added, Disposition, Entry, Lease, LeaseTarget, Move, PopSample, Presence, QueueBackend,
    StepOutcome, from_millis, millis, new_lease_id,
};
use crate::errors;
use crate::service::WakeHub;

/// The default key prefix (`queues.redis_prefix`).
pub const DEFAULT_PREFIX: &str = "tasklab:queues";

/// How long a wake listener stays registered without renewing.
pub const WAKER_TTL: Duration = Duration::from_secs(30);
/// How often a wake listener renews its registration.
pub const WAKER_RENEW: Duration = Duration::from_secs(10);

const FIELDS: usize = 13;

fn num(s: &str) -> i64 {
    s.parse::<f64>().map_or(0, |f| f as i64)
}

fn parse_entry(f: &[String]) -> Entry {
    let leased = f[6] == "1";
    let pos = num(&f[4]);
    let lease = leased.then(|| parse_lease(f));
    Entry {
        task_id: f[0].clone(),
        queue_id: f[1].clone(),
        added: from_millis(num(&f[2])),
        priority: i32::try_from(num(&f[3])).unwrap_or(0),
        position: if leased || pos < 0 {
            None
        } else {
            u32::try_from(pos).ok()
        },
        lease,
        delivery_count: u32::try_from(num(&f[5])).unwrap_or(0),
    }
}

fn parse_lease(f: &[String]) -> Lease {
    Lease {
        lease_id: f[7].clone(),
        task_id: f[0].clone(),
        queue_id: f[1].clone(),
        worker_id: f[8].clone(),
        priority: i32::try_from(num(&f[3])).unwrap_or(0),
        added: from_millis(num(&f[2])),
        acquired: from_millis(num(&f[9])),
        expires: from_millis(num(&f[10])),
        duration: Duration::from_millis(u64::try_from(num(&f[11])).unwrap_or(0)),
        last_renewed: from_millis(num(&f[12])),
        delivery_attempt: u32::try_from(num(&f[5])).unwrap_or(0),
    }
}

fn script_error(f: &[String]) -> Error {
    let arg = f.get(2).map_or("", String::as_str);
    match f.get(1).map(String::as_str) {
        Some("task_already_queued") => errors::task_already_queued("", arg),
        Some("queue_full") => errors::queue_full(arg),
        Some("queue_not_found") => errors::queue_not_found(arg),
        Some("task_not_queued") => errors::task_not_queued(arg),
        Some("entry_leased") => errors::entry_leased(arg),
        Some("lease_not_found") => errors::lease_not_found(arg),
        Some("lease_not_owned") => errors::lease_not_owned(arg),
        Some("lease_expired") => errors::lease_expired(arg),
        _ => errors::redis(format!("unexpected script reply {f:?}")),
    }
}

fn target_args(target: &LeaseTarget) -> (&'static str, &str) {
    match target {
        LeaseTarget::LeaseId(id) => ("lease", id.as_str()),
        LeaseTarget::TaskId(id) => ("task", id.as_str()),
    }
}

fn ms_str(t: DateTime<Utc>) -> String {
    millis(t).to_string()
}

/// Entries in Redis. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RedisBackend {
    pool: Arc<Pool>,
    base: String,
    /// Names this backend's wake listener (and its channel) in
    /// `{p}:wakers`; pushing scripts skip it.
    origin: Arc<str>,
    scripts: Arc<Scripts>,
}

fn decode<T: redis::FromRedisValue>(v: Value) -> Result<T> {
    redis::from_redis_value(v).map_err(errors::redis)
}

impl RedisBackend {
    /// Connects to `url` and loads the scripts; every key lives under the
    /// hash tag `{prefix}`.
    pub async fn connect(url: &str, prefix: &str) -> Result<RedisBackend> {
        let client = redis::Client::open(url).map_err(errors::redis)?;
        let pool = Pool::new(client.get_connection_info()).map_err(errors::redis)?;
        let backend = RedisBackend {
            pool: Arc::new(pool),
            base: format!("{{{prefix}}}"),
            origin: uuid::Uuid::new_v4().simple().to_string().into(),
            scripts: Arc::new(Scripts::new()),
        };
        backend.load_scripts().await?;
        Ok(backend)
    }

    /// Loads every script (one round trip), so `EVALSHA` finds them; a
    /// server that lost them (a restart) gets each again on first use.
    async fn load_scripts(&self) -> Result<()> {
        let all = self.scripts.all();
        let mut req = Vec::new();
        for lua in all {
            pack(&mut req, &["SCRIPT", "LOAD", lua.code.as_str()]);
        }
        let replies = self
            .pool
            .call(&req, all.len())
            .await
            .map_err(errors::redis)?;
        match replies.into_iter().find_map(Result::err) {
            Some(msg) => Err(errors::redis(CallError::Server(msg))),
            None => Ok(()),
        }
    }

    /// Runs a script by its SHA1 with the prefix as its one key; loads it
    /// and runs it again (one round trip) when the server does not know it.
    async fn run<T: redis::FromRedisValue>(&self, lua: &Lua, args: &[&str]) -> Result<T> {
        let mut parts: Vec<&str> = Vec::with_capacity(4 + args.len());
        parts.extend_from_slice(&["EVALSHA", lua.hash.as_str(), "1", self.base.as_str()]);
        parts.extend_from_slice(args);
        let mut req = Vec::with_capacity(64 + parts.iter().map(|p| p.len() + 16).sum::<usize>());
        pack(&mut req, &parts);
        match self.pool.call1(&req).await {
            Ok(v) => decode(v),
            Err(CallError::Server(msg)) if msg.starts_with("NOSCRIPT") => {
                let mut again = Vec::with_capacity(req.len() + lua.code.len() + 64);
                pack(&mut again, &["SCRIPT", "LOAD", lua.code.as_str()]);
                again.extend_from_slice(&req);
                let mut replies = self.pool.call(&again, 2).await.map_err(errors::redis)?;
                match replies.pop() {
                    Some(Ok(v)) => decode(v),
                    Some(Err(msg)) => Err(errors::redis(CallError::Server(msg))),
                    None => Err(errors::redis("no reply")),
                }
            }
            Err(err) => Err(errors::redis(err)),
        }
    }

    async fn strings(&self, lua: &Lua, args: &[&str]) -> Result<Vec<String>> {
        self.run::<Vec<String>>(lua, args).await
    }

    /// One plain command.
    async fn command<T: redis::FromRedisValue>(&self, args: &[&str]) -> Result<T> {
        let mut req = Vec::new();
        pack(&mut req, args);
        decode(self.pool.call1(&req).await.map_err(errors::redis)?)
    }

    /// Starts the task that turns pushes made by other processes into
    /// wake-ups of this process's waiters (`hub`): it subscribes to this
    /// backend's channel `{p}:wake:<origin>`, then records the origin in
    /// `{p}:wakers` for [`WAKER_TTL`] of server time, renewed every
    /// [`WAKER_RENEW`], so pushing scripts publish the queue id to it. It
    /// reconnects (and registers again) after a failure, e.g. a restart.
    ///
    /// Pushes made through this backend are not announced to its own
    /// listener: the service that pushed signals its hub itself. One backend
    /// therefore serves one service; replicas each connect their own.
    pub fn spawn_wake_listener(&self, hub: Arc<WakeHub>) -> tokio::task::JoinHandle<()> {
        let backend = self.clone();
        let channel = format!("{}:wake:{}", self.base, self.origin);
        tokio::spawn(async move {
            loop {
                if let Err(err) = backend.listen(&channel, &hub).await {
                    tracing::warn!(error = %err, "redis wake listener failed; reconnecting");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    }

    /// One subscription of the wake listener, until its connection fails.
    async fn listen(&self, channel: &str, hub: &WakeHub) -> Result<()> {
        let mut sub = Subscription::open(&self.pool, channel)
            .await
            .map_err(errors::redis)?;
        // Subscribed first, registered second: every push that sees the
        // registration reaches the subscription.
        let ttl = WAKER_TTL.as_millis().to_string();
        let mut renew = tokio::time::interval(WAKER_RENEW);
        loop {
            tokio::select! {
                _ = renew.tick() => {
                    self.run::<i64>(&self.scripts.register, &[&self.origin, &ttl]).await?;
                }
                msg = sub.next() => {
                    let payload = msg.map_err(errors::redis)?;
                    if let Ok(queue) = std::str::from_utf8(&payload) {
                        hub.notify(queue);
                    }
                }
            }
        }
    }

    fn entries(f: &[String]) -> Vec<Entry> {
        f.chunks_exact(FIELDS).map(parse_entry).collect()
    }

    fn leases_of(f: &[String]) -> Vec<Lease> {
        f.chunks_exact(FIELDS).map(parse_lease).collect()
    }
}

#[async_trait]
impl QueueBackend for RedisBackend {
    async fn create_queue(&self, queue_id: &str) -> Result<()> {
        self.ensure_queue(queue_id).await.map(|_| ())
    }

    async fn ensure_queue(&self, queue_id: &str) -> Result<bool> {
        let done: i64 = self.run(&self.scripts.ensure_queue, &[queue_id]).await?;
        Ok(done == 1)
    }

    async fn epoch(&self, now: DateTime<Utc>) -> Result<String> {
        let fresh = format!("redis-{}-{}", millis(now), uuid::Uuid::new_v4().simple());
        self.run::<String>(&self.scripts.epoch, &[&fresh]).await
    }

    async fn current_seq(&self) -> Result<u64> {
        let seq: Option<u64> = self
            .command(&["GET", &format!("{}:seq", self.base)])
            .await?;
        Ok(seq.unwrap_or(0))
    }

    async fn add(
        &self,
        queue_id: &str,
        task_id: &str,
        priority: i32,
        replace_existing: bool,
        max_entries: u32,
        now: DateTime<Utc>,
    ) -> Result<Added> {
        let f = self
            .strings(
                &self.scripts.add,
                &[
                    queue_id,
                    task_id,
                    &priority.to_string(),
                    if replace_existing { "1" } else { "0" },
                    &max_entries.to_string(),
                    &ms_str(now),
                    &self.origin,
                ],
            )
            .await?;
        if f.first().map(String::as_str) == Some("E") {
            return Err(match f.get(1).map(String::as_str) {
                Some("task_already_queued") => {
                    errors::task_already_queued(task_id, f.get(2).map_or("", String::as_str))
                }
                _ => script_error(&f),
            });
        }
        Ok(Added {
            created: f[0] == "1",
            previous_queue_id: (!f[1].is_empty()).then(|| f[1].clone()),
            entry: parse_entry(&f[2..]),
        })
    }

    async fn remove(&self, task_id: &str, queue_id: Option<&str>) -> Result<Option<Entry>> {
        let f = self
            .strings(&self.scripts.remove, &[task_id, queue_id.unwrap_or("")])
            .await?;
        Ok((f.len() == FIELDS).then(|| parse_entry(&f)))
    }

    async fn list(
        &self,
        queue_id: &str,
        offset: u32,
        limit: u32,
        include_leased: bool,
    ) -> Result<Vec<Entry>> {
        let f = self
            .strings(
                &self.scripts.list,
                &[
                    queue_id,
                    &offset.to_string(),
                    &limit.to_string(),
                    if include_leased { "1" } else { "0" },
                ],
            )
            .await?;
        Ok(Self::entries(&f))
    }

    async fn counts(&self, queue_id: &str) -> Result<(u32, u32)> {
        let mut req = Vec::new();
        pack(&mut req, &["ZCARD", &format!("{}:q:{queue_id}", self.base)]);
        pack(
            &mut req,
            &["ZCARD", &format!("{}:ql:{queue_id}", self.base)],
        );
        let mut counts = Vec::with_capacity(2);
        for reply in self.pool.call(&req, 2).await.map_err(errors::redis)? {
            let v = reply.map_err(|msg| errors::redis(CallError::Server(msg)))?;
            counts.push(decode::<u32>(v)?);
        }
        Ok((counts[0], counts[1]))
    }

    async fn oldest_added(&self, queue_id: &str) -> Result<Option<DateTime<Utc>>> {
        let v: String = self.run(&self.scripts.oldest, &[queue_id]).await?;
        Ok((!v.is_empty()).then(|| from_millis(num(&v))))
    }

    async fn move_entry(&self, task_id: &str, queue_id: Option<&str>, mv: Move) -> Result<Entry> {
        let (kind, n) = match mv {
            Move::ToFront => ("front", 0),
            Move::ToBack => ("back", 0),
            Move::Forward(n) => ("fwd", n.max(1)),
            Move::Backward(n) => ("bwd", n.max(1)),
        };
        let f = self
            .strings(
                &self.scripts.mv,
                &[task_id, queue_id.unwrap_or(""), kind, &n.to_string()],
            )
            .await?;
        if f.first().map(String::as_str) == Some("E") {
            return Err(script_error(&f));
        }
        Ok(parse_entry(&f[1..]))
    }

    async fn set_priority(
        &self,
        task_id: &str,
        priority: i32,
        now: DateTime<Utc>,
    ) -> Result<Entry> {
        let f = self
            .strings(
                &self.scripts.set_priority,
                &[task_id, &priority.to_string(), &ms_str(now)],
            )
            .await?;
        if f.first().map(String::as_str) == Some("E") {
            return Err(script_error(&f));
        }
        Ok(parse_entry(&f[1..]))
    }

    async fn find(&self, task_id: &str) -> Result<Option<Entry>> {
        let f = self.strings(&self.scripts.find, &[task_id]).await?;
        Ok((f.len() == FIELDS).then(|| parse_entry(&f)))
    }

    async fn pop(
        &self,
        queue_ids: &[String],
        worker_id: &str,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<Option<(Entry, Lease)>> {
        let (dur, at, lid, n) = (
            lease.as_millis().to_string(),
            ms_str(now),
            new_lease_id(),
            queue_ids.len().to_string(),
        );
        let mut args = vec![worker_id, &dur, &at, &lid, &n];
        args.extend(queue_ids.iter().map(String::as_str));
        let f = self.strings(&self.scripts.pop, &args).await?;
        if f.first().map(String::as_str) == Some("E") {
            return Err(script_error(&f));
        }
        if f.len() != 2 * FIELDS {
            return Ok(None);
        }
        Ok(Some((parse_entry(&f[..FIELDS]), parse_lease(&f[FIELDS..]))))
    }

    async fn ack(
        &self,
        target: &LeaseTarget,
        worker_id: &str,
        _now: DateTime<Utc>,
    ) -> Result<Acked> {
        let (kind, id) = target_args(target);
        let f = self
            .strings(&self.scripts.ack, &[kind, id, worker_id])
            .await?;
        match f.first().map(String::as_str) {
            Some("A") => Ok(Acked::Acknowledged(parse_lease(&f[1..]))),
            Some("R") => Ok(Acked::Reclaimed(parse_entry(&f[1..]))),
            Some("N") => Ok(Acked::NoLease),
            _ => Err(script_error(&f)),
        }
    }

    async fn release(
        &self,
        target: &LeaseTarget,
        worker_id: &str,
        disposition: Disposition,
        now: DateTime<Utc>,
    ) -> Result<Option<super::Released>> {
        let (kind, id) = target_args(target);
        let disp = match disposition {
            Disposition::Front => "front",
            Disposition::Back => "back",
            Disposition::Discard => "discard",
        };
        let f = self
            .strings(
                &self.scripts.release,
                &[kind, id, worker_id, disp, &ms_str(now), &self.origin],
            )
            .await?;
        match f.first().map(String::as_str) {
            Some("N") => Ok(None),
            Some("D") => Ok(Some(super::Released {
                lease: parse_lease(&f[1..]),
                entry: None,
            })),
            Some("B") => Ok(Some(super::Released {
                lease: parse_lease(&f[1..=FIELDS]),
                entry: Some(parse_entry(&f[1 + FIELDS..])),
            })),
            _ => Err(script_error(&f)),
        }
    }

    async fn renew(
        &self,
        target: &LeaseTarget,
        worker_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Lease> {
        let (kind, id) = target_args(target);
        let f = self
            .strings(&self.scripts.renew, &[kind, id, worker_id, &ms_str(now)])
            .await?;
        if f.first().map(String::as_str) != Some("1") {
            return Err(script_error(&f));
        }
        Ok(parse_lease(&f[1..]))
    }

    async fn renew_worker(
        &self,
        worker_id: &str,
        current_task_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<Lease>> {
        let f = self
            .strings(
                &self.scripts.renew_worker,
                &[worker_id, current_task_id, &ms_str(now)],
            )
            .await?;
        Ok(Self::leases_of(&f))
    }

    async fn return_worker(&self, worker_id: &str, now: DateTime<Utc>) -> Result<Vec<Lease>> {
        let f = self
            .strings(
                &self.scripts.return_leases,
                &[&ms_str(now), "worker", worker_id, &self.origin],
            )
            .await?;
        Ok(Self::leases_of(&f))
    }

    async fn leases(&self) -> Result<Vec<Lease>> {
        let f = self.strings(&self.scripts.leases, &[]).await?;
        Ok(Self::leases_of(&f))
    }

    async fn reap(&self, now: DateTime<Utc>) -> Result<Vec<Lease>> {
        let f = self
            .strings(
                &self.scripts.return_leases,
                &[&ms_str(now), "expired", "", &self.origin],
            )
            .await?;
        Ok(Self::leases_of(&f))
    }

    async fn drop_queue(&self, queue_id: &str) -> Result<(Vec<String>, Vec<String>)> {
        let f = self.strings(&self.scripts.drop_queue, &[queue_id]).await?;
        let n = f.first().map_or(0, |s| num(s) as usize);
        let waiting = f[1..=n].to_vec();
        let leased = f[1 + n..].to_vec();
        Ok((waiting, leased))
    }

    async fn pop_samples(&self, queue_id: &str, since: DateTime<Utc>) -> Result<Vec<PopSample>> {
        let raw: Vec<(String, f64)> = self
            .command(&[
                "ZRANGEBYSCORE",
                &format!("{}:pops:{queue_id}", self.base),
                &millis(since).to_string(),
                "+inf",
                "WITHSCORES",
            ])
            .await?;
        Ok(raw
            .into_iter()
            .filter_map(|(member, score)| {
                let mut parts = member.split(':');
                let _lease = parts.next()?;
                let wait = num(parts.next()?);
                let pending = num(parts.next()?);
                Some(PopSample {
                    popped: from_millis(score as i64),
                    wait: Duration::from_millis(u64::try_from(wait).unwrap_or(0)),
                    pending_after: u32::try_from(pending).unwrap_or(0),
                })
            })
            .collect())
    }

    async fn trim(&self, samples_before: DateTime<Utc>, changes_before_seq: u64) -> Result<()> {
        self.run::<i64>(
            &self.scripts.trim,
            &[&ms_str(samples_before), &changes_before_seq.to_string()],
        )
        .await?;
        Ok(())
    }

    async fn presences(&self) -> Result<Vec<Presence>> {
        let f = self.strings(&self.scripts.presences, &[]).await?;
        Ok(f.chunks_exact(4)
            .map(|c| Presence {
                task_id: c[0].clone(),
                queue_id: c[1].clone(),
                leased: c[2] == "1",
                seq: u64::try_from(num(&c[3])).unwrap_or(0),
            })
            .collect())
    }

    async fn reconcile_add(
        &self,
        task_id: &str,
        queue_id: &str,
        priority: i32,
        enqueued: DateTime<Utc>,
        fence: u64,
        _now: DateTime<Utc>,
    ) -> Result<StepOutcome> {
        let r: String = self
            .run(
                &self.scripts.reconcile_add,
                &[
                    task_id,
                    queue_id,
                    &priority.to_string(),
                    &ms_str(enqueued),
                    &fence.to_string(),
                    &self.origin,
                ],
            )
            .await?;
        Ok(if r == "D" {
            StepOutcome::Done
        } else {
            StepOutcome::Recent
        })
    }

    async fn reconcile_move(
        &self,
        task_id: &str,
        from: &str,
        to: &str,
        fence: u64,
        now: DateTime<Utc>,
    ) -> Result<StepOutcome> {
        let r: String = self
            .run(
                &self.scripts.reconcile_move,
                &[
                    task_id,
                    from,
                    to,
                    &fence.to_string(),
                    &ms_str(now),
                    &self.origin,
                ],
            )
            .await?;
        Ok(if r == "D" {
            StepOutcome::Done
        } else {
            StepOutcome::Recent
        })
    }

    async fn reconcile_remove(
        &self,
        task_id: &str,
        queue_id: &str,
        fence: u64,
    ) -> Result<StepOutcome> {
        let r: String = self
            .run(
                &self.scripts.reconcile_remove,
                &[task_id, queue_id, &fence.to_string()],
            )
            .await?;
        Ok(if r == "D" {
            StepOutcome::Done
        } else {
            StepOutcome::Recent
        })
    }
}
