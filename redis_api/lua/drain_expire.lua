-- Run by the hubs' maintenance loop: ARGV prefix. A drained worker whose deadline passed hands
-- back the jobs it holds (current and relaying): each requeued without counting the attempt
-- (like `released`), the worker told to cancel it. The deadline is then cleared (the drain itself stays).
-- Returns {job_id, worker_id, ...} of the released jobs.
local now = now_ms()
local released = {}
local entries = redis.call('HGETALL', P .. 'drains')
for i = 1, #entries, 2 do
  local worker, drain = entries[i], cjson.decode(entries[i + 1])
  local deadline = tonumber(drain['deadline_ms']) or 0
  if deadline > 0 and deadline <= now then
    -- Both jobs it may hold: the current one and (pipelining) the one whose outputs it still
    -- relays. Until the deadline the drain waits for that relay (its compute is done); past it
    -- the relay is cut like the running job, since the caller (wgpu update) stops the worker.
    for _, id in ipairs(redis.call('HMGET', wkey(worker), 'current_job', 'relay_job')) do
      if id and id ~= '' then
        local j = redis.call('HMGET', jkey(id), 'status', 'worker_id', 'token')
        if HELD[j[1]] and j[2] == worker then
          end_attempt(id, now, 'released', {type = 'released', message = 'drain timeout'})
          redis.call('HINCRBY', jkey(id), 'attempts', -1)
          requeue(id, now, worker)
          publish_cancel(worker, id, j[3], 'drained')
          released[#released + 1] = id
          released[#released + 1] = worker
        end
      end
    end
    drain['deadline_ms'] = 0
    redis.call('HSET', P .. 'drains', worker, cjson.encode(drain))
  end
end
return released
