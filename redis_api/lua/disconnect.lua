-- A worker's socket closed: ARGV prefix, worker_id, session, grace_ms.
-- Only the session that the worker last said hello on may mark it gone (a reconnect on another
-- hub may already have replaced it). Its jobs keep at most grace_ms of lease, so a quick
-- reconnect resumes it and otherwise the reaper requeues it. grace_ms < 0 (the hub itself is
-- shutting down) leaves the lease alone: the worker did not go away and resumes on another hub.
local worker, session, grace_ms = ARGV[2], ARGV[3], tonumber(ARGV[4])
local now = now_ms()
local wk = wkey(worker)
if redis.call('HGET', wk, 'session') ~= session then return 0 end
redis.call('HSET', wk, 'connected', 0, 'state', 'offline', 'seen_ms', now)
redis.call('ZREM', P .. 'idle', worker)
-- Gone workers do not count as having models loaded (cold idle workers stop waiting for them).
for _, pid in ipairs(redis.call('SMEMBERS', P .. 'wpools:' .. worker)) do
  redis.call('SREM', P .. 'pwarm:' .. pid, worker)
end
-- Both jobs it may hold: the running one and (pipelining) the one whose outputs it relays.
for _, held in ipairs(redis.call('HMGET', wk, 'current_job', 'relay_job')) do
  if held and held ~= '' and grace_ms >= 0 then
    local lease = redis.call('ZSCORE', P .. 'running', held)
    if lease and redis.call('HGET', jkey(held), 'worker_id') == worker and tonumber(lease) > now + grace_ms then
      redis.call('ZADD', P .. 'running', now + grace_ms, held)
    end
  end
end
feed('worker', worker)
return 1
