-- started/execution_started/progress from a worker, or `held` (what the hub held back of them,
-- recorded alone: payload as record_held takes it): ARGV prefix, kind, job_id, token, worker_id,
-- lease_ms, payload (the prompt id for started and execution_started, the progress JSON), and
-- for progress what the hub held back of the job's reports ('' if none, as record_held takes
-- it) and '1' when a job.progress webhook is due (the hub rate-limits them; webhook_outbox
-- skips jobs that did not opt in). An execution_started comes here only for a job not handed on
-- the worker's socket (resumed after a reconnect), of which the hub held nothing back.
-- Progress is the job's latest (the hub records it at a throttle, redis_api/progress.py): it is
-- live state, not history, so it goes in the hash and not in the events stream.
-- Returns '' when recorded, else why it was refused (stale_token, already_finished, unknown_job).
local kind, id, token, worker, lease_ms = ARGV[2], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
local refused = check_owner(id, token, worker)
if refused then return refused end
local now = now_ms()
if kind == 'started' then
  record_started(id, worker, ARGV[7])
elseif kind == 'held' then
  record_held(id, worker, ARGV[7], now)
elseif kind == 'execution_started' then
  record_running(id, worker, ARGV[7], now)
else
  record_held(id, worker, ARGV[8], now)
  redis.call('HSET', jkey(id), 'progress', ARGV[7])
  if ARGV[9] == '1' then webhook_outbox(id, 'job.progress', now) end
  feed('progress', id)  -- at the hub's throttle, like the hash
end
-- Any sign of life from the worker is as good as a heartbeat.
redis.call('ZADD', P .. 'running', now + lease_ms, id)
return ''
