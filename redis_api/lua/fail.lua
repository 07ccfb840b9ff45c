-- A worker failed a job: ARGV prefix, job_id, token, worker_id, error (JSON), retryable (1|0), ttl_ms,
-- what the hub held back of the job's reports ('' if none; record_held), counts_against_worker
-- (1|0: an execution or ComfyUI error, not the workflow's fault), quarantine_after (0 = never), warm reported (1|'')
-- and the warm models ('\n'-joined folder/file).
-- Returns {'' | refusal, new status, quarantined (1|0)}.
local id, token, worker, ttl_ms = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[7])
if ARGV[11] == '1' then report_warm(worker, ARGV[12]) end
local refused = check_owner(id, token, worker)
if refused then return {refused, '', 0} end
local now = now_ms()
local wk = wkey(worker)
record_held(id, worker, ARGV[8], now)
redis.call('HINCRBY', wk, 'jobs_failed', 1)
local err = cjson.decode(ARGV[5])
local status
if err['type'] == 'timeout' then
  -- The worker saw the deadline first: the same outcome as the hub's reaper gives (reap.lua).
  end_attempt(id, now, 'timed_out', err)
  finish(id, 'timed_out', now, ttl_ms, err)
  status = 'timed_out'
else
  status = retry_or_end(id, now, ttl_ms, 'failed', err, ARGV[6] == '1')
end
local limit = tonumber(ARGV[10]) or 0
if ARGV[9] ~= '1' or limit <= 0 then
  redis.call('HDEL', wk, 'fail_streak')
  redis.call('DEL', P .. 'wfailed:' .. worker)
  return {'', status, 0}
end
-- K failures in a row: the worker is quarantined (takes nothing until `wgpu resume` or a restart)
-- and the jobs it failed get one more attempt on another worker.
local streak = redis.call('HINCRBY', wk, 'fail_streak', 1)
redis.call('RPUSH', P .. 'wfailed:' .. worker, id)
redis.call('LTRIM', P .. 'wfailed:' .. worker, -limit, -1)
redis.call('PEXPIRE', P .. 'wfailed:' .. worker, 86400000)
if streak < limit or (redis.call('HGET', wk, 'quarantined') or '') ~= '' then return {'', status, 0} end
local reason = streak .. ' jobs in a row failed here; last: ' .. tostring(err['type']) .. ': ' ..
  string.sub(tostring(err['message']), 1, 300)
redis.call('HSET', wk, 'quarantined', reason, 'quarantined_ms', now)
redis.call('ZREM', P .. 'idle', worker)
-- It takes nothing now: jobs must not wait for it as the GPU that has their models loaded.
for _, pid in ipairs(redis.call('SMEMBERS', P .. 'wpools:' .. worker)) do
  redis.call('SREM', P .. 'pwarm:' .. pid, worker)
end
for _, failed in ipairs(redis.call('LRANGE', P .. 'wfailed:' .. worker, 0, -1)) do
  local j = redis.call('HMGET', jkey(failed), 'status', 'worker_id', 'attempts', 'idempotency_key')
  if (j[1] == 'failed' or j[1] == 'dead') and j[2] == worker then
    redis.call('ZREM', P .. 'done:' .. j[1], failed)
    redis.call('PERSIST', jkey(failed))
    redis.call('PERSIST', wfkey(failed))
    redis.call('PERSIST', ekey(failed))
    if j[4] and j[4] ~= '' then redis.call('PERSIST', P .. 'idem:' .. j[4]) end
    redis.call('HSET', jkey(failed), 'max_attempts', tonumber(j[3]) + 1, 'finished_ms', '')
    requeue(failed, now, worker)
  end
end
redis.call('DEL', P .. 'wfailed:' .. worker)
return {'', status, 1}
