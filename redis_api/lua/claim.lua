-- A ready worker asks for a job: ARGV prefix, worker_id, lease_ms, affinity_ms, backlog, cap,
-- token (the fencing token for a claim, random), then the job it still relays and its token
-- ('' for none).
-- Returns what claim_for (common.lua) returns.
return claim_for(ARGV[2], tonumber(ARGV[3]), now_ms(),
  {tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7], ARGV[8] or '', ARGV[9] or ''})
