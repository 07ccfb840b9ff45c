-- A hub that stops hands back the deliveries it holds: ARGV prefix, claim token, limit.
-- Due again now (no attempt counted), so another hub, or this one after its restart, sends them
-- without waiting out the claim's lease (a claim whose reply was lost in the stop included).
-- Returns how many were handed back (and wakes the other hubs' senders if any).
local claim, limit = ARGV[2], tonumber(ARGV[3])
local now = now_ms()
local n = 0
for _, delivery in ipairs(redis.call('ZRANGEBYSCORE', P .. 'wh:due', now, '+inf', 'LIMIT', 0, limit)) do
  local dkey = P .. 'wh:' .. delivery
  if redis.call('HGET', dkey, 'claim') == claim then
    redis.call('HSET', dkey, 'claim', '')
    redis.call('ZADD', P .. 'wh:due', now, delivery)
    n = n + 1
  end
end
if n > 0 then redis.call('PUBLISH', P .. 'wh:wake', '1') end
return n
