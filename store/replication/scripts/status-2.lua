--[[
  status: one consistent snapshot of a guest's owner hash and stream bounds, for
  readers, status reports and the replicator's reconciliation after a reconnect.

  KEYS[1] owner  <prefix>{<id>}:owner  owner hash
  KEYS[2] log    <prefix>{<id>}:log    stream

  No ARGV.

  Owner hash fields (every script uses these names):
    epoch     fencing epoch, an integer that only grows; absent: nobody owns the guest
    host      the owner host, the only one allowed to append (with `epoch`); absent
              after a release (release-1.lua): nobody owns the stream
    next      offset after the last byte appended: the offset the next append must
              carry; absent: no byte held yet (the first append sets it)
    boot      boot number of the last segment appended (detects boot starts)
    handoff   'none' | 'pending' (a destination asked) | 'sealed' (the owner stopped
              at `sealedAt`; appends are refused until a claim) | 'released' (the
              owner gave the stream up at `releasedAt`; any host may claim it)
    target    destination host of a pending or sealed handoff
    sealedAt  the offset where the owner sealed
    releasedAt the offset where the owner released the stream
    prevHost, prevHandoff  the owner and handoff state the last claim took over
    skipped   bytes the stream jumped over because the owner's local log no longer
              held them (docs/design.md, invariant 2); absent: 0

  Returns
    { 1, epoch, host, next, boot, handoff, target, sealedAt, skipped,
      oldest, end, entries, prevHost, prevHandoff }
  with 0 for a missing epoch or skipped, '' for a missing host or target, 'none' for a
  missing handoff, -1 for a missing next, boot or sealedAt; oldest is the offset of
  the first entry kept, end the offset after the last entry's bytes (both -1 for an
  empty stream), entries the number of entries.
]]
local ownerKey, logKey = KEYS[1], KEYS[2]

local owner = redis.call('HMGET', ownerKey, 'epoch', 'host', 'next', 'boot', 'handoff', 'target', 'sealedAt', 'skipped',
  'prevHost', 'prevHandoff')
local oldest, streamEnd = -1, -1
local first = redis.call('XRANGE', logKey, '-', '+', 'COUNT', 1)
if #first > 0 then
  oldest = tonumber(string.match(first[1][1], '^(%d+)-'))
  local last = redis.call('XREVRANGE', logKey, '+', '-', 'COUNT', 1)
  local o = tonumber(string.match(last[1][1], '^(%d+)-'))
  local fields = last[1][2]
  streamEnd = o
  for i = 1, #fields, 2 do
    if fields[i] == 'd' then streamEnd = o + #fields[i + 1] end
  end
end

return {
  1,
  tonumber(owner[1]) or 0,
  owner[2] or '',
  tonumber(owner[3]) or -1,
  tonumber(owner[4]) or -1,
  owner[5] or 'none',
  owner[6] or '',
  tonumber(owner[7]) or -1,
  tonumber(owner[8]) or 0,
  oldest,
  streamEnd,
  redis.call('XLEN', logKey),
  owner[9] or '',
  owner[10] or 'none',
}
