--[[
  release: the owner gives the stream up at its final offset (a DELETE of the guest
  on its owner: the guest stopped here; a cold migration, evacuate or rebuild may
  start it elsewhere). Afterwards nobody owns the stream: the hash keeps `epoch` and
  `next` but has no `host`, appends are refused, and a later attach on any host may
  claim it (claim-2.lua with requireUnowned) and continue at `next`.

  KEYS[1] owner  <prefix>{<id>}:owner  owner hash (fields: see status-2.lua)

  ARGV[1] epoch        the caller's fencing epoch
  ARGV[2] host         the caller's host name
  ARGV[3] finalOffset  the caller's last offset: it must equal `next` (every byte,
                       the release marker included, reached the stream)

  Reads: epoch, host, next, handoff. Writes: handoff = 'released', releasedAt =
  finalOffset (and next = finalOffset when none was held), goneSince = the server's
  time in ms (when the guest left: the clock of expire-gone-5.lua, docs/design.md
  "Retention"); deletes host, target, sealedAt. Releasing again at the same offset is
  a no-op.

  Returns
    { 1, releasedAt, epoch }            released
    {-1, epoch, host }                  FENCED: not the current owner and epoch
    {-2, next }                         OFFSET_MISMATCH: finalOffset is not next
    {-4, handoff, target, sealedAt }    HANDOFF_STATE: a handoff is pending or sealed
                                        (finish or cancel it first)
    {-9, message }                      bad argument
]]
-- TIME before a write: Redis 7 replicates a script's effects; before 7 it must be asked to.
if redis.replicate_commands then redis.replicate_commands() end
local ownerKey = KEYS[1]
local epoch = tonumber(ARGV[1])
local host = ARGV[2]
local finalOffset = tonumber(ARGV[3])

local function int(n) return string.format('%d', n) end

if not epoch or host == '' or not finalOffset or finalOffset < 0 then
  return {-9, 'bad argument'}
end

local owner = redis.call('HMGET', ownerKey, 'epoch', 'host', 'next', 'handoff', 'target', 'sealedAt', 'releasedAt')
local curEpoch = tonumber(owner[1])
local curHost = owner[2] or ''
local handoff = owner[4] or 'none'

if handoff == 'released' and curEpoch == epoch and tonumber(owner[7]) == finalOffset then
  return {1, finalOffset, curEpoch}
end
if not curEpoch or curEpoch ~= epoch or curHost ~= host then
  return {-1, curEpoch or 0, curHost}
end
if handoff ~= 'none' then
  return {-4, handoff, owner[5] or '', tonumber(owner[6]) or -1}
end
local nextOffset = tonumber(owner[3])
if nextOffset ~= finalOffset and not (nextOffset == nil and finalOffset == 0) then
  return {-2, nextOffset or -1}
end
local now = redis.call('TIME')
local nowMs = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('HSET', ownerKey, 'handoff', 'released', 'releasedAt', int(finalOffset), 'next', int(finalOffset),
  'goneSince', int(nowMs))
redis.call('HDEL', ownerKey, 'host', 'target', 'sealedAt')
return {1, finalOffset, curEpoch}
