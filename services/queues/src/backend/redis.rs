//! The Redis queue backend: every mutation is one Lua script, so multi-key
//! moves (waiting ⇄ leased, queue ⇄ queue) are atomic and a script run twice
//! (two reapers) cannot act twice.
//!
//! Keys, all under one hash tag `{prefix}` so a cluster keeps them in one
//! slot (the scripts build key names from the first key, which is only
//! valid within that slot):
//!
//! * `{p}:q:<queue>` — ZSET of waiting entries, all scores 0, ordered by
//!   member: 10 digits of `2147483647 - priority`, 16 digits of
//!   `rank + 2^52`, then the task id. `ZRANGE .. 0 0` is the head, `ZRANK`
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
//! * Channel `{p}:wake` — every push publishes the queue id; each replica's
//!   listener ([`RedisBackend::spawn_wake_listener`]) signals its waiters.
//!
//! Times are milliseconds (exact in Lua's doubles and in `%.0f`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use tasklab_error::{Error, Result};

use super::{
    Acked, Added, Disposition, Entry, Lease, LeaseTarget, Move, PopSample, Presence, QueueBackend,
    StepOutcome, from_millis, millis, new_lease_id,
};
use crate::errors;
use crate::service::WakeHub;

/// The key prefix of a deployed service.
pub const DEFAULT_PREFIX: &str = "tasklab:queues";

const PRELUDE: &str = r#"
local B = KEYS[1]
local OFF = 4503599627370496
local function tkey(t) return B .. ':t:' .. t end
local function qkey(q) return B .. ':q:' .. q end
local function lkey(q) return B .. ':ql:' .. q end
local function wkey(w) return B .. ':w:' .. w end
local function mkey(q) return B .. ':qm:' .. q end
local DEAD = B .. ':qdead'
local EXP = B .. ':exp'
local LID = B .. ':lid'
local CHG = B .. ':chg'
local ALL = B .. ':all'
local function fmt(n) return string.format('%.0f', n) end
local function pkey(prio) return string.format('%010.0f', 2147483647 - prio) end
local function sortkey(prio, rank) return pkey(prio) .. string.format('%016.0f', rank + OFF) end
local function bump() return redis.call('INCR', B .. ':seq') end
local function touch(t, seq) redis.call('ZADD', CHG, seq, t) end
local function wake(q) redis.call('PUBLISH', B .. ':wake', q) end
local function changed_after(t, fence)
  local c = redis.call('ZSCORE', CHG, t)
  return c and tonumber(c) > fence
end
local function load(t)
  local v = redis.call('HGETALL', tkey(t))
  if #v == 0 then return nil end
  local h = {}
  for i = 1, #v, 2 do h[v[i]] = v[i + 1] end
  return h
end
local function pos_of(h)
  if h.l == '1' then return -1 end
  return redis.call('ZRANK', qkey(h.q), h.m)
end
local function out(t, h, pos)
  return {t, h.q, h.a, h.p, fmt(pos), h.d, h.l, h.lid or '', h.w or '',
          h.acq or '0', h.exp or '0', h.dur or '0', h.ren or '0'}
