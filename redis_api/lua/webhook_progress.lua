-- A job's progress for an opted-in webhook (`webhook_events` holds job.progress): ARGV prefix,
-- job_id. The hub rate-limits the calls; one pending progress delivery per job (the newest
-- progress is read when it is sent); webhook_outbox skips jobs that did not opt in.
-- Returns 1 when a worker holds the job.
local id = ARGV[2]
if not HELD[redis.call('HGET', jkey(id), 'status')] then return 0 end
webhook_outbox(id, 'job.progress', now_ms())
return 1
