-- The newest cursor of a channel, creating its epoch if needed.
-- KEYS: meta, stream. ARGV: candidate epoch, meta_ttl_ms. Reply: {epoch, top offset}.
local epoch = ensure_epoch(ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {epoch, tonumber(redis.call('HGET', KEYS[1], 't'))}
