-- Shared by every script (prepended when loading). ARGV[1] is always the key prefix.
-- Invariants: a job is in exactly one state; every change happens in one script; time is
-- Redis' own TIME; terminal states are final (except a quarantine's one more attempt).
--
-- Placement (see docs/architecture.md "Scheduling"): a queued job waits in a lane, a sorted set
-- per (pool, owner). A pool is the set of jobs with equal placement needs (required model files
-- and constraints); each worker has the set of pools it is eligible for (wpools:W), kept when a
-- pool appears or the worker's inventory changes. A claim looks only at the heads of the lanes
-- of the worker's eligible pools: its cost depends on the number of kinds of job, never on how
-- many jobs wait that this worker cannot take.
local P = ARGV[1]

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function jkey(id) return P .. 'job:' .. id end
local function wkey(id) return P .. 'worker:' .. id end
local function ekey(id) return P .. 'events:' .. id end
-- The workflow has its own key: the job hash stays small enough for Redis' compact encoding.
local function wfkey(id) return P .. 'wf:' .. id end
local function poolkey(pid) return P .. 'pool:' .. pid end
local function lanekey(pid, owner) return P .. 'lane:' .. pid .. ':' .. owner end

local TERMINAL = {succeeded = true, failed = true, cancelled = true, timed_out = true, dead = true,
  unschedulable = true, expired = true}
