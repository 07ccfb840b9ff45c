-- A ready worker asks for a job: ARGV prefix, worker_id, lease_ms, scan_limit.
-- Returns what claim_for (common.lua) returns.
return claim_for(ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), now_ms())
