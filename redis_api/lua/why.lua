-- Why jobs of these pools wait: ARGV prefix, stale_ms, pool ids...
-- Returns one reason per pool ('' when some connected worker can take its jobs).
local now, stale_ms = now_ms(), tonumber(ARGV[2])
local out = {}
for i = 3, #ARGV do out[#out + 1] = why_waiting(ARGV[i], now, stale_ms) end
return out