end
local function cat(a, b)
  local r = {}
  for _, v in ipairs(a) do r[#r + 1] = v end
  for _, v in ipairs(b) do r[#r + 1] = v end
  return r
end
local function band(q, prio)
  local k = tonumber(2147483647 - prio)
  return '[' .. string.format('%010.0f', k), '(' .. string.format('%010.0f', k + 1)
end
local function push_rank(q, prio, front, now)
  local lo, hi = band(q, prio)
  local r
  if front then
    r = redis.call('ZRANGEBYLEX', qkey(q), lo, hi, 'LIMIT', 0, 1)
  else
    r = redis.call('ZREVRANGEBYLEX', qkey(q), hi, lo, 'LIMIT', 0, 1)
  end
  if #r == 0 then return now end
  local e = tonumber(string.sub(r[1], 11, 26)) - OFF
  if front then return e - 1 end
  return math.max(e + 1, now)
end
local function put_waiting(t, q, prio, rank)
  local m = sortkey(prio, rank) .. t
  redis.call('ZADD', qkey(q), 0, m)
  redis.call('HSET', tkey(t), 'q', q, 'p', fmt(prio), 'r', fmt(rank), 'm', m, 'l', '0',
             'lid', '', 'w', '')
end
local function unlease(t, h)
  redis.call('ZREM', EXP, t)
  if h.lid and h.lid ~= '' then redis.call('HDEL', LID, h.lid) end
  redis.call('ZREM', lkey(h.q), t)
  if h.w and h.w ~= '' then redis.call('SREM', wkey(h.w), t) end
end
local function drop(t, h)
  if h.l == '1' then unlease(t, h) else redis.call('ZREM', qkey(h.q), h.m) end
  redis.call('DEL', tkey(t))
  redis.call('SREM', ALL, t)
end
local function insert(t, q, prio, rank, added, seq)
  put_waiting(t, q, prio, rank)
  redis.call('HSET', tkey(t), 'a', fmt(added), 'd', '0', 's', fmt(seq))
  redis.call('SADD', ALL, t)
  touch(t, seq)
end
local function return_to(t, h, front, now, seq)
  unlease(t, h)
  local prio = tonumber(h.p)
  put_waiting(t, h.q, prio, push_rank(h.q, prio, front, now))
  touch(t, seq)
  wake(h.q)
end
local function resolve(kind, id)
  if kind == 'lease' then
    local t = redis.call('HGET', LID, id)
    if not t then return nil end
    return t
  end
  return id
end
"#;

const ADD: &str = r#"
local q, t, prio, replace, max, now = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
if redis.call('EXISTS', mkey(q)) == 0 then return {'E', 'queue_not_found', q} end
local h = load(t)
if h and h.q == q then return cat({'0', ''}, out(t, h, pos_of(h))) end
if h and replace ~= '1' then return {'E', 'task_already_queued', h.q} end
if redis.call('ZCARD', qkey(q)) + redis.call('ZCARD', lkey(q)) >= max then return {'E', 'queue_full', q} end
local seq = bump()
local prev = ''
if h then prev = h.q; drop(t, h) end
insert(t, q, prio, push_rank(q, prio, false, now), now, seq)
wake(q)
h = load(t)
return cat({'1', prev}, out(t, h, pos_of(h)))
"#;

const REMOVE: &str = r#"
local t, q = ARGV[1], ARGV[2]
local h = load(t)
if not h or (q ~= '' and h.q ~= q) then return {} end
local o = out(t, h, pos_of(h))
local seq = bump()
drop(t, h)
touch(t, seq)
return o
"#;

const LIST: &str = r#"
local q, off, limit, inc = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local res = {}
local ms = redis.call('ZRANGE', qkey(q), off, off + limit - 1)
for i, m in ipairs(ms) do
  local t = string.sub(m, 27)
  res = cat(res, out(t, load(t), off + i - 1))
end
if inc == '1' and #ms < limit then
  local skip = math.max(0, off - redis.call('ZCARD', qkey(q)))
  local ls = redis.call('ZRANGE', lkey(q), skip, skip + (limit - #ms) - 1)
  for _, t in ipairs(ls) do res = cat(res, out(t, load(t), -1)) end
end
return res
"#;

const OLDEST: &str = r#"
local best = nil
for _, m in ipairs(redis.call('ZRANGE', qkey(ARGV[1]), 0, -1)) do
  local a = tonumber(redis.call('HGET', tkey(string.sub(m, 27)), 'a'))
  if a and (best == nil or a < best) then best = a end
end
if best == nil then return '' end
return fmt(best)
"#;

const MOVE: &str = r#"
local t, q, kind, n = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local h = load(t)
if not h or (q ~= '' and h.q ~= q) then return {'E', 'task_not_queued', t} end
if h.l == '1' then return {'E', 'entry_leased', t} end
local prio = tonumber(h.p)
local lo, hi = band(h.q, prio)
local members = redis.call('ZRANGEBYLEX', qkey(h.q), lo, hi)
local at = 0
for i, m in ipairs(members) do if m == h.m then at = i end end
local target = at
if kind == 'front' then target = 1
elseif kind == 'back' then target = #members
elseif kind == 'fwd' then target = math.max(1, at - n)
else target = math.min(#members, at + n) end
if target ~= at then
  local ilo, ihi = math.min(at, target), math.max(at, target)
  local ranks, order = {}, {}
  for i = ilo, ihi do
    ranks[#ranks + 1] = tonumber(string.sub(members[i], 11, 26)) - OFF
    order[#order + 1] = members[i]
  end
  if target < at then
    table.insert(order, 1, table.remove(order))
  else
    table.insert(order, table.remove(order, 1))
  end
  local distinct = true
  for i = 2, #ranks do if ranks[i - 1] >= ranks[i] then distinct = false end end
  for _, m in ipairs(order) do redis.call('ZREM', qkey(h.q), m) end
  for i, m in ipairs(order) do
    local rank = ranks[i]
    if not distinct then rank = ranks[1] + i - 1 end
    local t2 = string.sub(m, 27)
    local nm = sortkey(prio, rank) .. t2
    redis.call('ZADD', qkey(h.q), 0, nm)
    redis.call('HSET', tkey(t2), 'r', fmt(rank), 'm', nm)
  end
  touch(t, bump())
end
h = load(t)
return cat({'1'}, out(t, h, pos_of(h)))
"#;

const SET_PRIORITY: &str = r#"
local t, prio, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local h = load(t)
if not h then return {'E', 'task_not_queued', t} end
if h.l == '1' then return {'E', 'entry_leased', t} end
redis.call('ZREM', qkey(h.q), h.m)
put_waiting(t, h.q, prio, push_rank(h.q, prio, false, now))
touch(t, bump())
h = load(t)
return cat({'1'}, out(t, h, pos_of(h)))
"#;

const FIND: &str = r#"
local h = load(ARGV[1])
if not h then return {} end
return out(ARGV[1], h, pos_of(h))
"#;

const POP: &str = r#"
local worker, dur, now, lid, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
for i = 1, n do
  if redis.call('EXISTS', mkey(ARGV[5 + i])) == 0 then return {'E', 'queue_not_found', ARGV[5 + i]} end
end
for i = 1, n do
  local q = ARGV[5 + i]
  local r = redis.call('ZRANGE', qkey(q), 0, 0)
  if #r > 0 then
    local m = r[1]
    local t = string.sub(m, 27)
    local h = load(t)
    local before = out(t, h, 0)
    redis.call('ZREM', qkey(q), m)
    local exp = now + dur
    redis.call('HSET', tkey(t), 'l', '1', 'lid', lid, 'w', worker, 'acq', fmt(now), 'exp', fmt(exp),
               'dur', fmt(dur), 'ren', fmt(now), 'd', fmt(tonumber(h.d) + 1))
    redis.call('ZADD', EXP, exp, t)
    redis.call('HSET', LID, lid, t)
    redis.call('ZADD', lkey(q), now, t)
    if worker ~= '' then redis.call('SADD', wkey(worker), t) end
    touch(t, bump())
    local pending = redis.call('ZCARD', qkey(q))
    local wait = math.max(0, now - tonumber(h.a))
    redis.call('ZADD', B .. ':pops:' .. q, now, lid .. ':' .. fmt(wait) .. ':' .. fmt(pending))
    redis.call('SADD', B .. ':popq', q)
    return cat(before, out(t, load(t), -1))
  end
end
return {}
"#;

const ACK: &str = r#"
local kind, id, worker = ARGV[1], ARGV[2], ARGV[3]
local t = resolve(kind, id)
local h = nil
if t then h = load(t) end
if not h then
  if kind == 'lease' then return {'E', 'lease_not_found', id} end
  return {'N'}
end
local o
local tag = 'A'
if h.l == '1' then
  if worker ~= '' and h.w ~= '' and h.w ~= worker then return {'E', 'lease_not_owned', h.lid} end
  o = out(t, h, -1)
else
  tag = 'R'
  o = out(t, h, pos_of(h))
end
local seq = bump()
drop(t, h)
touch(t, seq)
return cat({tag}, o)
"#;

const RELEASE: &str = r#"
local kind, id, worker, disp, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local t = resolve(kind, id)
local h = nil
if t then h = load(t) end
if not h or h.l ~= '1' then
  if kind == 'lease' then return {'E', 'lease_not_found', id} end
  return {'N'}
end
if worker ~= '' and h.w ~= '' and h.w ~= worker then return {'E', 'lease_not_owned', h.lid} end
local lease = out(t, h, -1)
local seq = bump()
if disp == 'discard' then
  drop(t, h)
  touch(t, seq)
  return cat({'D'}, lease)
end
return_to(t, h, disp == 'front', now, seq)
local h2 = load(t)
return cat(cat({'B'}, lease), out(t, h2, pos_of(h2)))
"#;

const RENEW: &str = r#"
local kind, id, worker, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local t = resolve(kind, id)
local h = nil
if t then h = load(t) end
if not h or h.l ~= '1' then return {'E', 'lease_not_found', id} end
if worker ~= '' and h.w ~= '' and h.w ~= worker then return {'E', 'lease_not_owned', h.lid} end
if tonumber(h.exp) < now then return {'E', 'lease_expired', h.lid} end
local exp = now + tonumber(h.dur)
redis.call('HSET', tkey(t), 'exp', fmt(exp), 'ren', fmt(now))
redis.call('ZADD', EXP, exp, t)
if h.w == '' and worker ~= '' then
  redis.call('HSET', tkey(t), 'w', worker)
  redis.call('SADD', wkey(worker), t)
end
return cat({'1'}, out(t, load(t), -1))
"#;

const RENEW_WORKER: &str = r#"
local worker, current, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local ts = redis.call('SMEMBERS', wkey(worker))
if current ~= '' then ts[#ts + 1] = current end
local seen, res = {}, {}
for _, t in ipairs(ts) do
  local h = load(t)
  if not seen[t] and h and h.l == '1' then
    seen[t] = true
    local exp = now + tonumber(h.dur)
    redis.call('HSET', tkey(t), 'exp', fmt(exp), 'ren', fmt(now))
    redis.call('ZADD', EXP, exp, t)
    res = cat(res, out(t, load(t), -1))
  end
end
return res
"#;

// Leases are returned newest first, so the oldest ends up at the very front.
const RETURN_LEASES: &str = r#"
local now, mode, worker = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local ts
if mode == 'worker' then
  ts = redis.call('SMEMBERS', wkey(worker))
else
  ts = redis.call('ZRANGEBYSCORE', EXP, '-inf', now)
end
local hs = {}
for _, t in ipairs(ts) do
  local h = load(t)
  if h and h.l == '1' then hs[#hs + 1] = {t, h} end
end
table.sort(hs, function(x, y) return tonumber(x[2].acq) > tonumber(y[2].acq) end)
local res = {}
if #hs == 0 then return res end
local seq = bump()
for _, th in ipairs(hs) do
  res = cat(res, out(th[1], th[2], -1))
  return_to(th[1], th[2], true, now, seq)
end
return res
"#;

const LEASES: &str = r#"
local res = {}
for _, t in ipairs(redis.call('ZRANGE', EXP, 0, -1)) do
  local h = load(t)
  if h then res = cat(res, out(t, h, -1)) end
end
return res
"#;

const DROP_QUEUE: &str = r#"
local q = ARGV[1]
local waiting = {}
for _, m in ipairs(redis.call('ZRANGE', qkey(q), 0, -1)) do waiting[#waiting + 1] = string.sub(m, 27) end
local leased = redis.call('ZRANGE', lkey(q), 0, -1)
local seq = bump()
for _, t in ipairs(waiting) do
  redis.call('DEL', tkey(t)); redis.call('SREM', ALL, t); touch(t, seq)
end
for _, t in ipairs(leased) do
  local h = load(t)
  if h then drop(t, h) end
  touch(t, seq)
end
redis.call('DEL', qkey(q), lkey(q), mkey(q))
redis.call('SADD', DEAD, q)
return cat(cat({fmt(#waiting)}, waiting), leased)
"#;

const PRESENCES: &str = r#"
local res = {}
for _, t in ipairs(redis.call('SMEMBERS', ALL)) do
  local v = redis.call('HMGET', tkey(t), 'q', 'l', 's')
  if v[1] then res = cat(res, {t, v[1], v[2], v[3]}) end
end
return res
"#;

const RECONCILE_ADD: &str = r#"
local t, q, prio, enq, fence = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
if redis.call('EXISTS', tkey(t)) == 1 or changed_after(t, fence) then return 'R' end
insert(t, q, prio, enq, enq, bump())
wake(q)
return 'D'
"#;

const RECONCILE_MOVE: &str = r#"
local t, from, to, fence, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local h = load(t)
if not h or h.q ~= from or h.l == '1' or changed_after(t, fence) then return 'R' end
local seq = bump()
redis.call('ZREM', qkey(from), h.m)
local prio = tonumber(h.p)
put_waiting(t, to, prio, push_rank(to, prio, false, now))
redis.call('HSET', tkey(t), 's', fmt(seq))
touch(t, seq)
wake(to)
return 'D'
"#;

const RECONCILE_REMOVE: &str = r#"
local t, q, fence = ARGV[1], ARGV[2], tonumber(ARGV[3])
local h = load(t)
if not h or h.q ~= q or changed_after(t, fence) then return 'R' end
local seq = bump()
drop(t, h)
touch(t, seq)
return 'D'
"#;

const ENSURE_QUEUE: &str = r#"
if redis.call('SISMEMBER', DEAD, ARGV[1]) == 1 then return 0 end
redis.call('SET', mkey(ARGV[1]), '1')
return 1
"#;

const EPOCH: &str = r#"
redis.call('SET', KEYS[1] .. ':epoch', ARGV[1], 'NX')
return redis.call('GET', KEYS[1] .. ':epoch')
"#;

const TRIM: &str = r#"
local before, seq = ARGV[1], ARGV[2]
for _, q in ipairs(redis.call('SMEMBERS', B .. ':popq')) do
  redis.call('ZREMRANGEBYSCORE', B .. ':pops:' .. q, '-inf', '(' .. before)
end
redis.call('ZREMRANGEBYSCORE', CHG, '-inf', '(' .. seq)
return 1
"#;

#[derive(Debug)]
struct Scripts {
    add: Script,
    remove: Script,
    list: Script,
    oldest: Script,
    mv: Script,
    set_priority: Script,
    find: Script,
    pop: Script,
    ack: Script,
    release: Script,
    renew: Script,
    renew_worker: Script,
    return_leases: Script,
    leases: Script,
    drop_queue: Script,
    presences: Script,
    reconcile_add: Script,
    reconcile_move: Script,
    reconcile_remove: Script,
    epoch: Script,
    trim: Script,
    ensure_queue: Script,
}

impl Scripts {
    fn new() -> Self {
        let s = |body: &str| Script::new(&format!("{PRELUDE}\n{body}"));
        Scripts {
            add: s(ADD),
            remove: s(REMOVE),
            list: s(LIST),
            oldest: s(OLDEST),
            mv: s(MOVE),
            set_priority: s(SET_PRIORITY),
            find: s(FIND),
            pop: s(POP),
            ack: s(ACK),
            release: s(RELEASE),
            renew: s(RENEW),
            renew_worker: s(RENEW_WORKER),
            return_leases: s(RETURN_LEASES),
            leases: s(LEASES),
            drop_queue: s(DROP_QUEUE),
            presences: s(PRESENCES),
            reconcile_add: s(RECONCILE_ADD),
            reconcile_move: s(RECONCILE_MOVE),
            reconcile_remove: s(RECONCILE_REMOVE),
            epoch: Script::new(EPOCH),
            trim: s(TRIM),
            ensure_queue: s(ENSURE_QUEUE),
        }
    }
}

/// Entries in Redis. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RedisBackend {
    client: redis::Client,
    conn: ConnectionManager,
    base: String,
    scripts: Arc<Scripts>,
}

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

impl RedisBackend {
    /// Connects to `url`; every key lives under the hash tag `{prefix}`.
    pub async fn connect(url: &str, prefix: &str) -> Result<RedisBackend> {
        let client = redis::Client::open(url).map_err(errors::redis)?;
        let conn = client
            .get_connection_manager()
            .await
            .map_err(errors::redis)?;
        Ok(RedisBackend {
            client,
            conn,
            base: format!("{{{prefix}}}"),
            scripts: Arc::new(Scripts::new()),
        })
    }

    /// Runs a script, retrying once when the connection was dropped (the
    /// connection manager reconnects behind it).
    async fn run<T: redis::FromRedisValue>(&self, script: &Script, args: &[String]) -> Result<T> {
        let mut attempt = 0;
        loop {
            let mut inv = script.key(&self.base);
            for a in args {
                inv.arg(a);
            }
            let mut conn = self.conn.clone();
            match inv.invoke_async::<T>(&mut conn).await {
                Ok(v) => return Ok(v),
                Err(err) if attempt == 0 && (err.is_connection_dropped() || err.is_io_error()) => {
                    attempt += 1;
                }
                Err(err) => return Err(errors::redis(err)),
            }
        }
    }

    async fn strings(&self, script: &Script, args: &[String]) -> Result<Vec<String>> {
        self.run::<Vec<String>>(script, args).await
    }

    /// Starts the task that turns `PUBLISH`ed pushes of any replica into
    /// local wake-ups; it reconnects after a failure.
    pub fn spawn_wake_listener(&self, hub: Arc<WakeHub>) -> tokio::task::JoinHandle<()> {
        let client = self.client.clone();
        let channel = format!("{}:wake", self.base);
        tokio::spawn(async move {
            loop {
                match client.get_async_pubsub().await {
                    Ok(mut pubsub) => {
                        if pubsub.subscribe(&channel).await.is_ok() {
                            let mut stream = pubsub.on_message();
                            while let Some(msg) = stream.next().await {
                                if let Ok(queue) = msg.get_payload::<String>() {
                                    hub.notify(&queue);
                                }
                            }
                        }
                    }
                    Err(err) => tracing::warn!(error = %err, "redis wake listener cannot connect"),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
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
        let done: i64 = self
            .run(&self.scripts.ensure_queue, &[queue_id.to_owned()])
            .await?;
        Ok(done == 1)
    }

    async fn epoch(&self, now: DateTime<Utc>) -> Result<String> {
        let fresh = format!("redis-{}-{}", millis(now), uuid::Uuid::new_v4().simple());
        self.run::<String>(&self.scripts.epoch, &[fresh]).await
    }

    async fn current_seq(&self) -> Result<u64> {
        let mut conn = self.conn.clone();
        let seq: Option<u64> = conn
            .get(format!("{}:seq", self.base))
            .await
            .map_err(errors::redis)?;
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
                    queue_id.to_owned(),
                    task_id.to_owned(),
                    priority.to_string(),
                    if replace_existing { "1" } else { "0" }.to_owned(),
                    max_entries.to_string(),
                    ms_str(now),
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
            .strings(
                &self.scripts.remove,
                &[task_id.to_owned(), queue_id.unwrap_or("").to_owned()],
            )
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
                    queue_id.to_owned(),
                    offset.to_string(),
                    limit.to_string(),
                    if include_leased { "1" } else { "0" }.to_owned(),
                ],
            )
            .await?;
        Ok(Self::entries(&f))
    }

    async fn counts(&self, queue_id: &str) -> Result<(u32, u32)> {
        let mut conn = self.conn.clone();
        let (w, l): (u32, u32) = redis::pipe()
            .zcard(format!("{}:q:{queue_id}", self.base))
            .zcard(format!("{}:ql:{queue_id}", self.base))
            .query_async(&mut conn)
            .await
            .map_err(errors::redis)?;
        Ok((w, l))
    }

    async fn oldest_added(&self, queue_id: &str) -> Result<Option<DateTime<Utc>>> {
        let v: String = self
            .run(&self.scripts.oldest, &[queue_id.to_owned()])
            .await?;
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
                &[
                    task_id.to_owned(),
                    queue_id.unwrap_or("").to_owned(),
                    kind.to_owned(),
                    n.to_string(),
                ],
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
                &[task_id.to_owned(), priority.to_string(), ms_str(now)],
            )
            .await?;
        if f.first().map(String::as_str) == Some("E") {
            return Err(script_error(&f));
        }
        Ok(parse_entry(&f[1..]))
    }

    async fn find(&self, task_id: &str) -> Result<Option<Entry>> {
        let f = self
            .strings(&self.scripts.find, &[task_id.to_owned()])
            .await?;
        Ok((f.len() == FIELDS).then(|| parse_entry(&f)))
    }

    async fn pop(
        &self,
        queue_ids: &[String],
        worker_id: &str,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<Option<(Entry, Lease)>> {
        let mut args = vec![
            worker_id.to_owned(),
            lease.as_millis().to_string(),
            ms_str(now),
            new_lease_id(),
            queue_ids.len().to_string(),
        ];
        args.extend(queue_ids.iter().cloned());
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
            .strings(
                &self.scripts.ack,
                &[kind.to_owned(), id.to_owned(), worker_id.to_owned()],
            )
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
                &[
                    kind.to_owned(),
                    id.to_owned(),
                    worker_id.to_owned(),
                    disp.to_owned(),
                    ms_str(now),
                ],
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
            .strings(
                &self.scripts.renew,
                &[
                    kind.to_owned(),
                    id.to_owned(),
                    worker_id.to_owned(),
                    ms_str(now),
                ],
            )
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
                &[
                    worker_id.to_owned(),
                    current_task_id.to_owned(),
                    ms_str(now),
                ],
            )
            .await?;
        Ok(Self::leases_of(&f))
    }

    async fn return_worker(&self, worker_id: &str, now: DateTime<Utc>) -> Result<Vec<Lease>> {
        let f = self
            .strings(
                &self.scripts.return_leases,
                &[ms_str(now), "worker".to_owned(), worker_id.to_owned()],
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
                &[ms_str(now), "expired".to_owned(), String::new()],
            )
            .await?;
        Ok(Self::leases_of(&f))
    }

    async fn drop_queue(&self, queue_id: &str) -> Result<(Vec<String>, Vec<String>)> {
        let f = self
            .strings(&self.scripts.drop_queue, &[queue_id.to_owned()])
            .await?;
        let n = f.first().map_or(0, |s| num(s) as usize);
        let waiting = f[1..=n].to_vec();
        let leased = f[1 + n..].to_vec();
        Ok((waiting, leased))
    }

    async fn pop_samples(&self, queue_id: &str, since: DateTime<Utc>) -> Result<Vec<PopSample>> {
        let mut conn = self.conn.clone();
        let raw: Vec<(String, f64)> = conn
            .zrangebyscore_withscores(
                format!("{}:pops:{queue_id}", self.base),
                millis(since),
                "+inf",
            )
            .await
            .map_err(errors::redis)?;
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
            &[ms_str(samples_before), changes_before_seq.to_string()],
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
                    task_id.to_owned(),
                    queue_id.to_owned(),
                    priority.to_string(),
                    ms_str(enqueued),
                    fence.to_string(),
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
                    task_id.to_owned(),
                    from.to_owned(),
                    to.to_owned(),
                    fence.to_string(),
                    ms_str(now),
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
                &[task_id.to_owned(), queue_id.to_owned(), fence.to_string()],
            )
            .await?;
        Ok(if r == "D" {
            StepOutcome::Done
        } else {
            StepOutcome::Recent
        })
    }
}
