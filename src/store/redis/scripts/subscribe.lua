-- Adds a subscription to a session unless it has one, within the session's cap.
-- KEYS: session hash. ARGV: field (`c:<channel>`), cursor (`epoch@offset`), max subscriptions, session_ttl_ms.
-- Reply: {'gone'} (no such session), {'full'} (at the cap), or {'ok', cursor in force}.
if redis.call('EXISTS', KEYS[1]) == 0 then return {'gone'} end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local existing = redis.call('HGET', KEYS[1], ARGV[1])
if existing then return {'ok', existing} end
local n = 0
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(field, 1, 2) == 'c:' then n = n + 1 end
end
if n >= tonumber(ARGV[3]) then return {'full'} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return {'ok', ARGV[2]}
