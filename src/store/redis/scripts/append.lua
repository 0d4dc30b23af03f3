-- Appends one message: dedupe check, next offset, XADD trimmed by size and age, dedupe record, one PUBLISH
-- (SPUBLISH on a cluster) whatever the number of subscribers.
-- KEYS: meta, stream, [dedupe]. ARGV: data, ts, history_size, history_ttl_ms, dedupe_ttl_ms, live topic,
-- candidate epoch, sharded ('1'/'0'), meta_ttl_ms, sender (JSON, or '' for the backend), may create ('1'/'0').
-- Under a new primary the first append starts a new epoch (check_lineage).
-- Reply: the stored cursor, `epoch@offset` (the first append's cursor for a seen dedupe key), or 'absent' for a
-- channel that does not exist and may not be created.
if #KEYS == 3 then
  local seen = redis.call('GET', KEYS[3])
  if seen then
    -- A write, so that a WAIT after this retry on another connection also covers the first append's write.
    redis.call('PEXPIRE', KEYS[3], ARGV[5])
    return seen
  end
end
local epoch = ensure_epoch(ARGV[7], ARGV[11] == '1')
if not epoch then return 'absent' end
epoch = check_lineage(epoch, ARGV[7])
local off = redis.call('HINCRBY', KEYS[1], 't', 1)
if ARGV[10] == '' then
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], off .. '-0', 't', ARGV[2], 'd', ARGV[1])
else
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], off .. '-0', 't', ARGV[2], 'd', ARGV[1], 'f', ARGV[10])
end
-- Trim by age: drop entries older than history_ttl (at most 64 looked at per append).
local cutoff = tonumber(ARGV[2]) - tonumber(ARGV[4])
local keep, last = nil, nil
for _, e in ipairs(redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 64)) do
  if tonumber(e[2][2]) >= cutoff then keep = e[1] break end
  last = e[1]
end
if keep == nil and last ~= nil then keep = (tonumber(string.match(last, '^(%d+)')) + 1) .. '-0' end
if keep ~= nil then redis.call('XTRIM', KEYS[2], 'MINID', keep) end
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[9])
local cursor = epoch .. '@' .. off
if #KEYS == 3 then redis.call('SET', KEYS[3], cursor, 'PX', ARGV[5]) end
local live = epoch .. ' ' .. off .. ' ' .. ARGV[2] .. '\n' .. ARGV[10] .. '\n' .. ARGV[1]
if ARGV[8] == '1' then redis.call('SPUBLISH', ARGV[6], live) else redis.call('PUBLISH', ARGV[6], live) end
return cursor
