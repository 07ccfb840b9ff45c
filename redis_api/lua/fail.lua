-- A worker failed a job: ARGV prefix, job_id, token, worker_id, error (JSON), retryable (1|0), ttl_ms,
-- prompt_id held back from `started` ('' if none).
-- Returns {'' | refusal, new status}.
local id, token, worker, ttl_ms = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[7])
local refused = check_owner(id, token, worker)
if refused then return {refused, ''} end
local now = now_ms()
if ARGV[8] and ARGV[8] ~= '' then record_started(id, worker, ARGV[8]) end
redis.call('HINCRBY', wkey(worker), 'jobs_failed', 1)
local status = retry_or_end(id, now, ttl_ms, 'failed', cjson.decode(ARGV[5]), ARGV[6] == '1')
return {'', status}
