-- Jobs an older hub stored before pools (a `queue` sorted set and nothing else): ARGV prefix,
-- sched_ms, then per job: id, pool, requires (JSON, '' for none), computed by the hub from the
-- job's workflow and constraints (redis_api/migrate.py). Idempotent: a job that has a pool is
-- left alone, so any number of hubs may run it at once, at every start.
-- A queued job gets the fields enqueue.lua writes today and goes into its pool's lane, its
-- place among the other old jobs kept (the caller passes them in their old order); a running
-- one gets them too, so that a retry finds its pool.
-- Returns {queued jobs moved into lanes, running jobs given their pool}.
local sched_ms = tonumber(ARGV[2])
local now = now_ms()
local moved, fixed = 0, 0
for i = 3, #ARGV, 3 do
  local id, pid, requires = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local key = jkey(id)
  local j = redis.call('HMGET', key, 'status', 'pool', 'priority', 'c_machine', 'c_gpu', 'c_vram',
    'workflow')
  if j[1] and not j[2] and (j[1] == 'queued' or j[1] == 'running') then
    -- Old jobs have no owner (no API key names then): they take fair-share rounds as '' does.
    local fair = redis.call('HMGET', P .. 'fair', 'v', 'o:')
    local round = math.max(tonumber(fair[1]) or 0, tonumber(fair[2]) or 0) + 1
    redis.call('HSET', P .. 'fair', 'o:', round)
    local score = (1000 - (tonumber(j[3]) or 0)) * ROUND + round
    local workflow = redis.call('GET', wfkey(id)) or j[7] or ''
    local fields = {'pool', pid, 'owner', '', 'score', score, 'sched_ms', sched_ms,
      'wf_bytes', #workflow}
    if requires ~= '' then
      fields[#fields + 1] = 'requires'
      fields[#fields + 1] = requires
    end
    redis.call('HSET', key, unpack(fields))
    redis.call('ZADD', P .. 'ids', 0, id)
    if j[1] == 'queued' then
      redis.call('ZREM', P .. 'queue', id)  -- place() adds it back, counted, with its new score
      place(id, score, now, {pid, '', requires, j[4], j[5], j[6]})
      if sched_ms > 0 then redis.call('ZADD', P .. 'schedcheck', now + sched_ms, id) end
      moved = moved + 1
    else
      fixed = fixed + 1
    end
  end
end
if moved > 0 then publish_work(now) end
return {moved, fixed}
