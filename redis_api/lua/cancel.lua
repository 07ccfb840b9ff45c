-- A client cancels a job: ARGV prefix, job_id, ttl_ms.
-- Returns {outcome, worker_id, token}: outcome 'was_queued', 'was_running' (assigned or running:
-- its worker is told through the cancel channel), 'unknown_job', or the terminal status it already had.
local id, ttl_ms = ARGV[2], tonumber(ARGV[3])
local j = redis.call('HMGET', jkey(id), 'status', 'worker_id', 'token')
if not j[1] then return {'unknown_job', '', ''} end
if TERMINAL[j[1]] then return {j[1], '', ''} end
local now = now_ms()
local err = {type = 'cancelled', message = 'cancelled by a client'}
if HELD[j[1]] then
  publish_cancel(j[2], id, j[3], 'cancelled')
  end_attempt(id, now, 'cancelled', err)
  finish(id, 'cancelled', now, ttl_ms, err)
  return {'was_running', j[2] or '', j[3] or ''}
end
finish(id, 'cancelled', now, ttl_ms, err)
return {'was_queued', '', ''}
