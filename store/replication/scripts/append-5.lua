--[[
  append: add one segment of console bytes to a guest's stream, exactly once and
  in order, only for the holder of the current fencing epoch (docs/design.md,
  invariants 2, 3 and 4).

  KEYS[1] log    <prefix>{<id>}:log    stream, one entry per segment
  KEYS[2] owner  <prefix>{<id>}:owner  owner hash (fields: see status-2.lua)
  KEYS[3] boots  <prefix>{<id>}:boots  sorted set, member boot number, score its first offset
  KEYS[4] markers <prefix>{<id>}:markers sorted set of consoled's markers, member
                  'offset:length:kind', score the offset (docs/design.md "Markers")
  KEYS[5] slot   <prefix>{<id>}:log:slot  the stream's write slot: exists only inside
                  the MULTI of an append whose bytes stay out of Lua (see below)

  ARGV[1] epoch           the caller's fencing epoch (integer >= 1)
  ARGV[2] host            the caller's host name
  ARGV[3] offset          offset of the segment's first byte
  ARGV[4] bytes           the segment, binary, non-empty; it never spans two boots;
                          '' when ARGV[10] gives its length instead
  ARGV[5] boot            boot number of the segment
  ARGV[6] timestampMs     capture time of the segment, ms since the epoch
  ARGV[7] retentionBytes  keep at least this many of the newest bytes; 0 keeps all
  ARGV[8] allowSkip       '1': an offset beyond `next` is accepted and the jump is
                          added to `skipped` (the local log rotated the bytes away
                          during a long outage, invariant 2); '0': it is refused
  ARGV[9] markers         the markers starting in the segment, 'offset:length:kind'
                          joined by ','; '' for none. Added with the entry, trimmed
                          with it
  ARGV[10] length         '' (the bytes are ARGV[4]), or the segment's length: the
                          bytes stay out of Lua (docs/design.md "Redis schema"). The
                          script then checks and records the append as usual, but
                          instead of adding the entry it renames the stream to the
                          slot, creating an empty stream first if there is none. The
                          caller sends it in one MULTI with `XADD <slot> NOMKSTREAM`
                          of the entry and `RENAME <slot> <log>`: the XADD finds the
                          slot only if every check passed, so a refused, re-sent or
                          failed append (NOSCRIPT included) adds nothing. Lua hashes
                          every byte of every string it is given (Redis's Lua string
                          interning): in a flood that was two thirds of Redis's CPU.

  Owner hash, read: epoch, host, next, boot, handoff, sealedAt; written: next, boot,
  skipped. Only the holder of the hash's epoch and host appends: a missing hash (a new
  guest, or a Redis that lost its data) or a released stream (no host) refuses every
  append, so ownership is only ever taken by claim-2.lua, never by an append
  (docs/design.md "Ownership"). A missing `next` (claimed, nothing appended yet)
  accepts the first offset given: the stream then starts there. If the stream still
  has entries, `next` is taken from its last entry instead.

  Entry ID: '<offset>-1'. The ms part is the offset itself, so IDs grow with
  offsets, a re-send is recognised by offset, `XRANGE log <o> +` starts at offset o
  and `XREVRANGE log <o> - COUNT 1` finds the entry holding byte o (an end ID
  without a sequence means '<o>-<max>'). The sequence is 1, not 0, because XADD
  refuses the ID 0-0, which offset 0 would otherwise get.
  Entry fields: d bytes, h host, e epoch, b boot, t timestamp ms, o offset.

  Trimming: with cut = next - retentionBytes, the entry holding byte `cut` and all
  newer ones are kept (XTRIM MINID, exact), so a reader clamped to the oldest entry
  still gets whole bytes from it; boots that ended before the oldest kept entry are
  dropped, the one holding it is kept. The trim runs only when this append moves the
  cut across a multiple of retentionBytes / 16 (the slack), not at every append:
  finding the entry holding the cut brings that entry's bytes into Lua, and Lua hashes
  every byte of a string it is given, which cost Redis about as much per append as the
  append's own bytes (docs/design.md "Redis schema"). The stream so holds at most
  retentionBytes plus the slack plus one entry; each trim still cuts at exactly
  next - retentionBytes.

  Returns
    { 1, next, skippedBytes }           appended; next = offset + #bytes
    { 0, next }                         a re-send of bytes already held: nothing written
    {-1, epoch, host }                  FENCED: ARGV epoch and host are not the current
                                        epoch and owner (epoch 0 and host '' when nobody
                                        owns the stream: claim first)
    {-2, next }                         OFFSET_MISMATCH: offset > next, allowSkip is '0'
    {-3, next }                         OFFSET_MISMATCH: the segment overlaps next partially
    {-4, handoff, target, sealedAt }    HANDOFF_STATE: the owner sealed the stream
    {-9, message }                      bad argument
]]
local logKey, ownerKey, bootsKey, markersKey, slotKey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local epoch = tonumber(ARGV[1])
local host = ARGV[2]
local offset = tonumber(ARGV[3])
local data = ARGV[4]
local boot = tonumber(ARGV[5])
local timestampMs = tonumber(ARGV[6])
local retention = tonumber(ARGV[7])
local allowSkip = ARGV[8] == '1'
local markers = ARGV[9] or ''
local slotLength = tonumber(ARGV[10] or '')

