-- The newest cursor of a channel, creating its epoch if needed and allowed.
-- KEYS: meta, stream. ARGV: candidate epoch, meta_ttl_ms, empty_ttl_ms, may create ('1'/'0').
-- Reply: {epoch, top offset}, or {'absent'} for a channel that does not exist and may not be created.
local epoch = ensure_epoch(ARGV[1], ARGV[4] == '1')
if not epoch then return {'absent'} end
local top = tonumber(redis.call('HGET', KEYS[1], 't'))
-- A channel that never had a message lives only while someone reads it.
if top == 0 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) else redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return {epoch, top}
