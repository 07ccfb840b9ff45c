-- A hub takes due webhook deliveries: ARGV prefix, limit, lease_ms, claim token.
-- Each taken delivery is pushed lease_ms into the future (so a hub that dies while sending it
-- leaves it to another hub after the lease) and stamped with the claim token.
-- Returns {delivery, job_id, event, attempts, webhook_url, owner, ...} (6 per delivery), then
-- how long until the next delivery is due (0: more are due now; -1: none is waiting), so the
-- sender sleeps until then (or until a new delivery is announced on `wh:wake`).
local limit, lease_ms, claim = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local now = now_ms()
local function next_due()
  local first = redis.call('ZRANGE', P .. 'wh:due', 0, 0, 'WITHSCORES')
  if #first == 0 then return -1 end
  return math.max(0, tonumber(first[2]) - now)
end
local wait = next_due()
if wait ~= 0 then return {wait} end  -- one read when nothing is due
local out = {}
for _, delivery in ipairs(redis.call('ZRANGEBYSCORE', P .. 'wh:due', '-inf', now, 'LIMIT', 0, limit)) do
  local dkey = P .. 'wh:' .. delivery
  local d = redis.call('HMGET', dkey, 'job', 'event', 'attempts')
  local j = d[1] and redis.call('HMGET', jkey(d[1]), 'webhook_url', 'owner') or {}
  if not d[1] or not j[1] or j[1] == '' then
    -- The job's result expired (or the record is gone): nothing left to tell.
    redis.call('ZREM', P .. 'wh:due', delivery)
    redis.call('DEL', dkey)
  else
    redis.call('ZADD', P .. 'wh:due', now + lease_ms, delivery)
    redis.call('HSET', dkey, 'claim', claim)
    for _, v in ipairs({delivery, d[1], d[2], d[3], j[1], j[2] or ''}) do out[#out + 1] = v end
  end
end
out[#out + 1] = next_due()
return out
