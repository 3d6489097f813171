--[[
  claim: make ARGV host the owner of a guest's stream with a new, higher fencing
  epoch. Every append carrying an older epoch is refused from then on. A host claims
  only in the cases docs/design.md "Ownership" lists: the stream has no owner (never
  owned, or released), it is the named destination of a handoff (sealed, or forced
  after the completion timeout), an operator forces it, or it is the last owner
  restoring a claim Redis lost.

  KEYS[1] owner  <prefix>{<id>}:owner  owner hash (fields: see status-2.lua)
  KEYS[2] log    <prefix>{<id>}:log    stream, read only to learn `next` if the hash lost it

  ARGV[1] host            the new owner
  ARGV[2] expectedEpoch   the epoch the caller last saw, or 'any' (forcing the
                          handoff without the source's cooperation)
  ARGV[3] requireSealed   '1': only if the handoff is sealed (and `target` is empty or
                          ARGV host); '0': whatever the handoff state
  ARGV[4] knownEpoch      the highest epoch the caller has known for this stream (its
                          own or another host's; '0' when none; a numeric
                          expectedEpoch counts as known). A claim below the
                          current epoch is refused (the caller does not know the latest
                          owner), and the new epoch is max(epoch, knownEpoch) + 1, so
                          epochs never go back, even after Redis lost the hash
  ARGV[5] requireUnowned  '1': only if nobody owns the stream (no hash, or no host:
                          released); '0': whoever owns it

  Writes: epoch, host, handoff = 'none', and what the claim took over: prevHost and
  prevHandoff (so a claimer that crashed before saving can tell a forced claim from a
  sealed one); deletes target, sealedAt, releasedAt, goneSince (the guest is back:
  no expiry, docs/design.md "Retention"). `next`
  is kept (the new owner continues there); when the hash has no `next` and the stream
  has entries, `next` is set from the last entry.

  Returns
    { 1, epoch, next, previousEpoch, previousHost, previousHandoff }
                                        claimed; next is -1 when no byte is known yet
                                        (the first append then sets it); previousEpoch
                                        is 0 and previousHost '' for an unowned guest
    {-1, epoch, host }                  FENCED: the current epoch is not expectedEpoch,
                                        is above knownEpoch, or (requireUnowned) the
                                        stream has an owner
    {-4, handoff, target, sealedAt }    HANDOFF_STATE: requireSealed and not sealed for
                                        this host
    {-9, message }                      bad argument
]]
local ownerKey, logKey = KEYS[1], KEYS[2]
local host = ARGV[1]
local expected = ARGV[2]
local requireSealed = ARGV[3] == '1'
local knownEpoch = tonumber(ARGV[4])
local requireUnowned = ARGV[5] == '1'

local function int(n) return string.format('%d', n) end

if host == '' or not knownEpoch or knownEpoch < 0 or (expected ~= 'any' and not tonumber(expected)) then
  return {-9, 'bad argument'}
end

-- An expected epoch is knowledge too.
if expected ~= 'any' then knownEpoch = math.max(knownEpoch, tonumber(expected)) end

local owner = redis.call('HMGET', ownerKey, 'epoch', 'host', 'next', 'handoff', 'target', 'sealedAt')
local curEpoch = tonumber(owner[1]) or 0
local curHost = owner[2] or ''
local handoff = owner[4] or 'none'
local target = owner[5] or ''

if expected ~= 'any' and tonumber(expected) ~= curEpoch then
  return {-1, curEpoch, curHost}
end
if curEpoch > knownEpoch then
  return {-1, curEpoch, curHost}
end
if requireUnowned and curHost ~= '' then
  return {-1, curEpoch, curHost}
end
if requireSealed and (handoff ~= 'sealed' or (target ~= '' and target ~= host)) then
  return {-4, handoff, target, tonumber(owner[6]) or -1}
end

local nextOffset = tonumber(owner[3])
if not nextOffset then
  local last = redis.call('XREVRANGE', logKey, '+', '-', 'COUNT', 1)
  if #last > 0 then
    local o = tonumber(string.match(last[1][1], '^(%d+)-'))
    local fields = last[1][2]
    nextOffset = o
    for i = 1, #fields, 2 do
      if fields[i] == 'd' then nextOffset = o + #fields[i + 1] end
    end
  end
end

local newEpoch = math.max(curEpoch, knownEpoch) + 1
local fields = {'epoch', int(newEpoch), 'host', host, 'handoff', 'none',
  'prevHost', curHost, 'prevHandoff', handoff}
if nextOffset then
  table.insert(fields, 'next'); table.insert(fields, int(nextOffset))
end
redis.call('HSET', ownerKey, unpack(fields))
redis.call('HDEL', ownerKey, 'target', 'sealedAt', 'releasedAt', 'goneSince')

return {1, newEpoch, nextOffset or -1, curEpoch, curHost, handoff}
