--[[
  cancel-handoff: a migration was cancelled (docs/design.md "Migration handoff"):
  the handoff state goes back to 'none'. The owner and epoch do not change; an owner
  that had sealed may append again.

  KEYS[1] owner  <prefix>{<id>}:owner  owner hash (fields: see status-2.lua)

  ARGV[1] target   cancel only a handoff to this host; '' cancels whatever is under way

  Reads: handoff, target. Writes: handoff = 'none'; deletes target and sealedAt.
  Cancelling when nothing is under way is a no-op.

  Returns
    { 1, previousHandoff }              cancelled ('none' when there was nothing to cancel)
    {-4, handoff, target, sealedAt }    HANDOFF_STATE: the handoff under way is to
                                        another host
]]
local ownerKey = KEYS[1]
local target = ARGV[1]

local owner = redis.call('HMGET', ownerKey, 'handoff', 'target', 'sealedAt')
local handoff = owner[1] or 'none'
local curTarget = owner[2] or ''

if handoff == 'none' or handoff == 'released' then
  return {1, 'none'}
end
if target ~= '' and curTarget ~= '' and curTarget ~= target then
  return {-4, handoff, curTarget, tonumber(owner[3]) or -1}
end
redis.call('HSET', ownerKey, 'handoff', 'none')
redis.call('HDEL', ownerKey, 'target', 'sealedAt')
return {1, handoff}
