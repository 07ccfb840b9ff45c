-- A worker hands a job back unfinished: ARGV prefix, job_id, token, worker_id, reason.
-- The attempt is not counted; the job goes back to its place, avoiding this worker.
local id, token, worker = ARGV[2], ARGV[3], ARGV[4]
local refused = check_owner(id, token, worker)
if refused then return refused end
local now = now_ms()
end_attempt(id, now, 'released', {type = 'released', message = ARGV[5]})
redis.call('HINCRBY', jkey(id), 'attempts', -1)
requeue(id, now, worker)
return ''
