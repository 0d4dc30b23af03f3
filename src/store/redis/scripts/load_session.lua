-- Loads a session and refreshes its TTL in one command (so one round trip, whatever the client pipelines),
-- never recreating an expired one.
-- KEYS: session hash. ARGV: session_ttl_ms. Reply: the hash's fields and values (empty when the session is gone).
local fields = redis.call('HGETALL', KEYS[1])
if #fields > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return fields
