//! The Lua scripts of the Redis backend, one per operation (see the key
//! layout in the parent module), and their SHA1s.
//!
//! Each script but `EPOCH` starts with [`PRELUDE`]: the key names built from
//! `KEYS[1]` (the hash-tagged prefix) and helpers. The scripts of a handoff
//! (`ADD`, `POP`, `ACK`) start with [`HOT_PRELUDE`] instead, which builds
//! those helpers only on their rare branches (re-adding, replacing, acking
//! an entry that is not leased), and keep to the calls a handoff needs: they
//! read the task's fields once (`HGET`, `HMGET`), write them with one `HSET`,
//! pop the head with one `ZPOPMIN` (all scores are 0, so it is the smallest
//! member) and build their reply from what they know instead of reading the
//! hash back. Each `redis.call` costs the server's single thread about a
//! microsecond, and the Lua around it about as much again.

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
-- Signals a push to `q` to every registered listener but the caller's own
-- (named by the pushing script's last argument; its service wakes its own
-- waiters). Expired listeners are dropped by the next registration.
local wakers = nil
local function wake(q)
  if not wakers then
    wakers = {}
    for _, o in ipairs(redis.call('ZRANGE', B .. ':wakers', 0, -1)) do
      if o ~= ARGV[#ARGV] then wakers[#wakers + 1] = B .. ':wake:' .. o end
    end
  end
  for _, c in ipairs(wakers) do redis.call('PUBLISH', c, q) end
end
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

// The prelude of the handoff scripts: only what every run needs. `slow()`
// builds the full prelude's helpers, for the rare branches.
const HOT_PRELUDE: &str = r#"
local B = KEYS[1]
local OFF = 4503599627370496
local function fmt(n) return string.format('%.0f', n) end
local function slow()
"#;

const HOT_PRELUDE_END: &str = r#"
  return {load = load, out = out, pos_of = pos_of, cat = cat, drop = drop}
end
"#;

const ADD: &str = r#"
local q, t, prio, replace, max, now = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
if redis.call('EXISTS', B .. ':qm:' .. q) == 0 then return {'E', 'queue_not_found', q} end
local tk = B .. ':t:' .. t
local cur = redis.call('HGET', tk, 'q')
if cur then
  local S = slow()
  if cur == q then
    local h = S.load(t)
    return S.cat({'0', ''}, S.out(t, h, S.pos_of(h)))
  end
  if replace ~= '1' then return {'E', 'task_already_queued', cur} end
end
local qk = B .. ':q:' .. q
if redis.call('ZCARD', qk) + redis.call('ZCARD', B .. ':ql:' .. q) >= max then return {'E', 'queue_full', q} end
local seq = redis.call('INCR', B .. ':seq')
local prev = ''
if cur then
  local S = slow()
  prev = cur
  S.drop(t, S.load(t))
end
local pk = string.format('%010.0f', 2147483647 - prio)
local last = redis.call('ZREVRANGEBYLEX', qk, '(' .. string.format('%010.0f', 2147483648 - prio), '[' .. pk, 'LIMIT', 0, 1)
local rank = now
if #last > 0 then rank = math.max(tonumber(string.sub(last[1], 11, 26)) - OFF + 1, now) end
local m = pk .. string.format('%016.0f', rank + OFF) .. t
redis.call('ZADD', qk, 0, m)
redis.call('HSET', tk, 'q', q, 'p', ARGV[3], 'r', fmt(rank), 'm', m, 'l', '0', 'lid', '', 'w', '',
           'a', ARGV[6], 'd', '0', 's', seq)
redis.call('SADD', B .. ':all', t)
redis.call('ZADD', B .. ':chg', seq, t)
-- Other replicas' listeners learn of the push; the caller's own (ARGV[7])
-- does not need to: its service wakes its waiters.
for _, o in ipairs(redis.call('ZRANGE', B .. ':wakers', 0, -1)) do
  if o ~= ARGV[7] then redis.call('PUBLISH', B .. ':wake:' .. o, q) end
end
local pos = redis.call('ZRANK', qk, m)
return {'1', prev, t, q, ARGV[6], ARGV[3], tostring(pos), '0', '0', '', '', '0', '0', '0', '0'}
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
local marks = {}
for i = 1, n do marks[i] = B .. ':qm:' .. ARGV[5 + i] end
if redis.call('EXISTS', unpack(marks)) < n then
  for i = 1, n do
    if redis.call('EXISTS', marks[i]) == 0 then return {'E', 'queue_not_found', ARGV[5 + i]} end
  end
end
for i = 1, n do
  local q = ARGV[5 + i]
  local qk = B .. ':q:' .. q
  local r = redis.call('ZPOPMIN', qk)
  if #r > 0 then
    local t = string.sub(r[1], 27)
    local tk = B .. ':t:' .. t
    local v = redis.call('HMGET', tk, 'a', 'p', 'd')
    local d = fmt(tonumber(v[3]) + 1)
    local exp = now + dur
    local se = fmt(exp)
    redis.call('HSET', tk, 'l', '1', 'lid', lid, 'w', worker, 'acq', ARGV[3], 'exp', se,
               'dur', ARGV[2], 'ren', ARGV[3], 'd', d)
    redis.call('ZADD', B .. ':exp', exp, t)
    redis.call('HSET', B .. ':lid', lid, t)
    redis.call('ZADD', B .. ':ql:' .. q, now, t)
    if worker ~= '' then redis.call('SADD', B .. ':w:' .. worker, t) end
    redis.call('ZADD', B .. ':chg', redis.call('INCR', B .. ':seq'), t)
    local pending = redis.call('ZCARD', qk)
    redis.call('ZADD', B .. ':pops:' .. q, now, lid .. ':' .. fmt(math.max(0, now - tonumber(v[1]))) .. ':' .. pending)
    redis.call('SADD', B .. ':popq', q)
    return {t, q, v[1], v[2], '0', v[3], '0', '', '', '0', '0', '0', '0',
            t, q, v[1], v[2], '-1', d, '1', lid, worker, ARGV[3], se, ARGV[2], ARGV[3]}
  end
end
return {}
"#;

const ACK: &str = r#"
local kind, id, worker = ARGV[1], ARGV[2], ARGV[3]
local t = id
if kind == 'lease' then
  t = redis.call('HGET', B .. ':lid', id)
  if not t then return {'E', 'lease_not_found', id} end
end
local tk = B .. ':t:' .. t
local v = redis.call('HMGET', tk, 'q', 'a', 'p', 'd', 'l', 'lid', 'w', 'acq', 'exp', 'dur', 'ren')
if not v[1] then
  if kind == 'lease' then return {'E', 'lease_not_found', id} end
  return {'N'}
end
if v[5] ~= '1' then
  local S = slow()
  local h = S.load(t)
  local o = S.out(t, h, S.pos_of(h))
  local seq = redis.call('INCR', B .. ':seq')
  S.drop(t, h)
  redis.call('ZADD', B .. ':chg', seq, t)
  return S.cat({'R'}, o)
end
local lid, w = v[6] or '', v[7] or ''
if worker ~= '' and w ~= '' and w ~= worker then return {'E', 'lease_not_owned', lid} end
local seq = redis.call('INCR', B .. ':seq')
redis.call('ZREM', B .. ':exp', t)
if lid ~= '' then redis.call('HDEL', B .. ':lid', lid) end
redis.call('ZREM', B .. ':ql:' .. v[1], t)
if w ~= '' then redis.call('SREM', B .. ':w:' .. w, t) end
redis.call('DEL', tk)
redis.call('SREM', B .. ':all', t)
redis.call('ZADD', B .. ':chg', seq, t)
return {'A', t, v[1], v[2], v[3], '-1', v[4], '1', lid, w, v[8] or '0', v[9] or '0', v[10] or '0',
        v[11] or '0'}
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

// Records the listener `ARGV[1]` as live for `ARGV[2]` ms of server time
// and forgets expired ones.
const REGISTER: &str = r#"
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', B .. ':wakers', '-inf', '(' .. ms)
redis.call('ZADD', B .. ':wakers', ms + tonumber(ARGV[2]), ARGV[1])
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

/// A script with its SHA1, which `EVALSHA` names it by.
#[derive(Debug)]
pub(super) struct Lua {
    pub(super) code: String,
    pub(super) hash: String,
}

impl Lua {
    fn new(code: String) -> Self {
        let hash = redis::Script::new(&code).get_hash().to_owned();
        Lua { code, hash }
    }
}

/// Every script of the backend.
#[derive(Debug)]
pub(super) struct Scripts {
    pub(super) add: Lua,
    pub(super) remove: Lua,
    pub(super) list: Lua,
    pub(super) oldest: Lua,
    pub(super) mv: Lua,
    pub(super) set_priority: Lua,
    pub(super) find: Lua,
    pub(super) pop: Lua,
    pub(super) ack: Lua,
    pub(super) release: Lua,
    pub(super) renew: Lua,
    pub(super) renew_worker: Lua,
    pub(super) return_leases: Lua,
    pub(super) leases: Lua,
    pub(super) drop_queue: Lua,
    pub(super) presences: Lua,
    pub(super) reconcile_add: Lua,
    pub(super) reconcile_move: Lua,
    pub(super) reconcile_remove: Lua,
    pub(super) epoch: Lua,
    pub(super) trim: Lua,
    pub(super) ensure_queue: Lua,
    pub(super) register: Lua,
}

impl Scripts {
    pub(super) fn new() -> Self {
        let s = |body: &str| Lua::new(format!("{PRELUDE}\n{body}"));
        let hot = |body: &str| Lua::new(format!("{HOT_PRELUDE}{PRELUDE}{HOT_PRELUDE_END}\n{body}"));
        Scripts {
            add: hot(ADD),
            remove: s(REMOVE),
            list: s(LIST),
            oldest: s(OLDEST),
            mv: s(MOVE),
            set_priority: s(SET_PRIORITY),
            find: s(FIND),
            pop: hot(POP),
            ack: hot(ACK),
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
            epoch: Lua::new(EPOCH.to_owned()),
            trim: s(TRIM),
            ensure_queue: s(ENSURE_QUEUE),
            register: s(REGISTER),
        }
    }

    /// Every script, to load them all at once.
    pub(super) fn all(&self) -> [&Lua; 23] {
        [
            &self.add,
            &self.remove,
            &self.list,
            &self.oldest,
            &self.mv,
            &self.set_priority,
            &self.find,
            &self.pop,
            &self.ack,
            &self.release,
            &self.renew,
            &self.renew_worker,
            &self.return_leases,
            &self.leases,
            &self.drop_queue,
            &self.presences,
            &self.reconcile_add,
            &self.reconcile_move,
            &self.reconcile_remove,
            &self.epoch,
            &self.trim,
            &self.ensure_queue,
            &self.register,
        ]
    }
}
