-- A worker's heartbeat: ARGV prefix, worker_id, session, job_id, token, lease_ms, gpu_stats,
-- comfyui_ok, models_digest, relaying job, its token.
-- Renews the lease of the job it names (or the one recorded as its own), and of the job whose
-- outputs it still relays (pipelining).
-- Returns {why the named job is no longer the worker's or '', 1 when the hub's record of the
-- worker's models differs from the digest it sent (then it sends `models` again), why the
-- relaying job is no longer the worker's or ''}.
local worker, job, token, lease_ms = ARGV[2], ARGV[4], ARGV[5], tonumber(ARGV[6])
local now = now_ms()
local wk = wkey(worker)
redis.call('HSET', wk, 'seen_ms', now, 'gpu_stats', ARGV[7], 'comfyui_ok', ARGV[8])
if redis.call('HGET', wk, 'session') == ARGV[3] then redis.call('HSET', wk, 'connected', 1) end
expire_worker(wk)
local stale = 0
if ARGV[9] and ARGV[9] ~= '' then
  if redis.call('HGET', wk, 'models_digest') ~= ARGV[9] then stale = 1 end
  redis.call('PEXPIRE', P .. 'inv:' .. worker, 86400000)
end
redis.call('PEXPIRE', P .. 'wpools:' .. worker, 86400000)
local relaying = ARGV[10] or ''
local relay_refused = ''
if relaying ~= '' then
  relay_refused = check_owner(relaying, ARGV[11], worker) or ''
  if relay_refused == '' then redis.call('ZADD', P .. 'running', now + lease_ms, relaying) end
end
if job == '' then
  job = redis.call('HGET', wk, 'current_job') or ''
  if job == '' then return {'', stale, relay_refused} end
  token = redis.call('HGET', jkey(job), 'token') or ''
end
local refused = check_owner(job, token, worker)
if refused then return {refused, stale, relay_refused} end
redis.call('ZADD', P .. 'running', now + lease_ms, job)
return {'', stale, relay_refused}
