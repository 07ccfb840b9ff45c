-- A worker finished a job: ARGV prefix, job_id, token, worker_id, outputs (JSON list), ttl_ms.
-- Returns '' when recorded, else why not. Recorded once: a second report gets already_finished.
local id, token, worker, ttl_ms = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[6])
local refused = check_owner(id, token, worker)
if refused then return refused end
local now = now_ms()
end_attempt(id, now, 'succeeded', nil)
redis.call('HSET', jkey(id), 'outputs', ARGV[5], 'error', '')
for _, output in ipairs(cjson.decode(ARGV[5])) do event(id, 'output', output) end
redis.call('HINCRBY', wkey(worker), 'jobs_done', 1)
finish(id, 'succeeded', now, ttl_ms, nil)
return ''