-- Held by a worker (token, lease): `assigned` (waiting in its ComfyUI's queue) and `running`
-- (ComfyUI sent execution_start). Whatever ends, reaps or counts a worker's job takes both.
local HELD = {assigned = true, running = true}
local EVENTS_MAXLEN = 1000
-- A score is band * ROUND + round: higher priority first, then the fair-share round (each
-- owner's jobs take consecutive rounds starting at the round being served), then job id.
local ROUND = 4398046511104  -- 2^42
-- A lane whose models are loaded on some GPU waits at most this many affinity waits for it.
local STARVE_FACTOR = 10

-- The dashboards' live feed (redis_api/live_feed.py): one hub-wide stream of what changed,
-- kind `job` or `progress` (data: the job id) or `worker` (the worker id). Written only while
-- some hub has a viewer (that hub keeps `feed_on` alive): nobody pays for it otherwise.
local FEED_MAXLEN = 10000
local feed_on = nil  -- looked up once per script (a script is atomic: it cannot change meanwhile)
local function feed(kind, id)
  if feed_on == nil then feed_on = redis.call('EXISTS', P .. 'feed_on') == 1 end
  if feed_on then
    redis.call('XADD', P .. 'feed', 'MAXLEN', '~', FEED_MAXLEN, '*', 'k', kind, 'd', id)
  end
end

local function event(id, kind, data)
  redis.call('XADD', ekey(id), 'MAXLEN', '~', EVENTS_MAXLEN, '*', 'k', kind, 'd', cjson.encode(data))
  if kind == 'status' then feed('job', id) end
end

-- Wake idle workers on every hub, but only when some worker is waiting (saves a publish per job
-- while all workers are busy).
local function publish_work(now)
  if #redis.call('ZRANGEBYSCORE', P .. 'idle', now, '+inf', 'LIMIT', 0, 1) > 0 then
    redis.call('PUBLISH', P .. 'work', '1')
  end
end

-- Tells whichever hub holds the worker's socket to send it `cancel`.
local function publish_cancel(worker, id, token, reason)
  if worker and worker ~= '' then
    redis.call('PUBLISH', P .. 'cancel', worker .. '\n' .. id .. '\n' .. token .. '\n' .. reason)
  end
end

local function split_lines(s)
  local out = {}
  if not s or s == '' then return out end
  for line in string.gmatch(s, '[^\n]+') do out[#out + 1] = line end
  return out
end

-- `folder/file` lines, sorted, from a requires JSON {folder: [file, ...]}.
local function req_lines(requires_json)
  if not requires_json or requires_json == '' then return '' end
  local files = {}
  for folder, names in pairs(cjson.decode(requires_json)) do
    for _, name in ipairs(names) do files[#files + 1] = folder .. '/' .. name end
  end
  table.sort(files)
  return table.concat(files, '\n')
end

-- Does a worker (its HMGET machine_id, gpu_index, gpu_uuid, gpu_name, vram_mb) meet a job's
-- constraints (c_machine, c_gpu, c_vram)?
local function fits(c_machine, c_gpu, c_vram, w)
  if c_machine and c_machine ~= '' and c_machine ~= w[1] then return false end
  if c_gpu and c_gpu ~= '' then
    local g = string.lower(c_gpu)
    local name = string.lower(w[4] or '')
    if g ~= (w[2] or '') and g ~= string.lower(w[3] or '') and
        not (name ~= '' and string.find(name, g, 1, true)) then
      return false
    end
  end
  if c_vram and c_vram ~= '' and tonumber(c_vram) > (tonumber(w[5]) or 0) then return false end
  return true
end

-- What placement reads of a worker: its caps (fits), whether it reported an inventory (a worker
-- that never did, such as an old one, is trusted with everything), whether it is connected.
local WORKER_CAPS = {'machine_id', 'gpu_index', 'gpu_uuid', 'gpu_name', 'vram_mb', 'inv_known',
  'connected', 'quarantined'}

-- May the worker count as having models loaded (caps = HMGET WORKER_CAPS)? A gone or
-- quarantined one takes nothing, so jobs must not wait for it.
local function may_be_warm(caps)
  return caps[7] == '1' and (caps[8] or '') == ''
end

local function has_all(setkey, lines)
  if lines == '' then return true end
  for _, h in ipairs(redis.call('SMISMEMBER', setkey, unpack(split_lines(lines)))) do
    if h == 0 then return false end
  end
  return true
end

-- p = HMGET pool req, c_machine, c_gpu, c_vram; caps = HMGET worker WORKER_CAPS.
local function pool_fits(p, worker, caps)
  if not fits(p[2], p[3], p[4], caps) then return false end
  if caps[6] ~= '1' then return true end
  return has_all(P .. 'inv:' .. worker, p[1] or '')
end

-- The pool of the job the worker runs now: it is loading that pool's models, so the pool counts
-- as warm on it until that attempt ends (with pipelining its relaying job is not this one).
local function loading_pool(worker)
  local current = redis.call('HGET', wkey(worker), 'current_job')
  if not current or current == '' then return nil end
  return redis.call('HGET', jkey(current), 'pool') or nil
end

-- Records whether eligible `worker` has pool `pid`'s models (`req`) loaded, as it reported
-- them, or is loading them (`loading`: the pool of its running job); a pool without
-- requirements is warm everywhere and has no such set.
local function set_warm(pid, worker, req, warm_ok, loading)
  if req == '' then return end
  if warm_ok and (pid == loading or has_all(P .. 'warm:' .. worker, req)) then
    redis.call('SADD', P .. 'pwarm:' .. pid, worker)
  else
    redis.call('SREM', P .. 'pwarm:' .. pid, worker)
  end
end

-- Records whether `worker` may take pool `pid`'s jobs, and (set_warm) whether it has the
-- pool's models loaded.
local function set_eligible(pid, worker, yes, req, warm_ok, loading)
  if yes then
    redis.call('SADD', P .. 'wpools:' .. worker, pid)
    redis.call('SADD', P .. 'pworkers:' .. pid, worker)
    set_warm(pid, worker, req, warm_ok, loading)
  else
    redis.call('SREM', P .. 'wpools:' .. worker, pid)
    redis.call('SREM', P .. 'pworkers:' .. pid, worker)
    redis.call('SREM', P .. 'pwarm:' .. pid, worker)
  end
end

-- After hello or a models report: which pools may this worker take now? O(pools).
local function refresh_worker(worker)
  local caps = redis.call('HMGET', wkey(worker), unpack(WORKER_CAPS))
  local loading = loading_pool(worker)
  for _, pid in ipairs(redis.call('SMEMBERS', P .. 'pools')) do
    local p = redis.call('HMGET', poolkey(pid), 'req', 'c_machine', 'c_gpu', 'c_vram')
    set_eligible(pid, worker, pool_fits(p, worker, caps), p[1] or '', may_be_warm(caps), loading)
  end
end

-- After the worker's warm models changed (or its quarantine ended): which of its pools are
-- warm on it now?
local function refresh_warm(worker)
  local warm_ok = may_be_warm(redis.call('HMGET', wkey(worker), unpack(WORKER_CAPS)))
  local loading = loading_pool(worker)
  for _, pid in ipairs(redis.call('SMEMBERS', P .. 'wpools:' .. worker)) do
    local req = redis.call('HGET', poolkey(pid), 'req') or ''
    set_warm(pid, worker, req, warm_ok, loading)
  end
end

-- After an attempt of pool `pid` ended on the worker: is the pool still warm there? (A pool
-- without requirements is warm everywhere: nothing more to read.)
local function refresh_pool_warm(pid, worker)
  local req = redis.call('HGET', poolkey(pid), 'req') or ''
  if req == '' then return end
  set_warm(pid, worker, req, may_be_warm(redis.call('HMGET', wkey(worker), unpack(WORKER_CAPS))),
    loading_pool(worker))
end

-- A pool appears with its first job: find its eligible workers once. O(workers).
local function ensure_pool(pid, req, c_machine, c_gpu, c_vram, now)
  if redis.call('SADD', P .. 'pools', pid) == 0 then return end
  redis.call('HSET', poolkey(pid), 'req', req, 'c_machine', c_machine or '', 'c_gpu', c_gpu or '',
    'c_vram', c_vram or '', 'created_ms', now)
  local p = {req, c_machine, c_gpu, c_vram}
  for _, worker in ipairs(redis.call('SMEMBERS', P .. 'workers')) do
    local caps = redis.call('HMGET', wkey(worker), unpack(WORKER_CAPS))
    if caps[1] then
      set_eligible(pid, worker, pool_fits(p, worker, caps), req, may_be_warm(caps), nil)
    end
  end
end

-- A pool empty for a while goes (the reaper calls this); a new job recreates it.
local function drop_pool(pid)
  for _, owner in ipairs(redis.call('SMEMBERS', P .. 'powners:' .. pid)) do
    redis.call('HDEL', P .. 'lserved', pid .. ':' .. owner)
  end
  for _, worker in ipairs(redis.call('SMEMBERS', P .. 'pworkers:' .. pid)) do
    redis.call('SREM', P .. 'wpools:' .. worker, pid)
  end
  redis.call('DEL', poolkey(pid), P .. 'pworkers:' .. pid, P .. 'pwarm:' .. pid,
    P .. 'powners:' .. pid)
  redis.call('SREM', P .. 'pools', pid)
end

-- What backpressure counts (enqueue.lua refuses beyond the limits), kept with the `queue` set:
-- workflow bytes queued in all, and jobs and bytes queued per owner (API key name).
-- `f`: the job's {owner, wf_bytes} when the caller has read them already.
local function queue_count(id, sign, f)
  f = f or redis.call('HMGET', jkey(id), 'owner', 'wf_bytes')
  local bytes = tonumber(f[2]) or 0
  if bytes ~= 0 and redis.call('INCRBY', P .. 'queued_bytes', sign * bytes) <= 0 then
    redis.call('DEL', P .. 'queued_bytes')  -- an empty queue leaves no key behind
  end
  if f[1] and f[1] ~= '' then
    if redis.call('HINCRBY', P .. 'queued_jobs_by', f[1], sign) <= 0 then
      redis.call('HDEL', P .. 'queued_jobs_by', f[1])
    end
    if redis.call('HINCRBY', P .. 'queued_bytes_by', f[1], sign * bytes) <= 0 then
      redis.call('HDEL', P .. 'queued_bytes_by', f[1])
    end
  end
end

-- Input bytes an owner stored (POST /uploads, inline and URL inputs) count against its byte
-- limit until they expire: `uploads:<owner>` (sha256 -> expiry ms), `upsize:<owner>` (sha256
-- -> size), `upbytes:<owner>` (their sum). All three expire with the owner's last input.
-- Returns the live bytes, forgetting (up to 1000) expired inputs first.
local function upload_bytes(owner, now)
  local zkey, sizes = P .. 'uploads:' .. owner, P .. 'upsize:' .. owner
  local total = P .. 'upbytes:' .. owner
  local gone = redis.call('ZRANGEBYSCORE', zkey, '-inf', now, 'LIMIT', 0, 1000)
  if #gone > 0 then
    local freed = 0
    for _, size in ipairs(redis.call('HMGET', sizes, unpack(gone))) do
      freed = freed + (tonumber(size) or 0)
    end
    redis.call('ZREM', zkey, unpack(gone))
    redis.call('HDEL', sizes, unpack(gone))
    if redis.call('DECRBY', total, freed) <= 0 then redis.call('DEL', total) end
  end
  return tonumber(redis.call('GET', total)) or 0
end

local function queue_add(id, score, f)
  if redis.call('ZADD', P .. 'queue', score, id) == 1 then queue_count(id, 1, f) end
end

local function queue_remove(id, f)
  if redis.call('ZREM', P .. 'queue', id) == 1 then queue_count(id, -1, f) end
end

-- Worker registrations expire: a day after the last heartbeat, or an hour for a worker that
-- never completed a job (so that ids made up by a client do not pile up).
local function expire_worker(wk, done)
  done = done or tonumber(redis.call('HGET', wk, 'jobs_done')) or 0
  redis.call('PEXPIRE', wk, done > 0 and 86400000 or 3600000)
end

-- Lanes stay listed in powners while empty (a claim meets an empty one as an empty ZRANGE);
-- the reaper forgets lanes and pools that stayed empty for a while (gc_pools).
local function lane_add(id, pid, owner, score, now, f)
  redis.call('ZADD', lanekey(pid, owner), score, id)
  if redis.call('SADD', P .. 'powners:' .. pid, owner) == 1 then
    redis.call('HSET', P .. 'lserved', pid .. ':' .. owner, now)
  end
  queue_add(id, score, f)
end

local function lane_remove(id, pid, owner, f)
  redis.call('ZREM', lanekey(pid, owner), id)
  queue_remove(id, f)
end

-- Forgets lanes empty and unserved for idle_ms, and pools without lanes. Looks at `count`
-- random pools per call (the reaper calls it often; pools are few).
local function gc_pools(now, idle_ms, count)
  for _, pid in ipairs(redis.call('SRANDMEMBER', P .. 'pools', count)) do
    for _, owner in ipairs(redis.call('SMEMBERS', P .. 'powners:' .. pid)) do
      local served = tonumber(redis.call('HGET', P .. 'lserved', pid .. ':' .. owner)) or 0
      if redis.call('EXISTS', lanekey(pid, owner)) == 0 and now - served >= idle_ms then
        redis.call('SREM', P .. 'powners:' .. pid, owner)
        redis.call('HDEL', P .. 'lserved', pid .. ':' .. owner)
      end
    end
    if redis.call('SCARD', P .. 'powners:' .. pid) == 0 then
      local created = tonumber(redis.call('HGET', poolkey(pid), 'created_ms')) or 0
      if now - created >= idle_ms then drop_pool(pid) end
    end
  end
end

-- Puts a job (its hash already written) in its pool's lane, creating the pool if needed.
-- `j` = {pool, owner, requires JSON, c_machine, c_gpu, c_vram[, wf_bytes]} (read from the hash
-- if nil).
local function place(id, score, now, j)
  j = j or redis.call('HMGET', jkey(id), 'pool', 'owner', 'requires', 'c_machine', 'c_gpu',
    'c_vram')
  local pid, owner = j[1] or '', j[2] or ''
  ensure_pool(pid, req_lines(j[3]), j[4], j[5], j[6], now)
  lane_add(id, pid, owner, score, now, j[7] and {owner, j[7]})  -- j[7]: wf_bytes, if known
end

-- `into`: a list of hash fields the caller writes itself (one HSET fewer), else written here.
-- `raw`: the job's `history` field as the caller read it.
local function add_history(id, attempt, worker, outcome, err, into, raw)
  local history = {}
  if raw and raw ~= '' then history = cjson.decode(raw) end
  local entry = {attempt = tonumber(attempt) or 0, worker_id = worker, outcome = outcome}
  if err then entry['error'] = err else entry['error'] = cjson.null end
  history[#history + 1] = entry
  if into then
    into[#into + 1] = 'history'
    into[#into + 1] = cjson.encode(history)
  else
    redis.call('HSET', jkey(id), 'history', cjson.encode(history))
  end
end

-- Returns what it read of the worker: current_job, relay_job, state, fail_streak (nil: none).
local function clear_worker_job(worker, id)
  if not worker or worker == '' then return nil end
  local w = redis.call('HMGET', wkey(worker), 'current_job', 'relay_job', 'state', 'fail_streak')
  if w[1] == id then
    if w[3] == 'busy' then
      redis.call('HSET', wkey(worker), 'current_job', '', 'state', 'idle')
    else
      redis.call('HSET', wkey(worker), 'current_job', '')
    end
  elseif w[2] == id then
    redis.call('HSET', wkey(worker), 'relay_job', '')  -- pipelining: its relay ended
  end
  return w
end

-- The attempt histograms of /metrics (all hubs, whichever ends the attempt): per outcome, how
-- long the job waited before this attempt ran and how long it ran. The split is ComfyUI's
-- execution_start (running_ms: the wait includes the time `assigned` in ComfyUI's queue), or
-- the claim for an attempt that never ran. t = {enqueued_ms, started_ms (claim), now, running_ms}.
-- Fields `<outcome>:<w|d>:<bucket>` (1-based into DURATION_BUCKETS_MS, which the loader prepends
-- from redis_api/metrics.py; one past the end is +Inf) and `<outcome>:<w|d>:sum` in ms.
local function bucket_of(ms)
  for i, bound in ipairs(DURATION_BUCKETS_MS) do
    if ms <= bound then return i end
  end
  return #DURATION_BUCKETS_MS + 1
end

local function observe_attempt(outcome, t)
  if not t[2] then return end  -- claimed by a hub that did not record when
  local split = t[4] or t[2]
  local wait, ran = math.max(0, split - t[1]), math.max(0, t[3] - split)
  local h = P .. 'attempt_hist'
  redis.call('HINCRBY', h, outcome .. ':w:' .. bucket_of(wait), 1)
  redis.call('HINCRBY', h, outcome .. ':w:sum', wait)
  redis.call('HINCRBY', h, outcome .. ':d:' .. bucket_of(ran), 1)
  redis.call('HINCRBY', h, outcome .. ':d:sum', ran)
end

-- Ends an attempt's worker bookkeeping: off the running/deadline sets, history, worker cleared,
-- the owner's running count down; observed in the histograms under `label` (default: outcome;
-- false: the caller observes it once it knows, with the timings returned second). `into`: see
-- add_history.
local function end_attempt(id, now, outcome, err, label, into)
  local j = redis.call('HMGET', jkey(id), 'attempts', 'worker_id', 'owner', 'pool',
    'enqueued_ms', 'started_ms', 'running_ms', 'history', 'requires', 'status', 'idempotency_key',
    'webhook_url', 'wh_events')
  redis.call('ZREM', P .. 'running', id)
  redis.call('ZREM', P .. 'assigned', id)
  redis.call('ZREM', P .. 'deadlines', id)
  add_history(id, j[1], j[2] or '', outcome, err, into, j[8] or '')
  local w = clear_worker_job(j[2], id)
  -- A job without model requirements is in a pool warm everywhere: nothing to refresh.
  if j[2] and j[2] ~= '' and j[4] and (j[9] or '') ~= '' then refresh_pool_warm(j[4], j[2]) end
  if j[3] and j[3] ~= '' and tonumber(redis.call('HINCRBY', P .. 'orun', j[3], -1)) <= 0 then
    redis.call('HDEL', P .. 'orun', j[3])
  end
  local timings = {tonumber(j[5]) or 0, tonumber(j[6]), now, tonumber(j[7])}
  if label ~= false then observe_attempt(label or outcome, timings) end
  -- Third: what finish reads of the job (its `was`), as it was before this attempt ended;
  -- fourth: what clear_worker_job read of the worker.
  return j[2] or '', timings, {j[10], j[4], j[3], j[11], j[12], j[13]}, w
end

-- Webhook outbox (redis_api/webhooks.py delivers it): a delivery record `wh:<job>.<event>` and
-- its due time in `wh:due`, written in the same script that ends the job, so no end is lost.
-- `f`: the job's {webhook_url, wh_events} when the caller has read them already.
local function webhook_outbox(id, event, now, f)
  f = f or redis.call('HMGET', jkey(id), 'webhook_url', 'wh_events')
  if not f[1] or f[1] == '' then return end
  -- `webhook_events` given at submit: only those; else every final event (no progress).
  local chosen = f[2] and f[2] ~= ''
  if chosen and not (',' .. f[2] .. ','):find(',' .. event .. ',', 1, true) then return end
  if not chosen and event == 'job.progress' then return end
  local delivery = id .. '.' .. event
  redis.call('HSET', P .. 'wh:' .. delivery, 'job', id, 'event', event, 'attempts', 0,
    'created_ms', now, 'claim', '')
  redis.call('ZADD', P .. 'wh:due', now, delivery)
  redis.call('PUBLISH', P .. 'wh:wake', '1')  -- the hubs' senders wait for this, not poll
  if event ~= 'job.progress' then redis.call('HSET', jkey(id), 'wh_next_ms', now) end
end

-- Moves a job to a terminal state and starts its result TTL. `ended`: end_attempt already took
-- it off the running/assigned/deadline sets; `extra`: more hash fields to write with the status;
-- `was`: its status, pool, owner, idempotency_key, webhook_url, wh_events if the caller read them.
local function finish(id, status, now, ttl_ms, err, ended, extra, was)
  local key = jkey(id)
  was = was or redis.call('HMGET', key, 'status', 'pool', 'owner', 'idempotency_key',
    'webhook_url', 'wh_events')
  if was[1] == 'queued' then lane_remove(id, was[2] or '', was[3] or '') end
  if not ended then
    redis.call('ZREM', P .. 'running', id)
    redis.call('ZREM', P .. 'assigned', id)
    redis.call('ZREM', P .. 'deadlines', id)
  end
  local fields = extra or {}
  fields[#fields + 1] = 'status'
  fields[#fields + 1] = status
  fields[#fields + 1] = 'finished_ms'
  fields[#fields + 1] = now
  if err then
    fields[#fields + 1] = 'error'
    fields[#fields + 1] = cjson.encode(err)
  end
  redis.call('HSET', key, unpack(fields))
  redis.call('ZADD', P .. 'done:' .. status, now + ttl_ms, id)
  event(id, 'status', {status = status})
  event(id, 'done', {status = status})
  redis.call('PEXPIRE', key, ttl_ms)
  redis.call('PEXPIRE', ekey(id), ttl_ms)
  redis.call('PEXPIRE', wfkey(id), ttl_ms)
  local idem = was[4]
  if idem and idem ~= '' then redis.call('PEXPIRE', P .. 'idem:' .. idem, ttl_ms) end
  webhook_outbox(id, 'job.' .. status, now, {was[5], was[6]})
end

-- Puts a job back in its place in the queue (its original score: retries keep their turn).
local function requeue(id, now, avoid)
  local key = jkey(id)
  redis.call('HSET', key, 'status', 'queued', 'worker_id', '', 'enqueued_ms', now,
    'avoid_worker', avoid or '', 'progress', '')
  place(id, tonumber(redis.call('HGET', key, 'score')), now)
  event(id, 'status', {status = 'queued'})
  publish_work(now)
end

-- After an attempt ends without success: requeue while attempts remain, else `dead`
-- (or `failed` at once when the error says retrying cannot help).
-- Observed as `retried`, `failed` or `dead`.
local function retry_or_end(id, now, ttl_ms, outcome, err, retryable)
  local worker, timings = end_attempt(id, now, outcome, err, false)
  local j = redis.call('HMGET', jkey(id), 'attempts', 'max_attempts')
  local status = 'queued'
  if not retryable then
    status = 'failed'
  elseif tonumber(j[1]) >= tonumber(j[2]) then
    status = 'dead'
  end
  observe_attempt(status == 'queued' and 'retried' or status, timings)
  if status ~= 'queued' then
    finish(id, status, now, ttl_ms, err)
    return status
  end
  if err then redis.call('HSET', jkey(id), 'error', cjson.encode(err)) end
  requeue(id, now, worker)
  return 'queued'
end

-- Checks a worker's report: the job must be held (assigned or running) under this token on
-- this worker. Returns nil and the job's status when it is.
local function check_owner(id, token, worker)
  local j = redis.call('HMGET', jkey(id), 'status', 'token', 'worker_id')
  if not j[1] then return 'unknown_job' end
  if TERMINAL[j[1]] then return 'already_finished' end
  if not HELD[j[1]] or j[2] ~= token or j[3] ~= worker then return 'stale_token' end
  return nil, j[1]
end

-- A worker said `started`: its ComfyUI prompt id, and a status event (the job's status as it
-- is) for SSE. The hub may hold it back and pass it with the job's next fenced script (saves a
-- script per job). `status`: the job's, when the caller knows it; `into`: as in add_history.
local function record_started(id, worker, prompt_id, status, into)
  local key = jkey(id)
  if into then
    into[#into + 1] = 'prompt_id'
    into[#into + 1] = prompt_id
  else
    redis.call('HSET', key, 'prompt_id', prompt_id)
  end
  event(id, 'status', {status = status or redis.call('HGET', key, 'status'), worker_id = worker,
    prompt_id = prompt_id})
end

-- ComfyUI began executing the job's prompt (worker message `execution_started`): assigned ->
-- running, once. Returns true when it changed the status.
local function record_running(id, worker, prompt_id, now)
  local key = jkey(id)
  if redis.call('HGET', key, 'status') ~= 'assigned' then return false end
  if prompt_id ~= '' then
    redis.call('HSET', key, 'status', 'running', 'running_ms', now, 'prompt_id', prompt_id)
  else
    redis.call('HSET', key, 'status', 'running', 'running_ms', now)
    prompt_id = redis.call('HGET', key, 'prompt_id') or ''
  end
  redis.call('ZREM', P .. 'assigned', id)
  event(id, 'status', {status = 'running', worker_id = worker, prompt_id = prompt_id})
  return true
end

-- The worker reported what its ComfyUI has loaded (`folder/file` lines): the worker is the
-- only source of its warm set (the hub does not guess it at claim).
local function report_warm(worker, lines)
  local wset = P .. 'warm:' .. worker
  redis.call('DEL', wset)
  local loaded = split_lines(lines)
  if #loaded > 0 then
    redis.call('SADD', wset, unpack(loaded))
    redis.call('PEXPIRE', wset, 86400000)
  end
  refresh_warm(worker)
end

-- What the hub held back of a job's reports, recorded by its next fenced script: `started`'s
-- prompt id, or 'run:<ms ago>:<prompt id>' for ComfyUI's execution start (assigned -> running,
-- dated when the worker said it; see redis_api/worker_ws.py RUNNING_HOLD_S). `status`, `into`:
-- as record_started takes them, for a plain `started`.
local function record_held(id, worker, held, now, status, into)
  if not held or held == '' then return end
  local ago, prompt_id = string.match(held, '^run:(%d+):(.*)$')
  if not ago then
    record_started(id, worker, held, status, into)
  elseif not record_running(id, worker, prompt_id, now - tonumber(ago)) and prompt_id ~= '' then
    record_started(id, worker, prompt_id)
  end
end

-- Is some connected, unquarantined worker eligible for the pool? If not, why (for people).
-- `stale_ms`: a worker silent that long counts as gone (its hub may have died).
local function why_waiting(pid, now, stale_ms)
  local p = redis.call('HMGET', poolkey(pid), 'req', 'c_machine', 'c_gpu', 'c_vram')
  if not p[1] then return '' end
  local fitting, any = {}, false
  for _, worker in ipairs(redis.call('SMEMBERS', P .. 'workers')) do
    local caps = redis.call('HMGET', wkey(worker), 'machine_id', 'gpu_index', 'gpu_uuid',
      'gpu_name', 'vram_mb', 'inv_known', 'connected', 'seen_ms', 'quarantined')
    if caps[7] == '1' and now - (tonumber(caps[8]) or 0) <= stale_ms then
      any = true
      if fits(p[2], p[3], p[4], caps) then fitting[#fitting + 1] = {worker, caps} end
    end
  end
  if not any then return 'no worker is connected' end
  if #fitting == 0 then
    local parts = {}
    if p[2] ~= '' then parts[#parts + 1] = 'machine_id=' .. p[2] end
    if p[3] ~= '' then parts[#parts + 1] = 'gpu=' .. p[3] end
    if p[4] ~= '' then parts[#parts + 1] = 'min_vram_mb=' .. p[4] end
    return 'no connected worker matches ' .. table.concat(parts, ', ')
  end
  local files = split_lines(p[1])
  local complete = {}
  local found = {}
  for _, f in ipairs(fitting) do
    local worker, caps = f[1], f[2]
    local all = true
    if caps[6] == '1' and #files > 0 then
      local have = redis.call('SMISMEMBER', P .. 'inv:' .. worker, unpack(files))
      for i, h in ipairs(have) do
        if h == 1 then found[i] = true else all = false end
      end
    else
      for i = 1, #files do found[i] = true end
    end
    if all then complete[#complete + 1] = caps end
  end
  local missing = {}
  for i, name in ipairs(files) do
    if not found[i] and #missing < 3 then missing[#missing + 1] = name end
  end
  if #missing > 0 then return 'no connected worker has ' .. table.concat(missing, ', ') end
  if #complete == 0 then return 'no connected worker has all of ' .. table.concat(files, ', ') end
  for _, caps in ipairs(complete) do
    if not caps[9] or caps[9] == '' then return '' end
  end
  return 'every connected worker that can run it is quarantined'
end

-- What a claim reads of a lane's head job (LANE_HEAD[i] is field i): placement reads the first
-- three, the claim of the picked one the rest (one read of the job, not two).
local LANE_HEAD = {'status', 'avoid_worker', 'enqueued_ms', 'timeout_s', 'extras', 'attempts',
  'owner', 'wf_bytes', 'requires'}

-- The head job of a lane, dropping entries that are not queued (defensive): its id, score and
-- fields (LANE_HEAD).
local function lane_head(pid, owner)
  local lane = lanekey(pid, owner)
  for _ = 1, 8 do
    local head = redis.call('ZRANGE', lane, 0, 0, 'WITHSCORES')
    if not head[1] then return nil end
    local j = redis.call('HMGET', jkey(head[1]), unpack(LANE_HEAD))
    if j[1] == 'queued' then
      return head[1], tonumber(head[2]), j
    end
    redis.call('ZREM', lane, head[1])
    queue_remove(head[1])
  end
  return nil
end

-- Is another idle worker, eligible for the pool, waiting now?
local function other_idle(pid, worker, now)
  for _, other in ipairs(redis.call('SMEMBERS', P .. 'pworkers:' .. pid)) do
    if other ~= worker then
      local until_ms = redis.call('ZSCORE', P .. 'idle', other)
      if until_ms and tonumber(until_ms) >= now then return true end
    end
  end
  return false
end

-- How many queued jobs want the models loaded on `w`: the jobs of the pools warm on it.
-- O(its eligible pools and their lanes).
local function warm_need(w)
  local need = 0
  for _, pid in ipairs(redis.call('SMEMBERS', P .. 'wpools:' .. w)) do
    if redis.call('SISMEMBER', P .. 'pwarm:' .. pid, w) == 1 then
      for _, owner in ipairs(redis.call('SMEMBERS', P .. 'powners:' .. pid)) do
        need = need + redis.call('ZCARD', lanekey(pid, owner))
      end
    end
  end
  return need
end

-- Evict the least needed: is another idle worker eligible for pool `pid` whose loaded models
-- queued jobs need less than this worker's? Looks at up to EVICT_LOOK idle workers.
local EVICT_LOOK = 16
local function less_needed_idle(pid, worker, now)
  local mine = nil
  for _, other in ipairs(redis.call('ZRANGEBYSCORE', P .. 'idle', now, '+inf', 'LIMIT', 0,
      EVICT_LOOK + 1)) do
    if other ~= worker and redis.call('SISMEMBER', P .. 'pworkers:' .. pid, other) == 1 then
      if mine == nil then
        mine = warm_need(worker)
        if mine == 0 then return false end
      end
      if warm_need(other) < mine then return true end
    end
  end
  return false
end

-- A worker asks for a job (after `ready`, or with `completed.ready_next`). `opts`:
-- {affinity_ms (< 0: no affinity, plain priority/fair order), backlog, cap (max running per
-- owner, 0 = none), fencing token, relaying job id, its token (pipelining: `ready.relaying`,
-- the finished job whose outputs the worker still relays; it stays the worker's, as relay_job),
-- true when the worker was `busy` until this script (then it has no `idle` entry: only a claim
-- miss adds one, and it makes the worker idle)}.
-- Returns {1, job_id, token, attempt, timeout_s, workflow, enqueued_ms, now_ms, extras} on a claim,
-- {0} when the queue is empty, {2} when nothing queued fits this worker or it is drained,
-- {3, retry_ms} when
-- jobs wait for a worker that has their models loaded (ask again then), {4} when the worker is
-- quarantined. Without a claim the worker is recorded as idle (until lease_ms from now; its hub
-- refreshes that while it waits).
local function claim_for(worker, lease_ms, now, opts)
  local wk = wkey(worker)
  local affinity_ms, backlog, cap = opts[1], opts[2], opts[3]

  -- A worker asking for work holds none but the job it names as relaying: any other job still
  -- recorded as its own was lost with it.
  local w = redis.call('HMGET', wk, 'current_job', 'quarantined', 'relay_job')
  local keep = opts[5] or ''
  if keep ~= '' and check_owner(keep, opts[6], worker) then keep = '' end
  for _, held in ipairs({w[1] or '', w[3] or ''}) do
    if held ~= '' and held ~= keep then
      local j = redis.call('HMGET', jkey(held), 'status', 'worker_id')
      if HELD[j[1]] and j[2] == worker then
        redis.call('ZADD', P .. 'running', now, held)  -- the reaper requeues it now
      end
    end
  end
  if (w[1] or '') ~= '' or (w[3] or '') ~= keep then
    redis.call('HSET', wk, 'current_job', '', 'relay_job', keep)
  end
  if w[2] and w[2] ~= '' then
    redis.call('ZREM', P .. 'idle', worker)
    redis.call('HSET', wk, 'state', 'idle')
    return {4}
  end
  -- Drained (drain.lua): no new work. Idle in its own hash, but not offered to the queue.
  if redis.call('HEXISTS', P .. 'drains', worker) == 1 then
    redis.call('HSET', wk, 'state', 'idle')
    return {2}
  end

  -- The heads of the lanes this worker may take, in the best priority band.
  local best_band, cands = nil, {}
  for _, pid in ipairs(redis.call('SMEMBERS', P .. 'wpools:' .. worker)) do
    for _, owner in ipairs(redis.call('SMEMBERS', P .. 'powners:' .. pid)) do
      if cap <= 0 or owner == '' or (tonumber(redis.call('HGET', P .. 'orun', owner)) or 0) < cap then
        local id, score, j = lane_head(pid, owner)
        local avoid = j and j[2] or ''
        if id and not (avoid == worker and other_idle(pid, worker, now)) then
          local band = math.floor(score / ROUND)
          if best_band == nil or band < best_band then
            best_band = band
            cands = {}
          end
          if band == best_band then
            cands[#cands + 1] = {pid = pid, owner = owner, id = id, score = score,
              enqueued = tonumber(j[3]) or 0, f = j}
          end
        end
      end
    end
  end

  -- The candidate's pool requirements ('' for a job that has none: nothing to read).
  local function pool_req(c)
    if c.req == nil then
      c.req = (c.f[9] or '') == '' and '' or (redis.call('HGET', poolkey(c.pid), 'req') or '')
    end
    return c.req
  end

  local function min_of(list)
    local best = nil
    for _, c in ipairs(list) do
      if best == nil or c.score < best.score or (c.score == best.score and c.id < best.id) then
        best = c
      end
    end
    return best
  end

  local pick, retry_ms = nil, nil
  if #cands > 0 and affinity_ms < 0 then
    pick = min_of(cands)
  elseif #cands > 0 then
    -- Affinity: take a job whose models are loaded here; a job whose lane has waited longer
    -- than affinity_ms competes with those by order (no starvation). Without such work, take a
    -- job that needs another GPU (nobody has its models loaded, its lane is not being served,
    -- or its backlog is long for the GPUs serving it); else wait a little for a warm one.
    local first, helps = {}, {}
    for _, c in ipairs(cands) do
      local req = pool_req(c)
      if req == '' or redis.call('SISMEMBER', P .. 'pwarm:' .. c.pid, worker) == 1 then
        c.warm = true
        first[#first + 1] = c
      else
        -- How long the lane has gone unserved: since its last claim or its head's arrival.
        local served = tonumber(redis.call('HGET', P .. 'lserved', c.pid .. ':' .. c.owner)) or now
        local waited = now - math.max(served, c.enqueued)
        local warm_elsewhere = redis.call('SCARD', P .. 'pwarm:' .. c.pid)
        -- A lane nobody has loaded waits affinity_ms for a GPU; one whose warm GPUs are busy
        -- elsewhere (a long job, a drain) STARVE_FACTOR times that.
        local bound = warm_elsewhere == 0 and affinity_ms or STARVE_FACTOR * affinity_ms
        c.waited = waited
        if waited >= bound then
          first[#first + 1] = c
        elseif warm_elsewhere == 0 or waited >= affinity_ms or
            redis.call('ZCARD', lanekey(c.pid, c.owner)) > backlog * warm_elsewhere then
          helps[#helps + 1] = c
        else
          local left = affinity_ms - waited
          if retry_ms == nil or left < retry_ms then retry_ms = left end
        end
      end
    end
    pick = min_of(first) or min_of(helps)
    -- A job nobody here has loaded goes preferably to the idle GPU whose loaded models the
    -- queue needs least (it evicts what is least needed); this one leaves it to that GPU for at
    -- most affinity_ms (then anyone takes it: bounded).
    if pick and not pick.warm and pick.waited < affinity_ms and
        less_needed_idle(pick.pid, worker, now) then
      local left = affinity_ms - pick.waited
      if retry_ms == nil or left < retry_ms then retry_ms = left end
      pick = nil
    end
  end

  if pick == nil then
    redis.call('ZADD', P .. 'idle', now + lease_ms, worker)
    redis.call('HSET', wk, 'state', 'idle')
    if retry_ms then return {3, math.max(1, math.floor(retry_ms))} end
    if #cands == 0 and redis.call('ZCARD', P .. 'queue') == 0 then return {0} end
    return {2}
  end

  local id = pick.id
  local key = jkey(id)
  -- The fencing token: random, chosen by the hub (opts[4]), so it cannot be guessed.
  local token = opts[4] or redis.call('INCR', P .. 'seq')
  local h = pick.f
  local f = {h[4], nil, h[3], h[5], h[6], h[7], h[8]}
  local attempt = (tonumber(f[5]) or 0) + 1
  -- In the hash: a job stored by an older hub.
  f[2] = redis.call('GET', wfkey(id)) or redis.call('HGET', key, 'workflow')
  -- `assigned` until the worker says ComfyUI began executing it (record_running).
  redis.call('HSET', key, 'status', 'assigned', 'token', token, 'worker_id', worker,
    'started_ms', now, 'running_ms', '', 'progress', '', 'prompt_id', '', 'attempts', attempt)
  pool_req(pick)
  -- When the lane was last served (affinity reads it; gc_pools forgets idle lanes by it).
  if pick.req ~= '' then
    redis.call('HSET', P .. 'lserved', pick.pid .. ':' .. pick.owner, now)
  end
  lane_remove(id, pick.pid, pick.owner, {f[6], f[7]})
  if pick.owner ~= '' then redis.call('HINCRBY', P .. 'orun', pick.owner, 1) end
  -- The worker is loading the job's models: while it runs, the pool's other jobs may wait for
  -- it as for a warm GPU (its warm set itself changes only when it reports one).
  if pick.req ~= '' then redis.call('SADD', P .. 'pwarm:' .. pick.pid, worker) end
  local round = pick.score % ROUND
  if round > (tonumber(redis.call('HGET', P .. 'fair', 'v')) or 0) then
    redis.call('HSET', P .. 'fair', 'v', round)
  end
  redis.call('ZADD', P .. 'running', now + lease_ms, id)
  redis.call('ZADD', P .. 'assigned', now, id)
  redis.call('ZADD', P .. 'deadlines', now + math.floor(tonumber(f[1]) * 1000), id)
  if not opts[7] then redis.call('ZREM', P .. 'idle', worker) end
  redis.call('HSET', wk, 'current_job', id, 'state', 'busy')
  event(id, 'status', {status = 'assigned', worker_id = worker, attempt = attempt})
  return {1, id, token, attempt, f[1], f[2], tonumber(f[3]), now, f[4] or ''}
end
