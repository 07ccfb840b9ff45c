-- Put a drained worker back in service: ARGV prefix, worker_id. Returns 1 if it was drained.
-- The work channel wakes its hub, whose next claim for it finds the queue.
local worker = ARGV[2]
local was = redis.call('HDEL', P .. 'drains', worker)
redis.call('PUBLISH', P .. 'work', '1')
return was
