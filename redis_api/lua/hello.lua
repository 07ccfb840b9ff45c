-- A worker (re)connects: ARGV prefix, worker_id, session, hub_id, machine_id, gpu_index, gpu_uuid,
-- gpu_name, vram_mb, version, running_job, running_token, lease_ms, boot_id, relaying_job,
-- relaying_token (pipelining: the finished job whose outputs it still relays).
-- Returns {1 when the worker keeps the running job it names (same token, lease still held),
-- else 0; the same for the relaying job}; {-1, -1} (nothing written) while another hub holds a
-- live socket for this worker id.
local worker, running, token, lease_ms = ARGV[2], ARGV[11], ARGV[12], tonumber(ARGV[13])
local boot = ARGV[14] or ''
local now = now_ms()
local wk = wkey(worker)
-- One live socket per worker id across hubs. The socket another hub holds is live while it
-- was heard within the lease and that hub is alive (subscribed to its own channel): that hub
-- is asked to ping it and close it if it stays silent, and this hello is refused (the worker
-- retries). A socket silent past its lease is replaced, and its hub told to close it. On this
-- hub, the socket layer has decided already.
local old = redis.call('HMGET', wk, 'connected', 'session', 'hub', 'seen_ms')
if old[1] == '1' and old[2] and old[2] ~= ARGV[3] and old[3] and old[3] ~= '' and old[3] ~= ARGV[4] then
  local heard = tonumber(old[4] or '0') + lease_ms > now
  local verb = heard and 'probe' or 'close'
  local listening = redis.call('PUBLISH', P .. 'hub:' .. old[3], verb .. '\n' .. worker .. '\n' .. old[2])
  if heard and listening > 0 then return {-1, -1} end
end
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

local held = redis.call('HMGET', wk, 'current_job', 'relay_job')
local resumed = 0
if running ~= '' and check_owner(running, token, worker) == nil then
  redis.call('ZADD', P .. 'running', now + lease_ms, running)
  redis.call('HSET', wk, 'current_job', running, 'state', 'busy')
  resumed = 1
end
local relaying = ARGV[15] or ''
local relay_resumed = 0
if relaying ~= '' and check_owner(relaying, ARGV[16], worker) == nil then
  redis.call('ZADD', P .. 'running', now + lease_ms, relaying)
  redis.call('HSET', wk, 'relay_job', relaying)
  relay_resumed = 1
else
  relaying = ''
end
-- A job recorded as this worker's that it no longer names is lost: the reaper requeues it now.
local kept = {[resumed == 1 and running or ''] = true, [relaying] = true}
for i, field in ipairs({'current_job', 'relay_job'}) do
  local id = held[i]
  if id and id ~= '' and not kept[id] then
    if check_owner(id, redis.call('HGET', jkey(id), 'token') or '', worker) == nil then
      redis.call('ZADD', P .. 'running', now, id)
    end
  end
end
if resumed == 0 and (held[1] or '') ~= '' then redis.call('HSET', wk, 'current_job', '') end
if relay_resumed == 0 and (held[2] or '') ~= '' then redis.call('HSET', wk, 'relay_job', '') end
feed('worker', worker)
return {resumed, relay_resumed}
