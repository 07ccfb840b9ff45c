-- A worker finished a job: ARGV prefix, job_id, token, worker_id, outputs (JSON list), ttl_ms,
-- what the hub held back of the job's reports ('' if none; record_held), then, for
-- `completed.ready_next`, lease_ms, affinity_ms, backlog and cap ('' for no claim), then the non-file UI results (JSON object, ''
-- for none), then the claim's fencing token, then whether the worker reported its warm models
-- (1, else '') and them ('\n'-joined folder/file).
-- Returns {''} when recorded, {''} followed by claim_for's reply when it also claimed the next
-- job for the worker, or {why not}. Recorded once: a second report gets already_finished.
local id, token, worker, ttl_ms = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[6])
-- What is loaded is true whatever became of the job (and the next claim below reads it).
if ARGV[14] == '1' then report_warm(worker, ARGV[15]) end
local refused, status = check_owner(id, token, worker)
if refused then return {refused} end
local now = now_ms()
-- The job's fields are written once, with its status (finish): history, outputs, results (and
-- a held-back `started`'s prompt id).
local fields = {'outputs', ARGV[5], 'error', ''}
record_held(id, worker, ARGV[7], now, status, fields)
local _, _, was, w = end_attempt(id, now, 'succeeded', nil, nil, fields)
if ARGV[12] and ARGV[12] ~= '' then
  fields[#fields + 1] = 'results'
  fields[#fields + 1] = ARGV[12]
end
for _, output in ipairs(cjson.decode(ARGV[5])) do event(id, 'output', output) end
-- A success ends a run of failures (quarantine counts consecutive ones).
local done = tonumber(redis.call('HINCRBY', wkey(worker), 'jobs_done', 1))
if done > 0 and w and w[4] then
  redis.call('HDEL', wkey(worker), 'fail_streak')
  redis.call('DEL', P .. 'wfailed:' .. worker)
end
-- Its heartbeats keep the registration alive; its first success makes that a day, not an hour.
if done == 1 then expire_worker(wkey(worker), done) end
finish(id, 'succeeded', now, ttl_ms, nil, true, fields, was)
if ARGV[8] == '' then return {''} end
local claimed = claim_for(worker, tonumber(ARGV[8]), now,
  {tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11]), ARGV[13], nil, nil,
    w and w[3] == 'busy'})
table.insert(claimed, 1, '')
return claimed
