--[[
  seal: the owner (the source of a migration) has drained its chardev, appended its
  handoff marker and everything before it, and stops appending (docs/design.md
  "Migration handoff"). Appends are refused from then on, even with the
  current epoch, so the destination continues exactly at `sealedAt`.

  KEYS[1] owner  <prefix>{<id>}:owner  owner hash (fields: see status-2.lua)

  ARGV[1] epoch        the caller's fencing epoch
  ARGV[2] host         the caller's host name
  ARGV[3] finalOffset  the caller's last offset: it must equal `next`, so the seal
                       proves every byte reached the stream

  Reads: epoch, host, next, handoff, target, sealedAt. Writes: handoff = 'sealed',
  sealedAt = finalOffset (and next = 0 when nothing was ever appended and finalOffset
  is 0). Sealing is allowed from 'none' (the source gives the guest up on its own)
  and from 'pending'. Sealing again at the same offset is a no-op.

  Returns
    { 1, sealedAt, epoch, target }      sealed; target is '' when nobody asked yet
    {-1, epoch, host }                  FENCED: not the current owner and epoch
    {-2, next }                         OFFSET_MISMATCH: finalOffset is not next (append
                                        the rest first); next is -1 when none is held
    {-4, handoff, target, sealedAt }    HANDOFF_STATE: already sealed at another offset
    {-9, message }                      bad argument
]]
local ownerKey = KEYS[1]
local epoch = tonumber(ARGV[1])
local host = ARGV[2]
local finalOffset = tonumber(ARGV[3])

local function int(n) return string.format('%d', n) end

if not epoch or host == '' or not finalOffset or finalOffset < 0 then
  return {-9, 'bad argument'}
end

local owner = redis.call('HMGET', ownerKey, 'epoch', 'host', 'next', 'handoff', 'target', 'sealedAt')
local curEpoch = tonumber(owner[1])
local curHost = owner[2] or ''
local handoff = owner[4] or 'none'
local target = owner[5] or ''
local sealedAt = tonumber(owner[6])

if not curEpoch or curEpoch ~= epoch or curHost ~= host then
  return {-1, curEpoch or 0, curHost}
end
if handoff == 'sealed' then
  if sealedAt == finalOffset then return {1, sealedAt, curEpoch, target} end
  return {-4, handoff, target, sealedAt or -1}
end
local nextOffset = tonumber(owner[3])
if nextOffset ~= finalOffset and not (nextOffset == nil and finalOffset == 0) then
  return {-2, nextOffset or -1}
end
redis.call('HSET', ownerKey, 'handoff', 'sealed', 'sealedAt', int(finalOffset), 'next', int(finalOffset))
return {1, finalOffset, curEpoch, target}
