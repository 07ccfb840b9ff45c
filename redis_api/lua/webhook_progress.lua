-- A job's progress for an opted-in webhook (`webhook_events` holds job.progress): ARGV prefix,
-- job_id. The hub rate-limits the calls; one pending progress delivery per job (the newest
-- progress is read when it is sent); webhook_outbox skips jobs that did not opt in.
-- Returns 1 when the job is running.
local id = ARGV[2]
if redis.call('HGET', jkey(id), 'status') ~= 'running' then return 0 end
webhook_outbox(id, 'job.progress', now_ms())
return 1
