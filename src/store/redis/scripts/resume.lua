-- The resume rule of src/recovery.rs (`resume`), which this must keep in line with: it passes the same table of
-- cases (`RESUME_CASES`, run against a real redis-server in tests/store_contract.rs). Where a read after the
-- client's cursor (after_epoch, after) starts in a log (epoch, first kept offset, top offset, and the epoch before
-- a new primary's with the top that primary kept, or false): the offset to read after, and the gap to tell
-- ('epoch', 'trimmed', or '' for none).
local function resume(after_epoch, after, epoch, first, top, previous, kept)
  local oldest = first - 1
  if after_epoch ~= epoch and previous and after_epoch == previous then
    if after > kept then return math.max(kept, oldest), 'epoch' end
    if after < oldest then return oldest, 'trimmed' end
    return after, 'epoch'
  end
  if after_epoch ~= epoch then return oldest, 'epoch' end
  if after > top then return math.max(top, oldest), 'epoch' end
  if after < oldest then return oldest, 'trimmed' end
  return after, ''
end
