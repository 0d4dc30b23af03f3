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
