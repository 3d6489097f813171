--[[
  request-handoff: the destination of a migration asks the current owner to hand
  the guest over (docs/design.md "Migration handoff"). The owner keeps its epoch
  and keeps appending until it drains, appends its handoff marker and seals
  (seal-1.lua); the destination then claims (claim-2.lua with requireSealed).

  KEYS[1] owner  <prefix>{<id>}:owner  owner hash (fields: see status-2.lua)

  ARGV[1] target          the destination host asking for the guest
  ARGV[2] expectedEpoch   the epoch the destination saw, or 'any'

  Reads: epoch, host, next, handoff, target, sealedAt. Writes: handoff = 'pending',
  target. Asking again for the same target is a no-op (idempotent).

  Returns
    { 1, epoch, host, next }            pending (or already pending/sealed for this
                                        target); next is -1 when no byte is held yet
    {-1, epoch, host }                  FENCED: the current epoch is not expectedEpoch
    {-4, handoff, target, sealedAt }    HANDOFF_STATE: nobody owns the guest (never
                                        owned, or released: claim it instead; handoff
                                        'unowned'), the target already owns it, or a
                                        handoff to another host is under way
    {-9, message }                      bad argument
]]
local ownerKey = KEYS[1]
local target = ARGV[1]
local expected = ARGV[2]

if target == '' or (expected ~= 'any' and not tonumber(expected)) then
  return {-9, 'bad argument'}
end

local owner = redis.call('HMGET', ownerKey, 'epoch', 'host', 'next', 'handoff', 'target', 'sealedAt')
local curEpoch = tonumber(owner[1])
local curHost = owner[2] or ''
local handoff = owner[4] or 'none'
local curTarget = owner[5] or ''
local sealedAt = tonumber(owner[6]) or -1

if not curEpoch or curHost == '' then
  return {-4, 'unowned', '', -1}
end
if expected ~= 'any' and tonumber(expected) ~= curEpoch then
  return {-1, curEpoch, curHost}
end
if curHost == target then
  return {-4, handoff, curTarget, sealedAt}
end
if handoff ~= 'none' and curTarget ~= target then
  return {-4, handoff, curTarget, sealedAt}
end
if handoff == 'none' then
  redis.call('HSET', ownerKey, 'handoff', 'pending', 'target', target)
end
return {1, curEpoch, curHost, tonumber(owner[3]) or -1}
