-- Replaces a live session's grant (a refreshed token), never recreating an expired session.
-- KEYS: session hash. ARGV: grant JSON. Reply: 1 when set, 0 when the session is gone.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'g', ARGV[1])
return 1
