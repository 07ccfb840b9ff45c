-- A worker (re)connects: ARGV prefix, worker_id, session, hub_id, machine_id, gpu_index, gpu_uuid,
-- gpu_name, vram_mb, version, running_job, running_token, lease_ms, boot_id.
-- Returns 1 when the worker keeps the job it names (same token, lease still held), else 0.
local worker, running, token, lease_ms = ARGV[2], ARGV[11], ARGV[12], tonumber(ARGV[13])
local boot = ARGV[14] or ''
local now = now_ms()
local wk = wkey(worker)
redis.call('SADD', P .. 'workers', worker)
-- A new worker process (another boot id) starts with a clean record: no quarantine, nothing
-- loaded.
local previous_boot = redis.call('HGET', wk, 'boot_id')
if boot ~= '' and previous_boot ~= boot then
  redis.call('HDEL', wk, 'quarantined', 'quarantined_ms', 'fail_streak')
  redis.call('DEL', P .. 'wfailed:' .. worker, P .. 'warm:' .. worker)
end
redis.call('HSET', wk, 'id', worker, 'session', ARGV[3], 'hub', ARGV[4], 'machine_id', ARGV[5],
  'gpu_index', ARGV[6], 'gpu_uuid', ARGV[7], 'gpu_name', ARGV[8], 'vram_mb', ARGV[9],
  'version', ARGV[10], 'connected', 1, 'seen_ms', now, 'state', 'unavailable', 'boot_id', boot)
expire_worker(wk)
redis.call('ZREM', P .. 'idle', worker)
refresh_worker(worker)

local resumed = 0
if running ~= '' and check_owner(running, token, worker) == nil then
  redis.call('ZADD', P .. 'running', now + lease_ms, running)
  redis.call('HSET', wk, 'current_job', running, 'state', 'busy')
  resumed = 1
end
-- A job recorded as this worker's that it no longer names is lost: the reaper requeues it now.
local held = redis.call('HGET', wk, 'current_job')
if held and held ~= '' and held ~= (resumed == 1 and running or '') then
  if check_owner(held, redis.call('HGET', jkey(held), 'token') or '', worker) == nil then
    redis.call('ZADD', P .. 'running', now, held)
  end
  redis.call('HSET', wk, 'current_job', '')
end
return resumed