-- tostring() would print 1e+14 for large offsets; '%d' keeps every digit.
local function int(n) return string.format('%d', n) end

local len = #data
if slotLength then
  if len ~= 0 or slotLength < 1 or slotLength ~= math.floor(slotLength) then return {-9, 'bad argument'} end
  len = slotLength
  -- A slot left behind would take the XADD whatever this script decides (MULTI makes
  -- that impossible; this makes sure of it). XLEN fails with WRONGTYPE, as the XADD
  -- would, before anything is recorded: an entry the XADD cannot add is never counted.
  redis.call('DEL', slotKey)
  redis.call('XLEN', logKey)
end
if not epoch or epoch < 1 or host == '' or not offset or offset < 0 or len == 0
  or not boot or not timestampMs or not retention or retention < 0 then
  return {-9, 'bad argument'}
end

local function entryEnd(entry)
  local o = tonumber(string.match(entry[1], '^(%d+)-'))
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'd' then return o + #fields[i + 1] end
  end
  return o
end

local owner = redis.call('HMGET', ownerKey, 'epoch', 'host', 'next', 'boot', 'handoff', 'target', 'sealedAt')
local curEpoch = tonumber(owner[1])
local curHost = owner[2] or ''
if not curEpoch or curEpoch ~= epoch or curHost ~= host then
  return {-1, curEpoch or 0, curHost}
end
if owner[5] == 'sealed' then
  return {-4, 'sealed', owner[6] or '', tonumber(owner[7]) or -1}
end

local nextOffset = tonumber(owner[3])
if not nextOffset then
  local last = redis.call('XREVRANGE', logKey, '+', '-', 'COUNT', 1)
  if #last > 0 then nextOffset = entryEnd(last[1]) else nextOffset = offset end
end

if offset < nextOffset then
  if offset + len <= nextOffset then return {0, nextOffset} end
  return {-3, nextOffset}
end
local skipped = offset - nextOffset
if skipped > 0 and not allowSkip then
  return {-2, nextOffset}
end

if not slotLength then
  redis.call('XADD', logKey, int(offset) .. '-1',
    'd', data, 'h', host, 'e', int(epoch), 'b', int(boot), 't', int(timestampMs), 'o', int(offset))
end

local newNext = offset + len
redis.call('HSET', ownerKey, 'next', int(newNext), 'boot', int(boot))
if skipped > 0 then
  redis.call('HINCRBY', ownerKey, 'skipped', skipped)
end

for marker in string.gmatch(markers, '[^,]+') do
  local at = tonumber(string.match(marker, '^(%d+):'))
  if at then redis.call('ZADD', markersKey, 'NX', at, marker) end
end

if tonumber(owner[4]) ~= boot then
  -- NX: a boot seen again (a re-send after Redis lost the hash) keeps its first offset.
  redis.call('ZADD', bootsKey, 'NX', offset, int(boot))
end

-- The slack: a trim is due when the cut crosses a multiple of it (see the header).
local slack = math.max(1, math.floor(retention / 16))
local cut = newNext - retention
if retention > 0 and cut > 0 and math.floor(cut / slack) > math.floor((nextOffset - retention) / slack) then
  -- With the bytes out of Lua the entry is not added yet: a cut inside it keeps it alone.
  local holding
  if slotLength and cut >= offset then
    holding = {{int(offset) .. '-1'}}
  else
    holding = redis.call('XREVRANGE', logKey, int(cut), '-', 'COUNT', 1)
  end
  if #holding > 0 then
    local oldestId = holding[1][1]
    if redis.call('XTRIM', logKey, 'MINID', oldestId) > 0 then
      local oldest = tonumber(string.match(oldestId, '^(%d+)-'))
      redis.call('ZREMRANGEBYSCORE', markersKey, '-inf', '(' .. int(oldest))
      local bootHolding = redis.call('ZREVRANGEBYSCORE', bootsKey, int(oldest), '-inf', 'WITHSCORES', 'LIMIT', 0, 1)
      if #bootHolding > 0 then
        redis.call('ZREMRANGEBYSCORE', bootsKey, '-inf', '(' .. bootHolding[2])
      end
    end
  end
end

if slotLength then
  if redis.call('EXISTS', logKey) == 0 then
    -- XADD NOMKSTREAM needs a stream: an empty one, made by a consumer group.
    redis.call('XGROUP', 'CREATE', logKey, 'slot', '$', 'MKSTREAM')
    redis.call('XGROUP', 'DESTROY', logKey, 'slot')
  end
  redis.call('RENAME', logKey, slotKey)
end

return {1, newNext, skipped}
