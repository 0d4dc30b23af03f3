-- Reads a channel's history after a cursor, where `resume` says it starts.
-- KEYS: meta, stream. ARGV: after epoch, after offset, limit, candidate epoch, meta_ttl_ms, empty_ttl_ms.
-- Reply: {epoch, gap ('epoch' | 'trimmed' | ''), offset read after, entries (XRANGE form)}.
-- Reading a subscribed channel always recreates it (its subscribers need an epoch); subscribes are limited.
local epoch = ensure_epoch(ARGV[4], true)
local top = tonumber(redis.call('HGET', KEYS[1], 't'))
if ARGV[1] == epoch and tonumber(ARGV[2]) > top then
  -- The cursor is past what this log holds in its own epoch. Under a primary that has not written this channel
  -- yet (`r` is another's), messages acknowledged after `top` were lost (a failover, a restart, a primary that
  -- went on taking writes after it was replaced): a new epoch starts here, so the gap moves the client on and
  -- those offsets are never reused under the old epoch. Under the primary that wrote it, nothing was lost: the
  -- cursor was made up, and only its client gets a gap back to `top`, not every subscriber a new epoch.
  local now = string.match(redis.call('INFO', 'replication'), 'master_replid:(%x+)')
  if redis.call('HGET', KEYS[1], 'r') ~= now then
    redis.call('HSET', KEYS[1], 'e', ARGV[4], 'l', extend_lineage(epoch, top), 'r', now)
    epoch = ARGV[4]
  end
end
-- A channel that never had a message lives only while someone reads it.
if top == 0 then redis.call('PEXPIRE', KEYS[1], ARGV[6]) else redis.call('PEXPIRE', KEYS[1], ARGV[5]) end
local first = top + 1
local head = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
if head[1] then first = tonumber(string.match(head[1][1], '^(%d+)')) end
local after, gap = resume(ARGV[1], tonumber(ARGV[2]), epoch, first, top, redis.call('HGET', KEYS[1], 'l'))
local entries = redis.call('XRANGE', KEYS[2], (after + 1) .. '-0', '+', 'COUNT', ARGV[3])
return {epoch, gap, after, entries}
