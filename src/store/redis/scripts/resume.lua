-- The resume rule of src/recovery.rs (`resume`), which this must keep in line with: it passes the same table of
-- cases (`RESUME_CASES`, run against a real redis-server in tests/store_contract.rs). Where a read after the
-- client's cursor (after_epoch, after) starts in a log (epoch, first kept offset, top offset, and the lineage of
-- epochs changes of primary replaced, `epoch top ...` newest first, or false): the offset to read after, and the
-- gap to tell ('epoch', 'trimmed', or '' for none).
local function resume(after_epoch, after, epoch, first, top, lineage)
  local oldest = first - 1
  if after_epoch ~= epoch then
    -- Crossing every change of primary since the client's epoch: only what all of them kept is the same.
    local kept = nil
    for link_epoch, link_kept in string.gmatch(lineage or '', '(%w+) (%d+)') do
      link_kept = tonumber(link_kept)
      if kept == nil or link_kept < kept then kept = link_kept end
      if link_epoch == after_epoch then
        if after > kept then return math.max(kept, oldest), 'epoch' end
        if after < oldest then return oldest, 'trimmed' end
        return after, 'epoch'
      end
    end
    return oldest, 'epoch'
  end
  if after > top then return math.max(top, oldest), 'epoch' end
  if after < oldest then return oldest, 'trimmed' end
  return after, ''
end
