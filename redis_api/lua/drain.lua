-- Take a worker out of service: ARGV prefix, worker_id, timeout_ms (0 = wait for its job).
-- The drain lives in `drains` (worker -> {since_ms, deadline_ms}), not in the worker's own hash,
-- so it holds before the worker first connects and across every reconnect. claim_for gives a
-- drained worker nothing; its current job runs on (drain_expire.lua releases it at the deadline).
-- Returns {since_ms, deadline_ms} (an existing drain keeps its start; a new timeout replaces its
-- deadline).
local worker, timeout_ms = ARGV[2], tonumber(ARGV[3])
local now = now_ms()
local since = now
local raw = redis.call('HGET', P .. 'drains', worker)
if raw then since = cjson.decode(raw)['since_ms'] end
local deadline = 0
if timeout_ms > 0 then deadline = now + timeout_ms end
redis.call('HSET', P .. 'drains', worker, cjson.encode({since_ms = since, deadline_ms = deadline}))
redis.call('ZREM', P .. 'idle', worker)
return {since, deadline}
