-- Put a worker back in service (`wgpu resume`): ARGV prefix, worker_id. Ends its drain and its
-- quarantine. Returns {1 if it was drained, 1 if it was quarantined}.
-- The work channel wakes its hub, whose next claim for it finds the queue.
local worker = ARGV[2]
local wk = wkey(worker)
local was = redis.call('HDEL', P .. 'drains', worker)
local quarantined = (redis.call('HGET', wk, 'quarantined') or '') ~= '' and 1 or 0
redis.call('HDEL', wk, 'quarantined', 'quarantined_ms', 'fail_streak')
redis.call('DEL', P .. 'wfailed:' .. worker)
if quarantined == 1 then refresh_warm(worker) end  -- its loaded models count again
redis.call('PUBLISH', P .. 'work', '1')
return {was, quarantined}
