-- An owner stores an input (POST /uploads, or an inline/URL input of its job): ARGV prefix, owner,
-- sha256, size, ttl_ms, limit (MAX_QUEUED_BYTES_PER_KEY, 0 = none).
-- Its bytes count against the owner's byte limit, with its queued workflow bytes, until it
-- expires (a repeat of the same input counts once and refreshes its expiry).
-- Returns {1, retry_ms, bytes now counted} when charged, {0, retry_ms, bytes counted} beyond the
-- limit (retry_ms: until the owner's first input expires, -1 when it holds none). sha256 '' only
-- reads the bytes counted now (expired inputs forgotten first).
local owner, sha, size = ARGV[2], ARGV[3], tonumber(ARGV[4])
local ttl_ms, limit = tonumber(ARGV[5]), tonumber(ARGV[6])
local now = now_ms()
local zkey = P .. 'uploads:' .. owner
local used = upload_bytes(owner, now) +
  (tonumber(redis.call('HGET', P .. 'queued_bytes_by', owner)) or 0)
local first = redis.call('ZRANGE', zkey, 0, 0, 'WITHSCORES')
local retry_ms = first[2] and math.max(1, tonumber(first[2]) - now) or -1
if sha == '' then return {1, retry_ms, used} end
local add = redis.call('ZSCORE', zkey, sha) and 0 or size
if limit > 0 and add > 0 and used + add > limit then return {0, retry_ms, used} end
redis.call('ZADD', zkey, now + ttl_ms, sha)
if add > 0 then
  redis.call('HSET', P .. 'upsize:' .. owner, sha, size)
  redis.call('INCRBY', P .. 'upbytes:' .. owner, add)
end
for _, key in ipairs({zkey, P .. 'upsize:' .. owner, P .. 'upbytes:' .. owner}) do
  redis.call('PEXPIRE', key, ttl_ms)
end
return {1, retry_ms, used + add}
