-- How many queued jobs are in no lane (jobs an older hub queued before pools): ARGV prefix.
-- ZCARD queue minus the jobs of every lane; O(pools and lanes), not O(jobs), so a hub can ask
-- at every start and scan the queue (migrate.py) only when some are.
local lanes = 0
for _, pid in ipairs(redis.call('SMEMBERS', P .. 'pools')) do
  for _, owner in ipairs(redis.call('SMEMBERS', P .. 'powners:' .. pid)) do
    lanes = lanes + redis.call('ZCARD', lanekey(pid, owner))
  end
end
return redis.call('ZCARD', P .. 'queue') - lanes
