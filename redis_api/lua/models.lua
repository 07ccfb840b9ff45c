-- A worker reports its models: ARGV prefix, worker_id, session, digest, files ('\n'-joined
-- folder/file), warm files (same form).
-- Replaces its inventory and warm set and recomputes which pools it may take. Returns 1, or 0
-- when the session is not the worker's current one (a stale socket).
local worker, session, digest = ARGV[2], ARGV[3], ARGV[4]
local wk = wkey(worker)
if redis.call('HGET', wk, 'session') ~= session then return 0 end
local inv, warm = P .. 'inv:' .. worker, P .. 'warm:' .. worker
redis.call('DEL', inv, warm)
local files = split_lines(ARGV[5])
for i = 1, #files, 1000 do
  redis.call('SADD', inv, unpack(files, i, math.min(i + 999, #files)))
end
local loaded = split_lines(ARGV[6])
if #loaded > 0 then redis.call('SADD', warm, unpack(loaded)) end
redis.call('PEXPIRE', inv, 86400000)
redis.call('PEXPIRE', warm, 86400000)
redis.call('HSET', wk, 'inv_known', 1, 'models_digest', digest, 'models_count', #files)
refresh_worker(worker)
publish_work(now_ms())
return 1
