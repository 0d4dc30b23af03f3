-- A channel's epoch (KEYS[1]: meta hash, KEYS[2]: history stream). When the meta is gone (first use, a flushed or
-- restarted Redis, a long idle time) a new epoch starts from `candidate`, and any orphaned stream goes with it, so
-- offsets never restart silently within an epoch. With `may_create` false a missing meta is left missing and the
-- answer is nil: the caller counts the new channel against the node's limit and asks again.
local function ensure_epoch(candidate, may_create)
  local epoch = redis.call('HGET', KEYS[1], 'e')
  if not epoch then
    if not may_create then return nil end
    epoch = candidate
    redis.call('DEL', KEYS[2])
    redis.call('HSET', KEYS[1], 'e', epoch, 't', 0)
  end
  return epoch
end

-- The epochs a change of primary replaced (KEYS[1]'s `l`, newest first: `epoch top epoch top ...`), each with the
-- top the next primary kept of it: offsets up to that top are the same messages in both epochs. A chain, not one
-- link, because one event can change the primary's replication id twice (a restarted primary gets one at boot
-- and another when its first replica attaches), and a client may sleep through both. At most 8 links: a cursor
-- of an older epoch resumes from the oldest kept message with an `epoch` gap.
local function extend_lineage(epoch, kept)
  local links = {epoch .. ' ' .. kept}
  for link in string.gmatch(redis.call('HGET', KEYS[1], 'l') or '', '%w+ %d+') do
    if #links == 8 then break end
    links[#links + 1] = link
  end
  return table.concat(links, ' ')
end

-- A channel last written under another primary (KEYS[1]'s `r`: that primary's replication id, which Redis gives
-- anew to every new primary, a promoted replica or a restarted server) may have lost acknowledged messages after
-- the ones this primary holds, and clients may hold cursors past them. So its next message starts a new epoch
-- from `candidate`, linking the old one and the top this primary kept into the lineage: a client at or before
-- that top goes on as if nothing happened (those offsets are the same messages), one past it gets an `epoch` gap,
-- and no offset is ever reused for a different message under the same epoch.
local function check_lineage(epoch, candidate)
  local now = string.match(redis.call('INFO', 'replication'), 'master_replid:(%x+)')
  local was = redis.call('HGET', KEYS[1], 'r')
  if was == now then return epoch end
  if was then
    local kept = redis.call('HGET', KEYS[1], 't') or '0'
    redis.call('HSET', KEYS[1], 'e', candidate, 'l', extend_lineage(epoch, kept), 'r', now)
    return candidate
  end
  redis.call('HSET', KEYS[1], 'r', now)
  return epoch
end
