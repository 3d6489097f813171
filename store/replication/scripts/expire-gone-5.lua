--[[
  expire-gone: deletes a guest's history once the guest has been gone for
  `goneAfterMs` (the retention sweep, docs/design.md "Retention"). Gone means: the
  owner record exists and names no host (released: no host may append, and a claim
  would set a host), and neither the release (`goneSince`) nor the stream's last
  append (its `t` field) is younger than goneAfterMs by the server's clock. Several
  hosts may sweep at once: the condition is checked again here, with the deletes, so
  a guest claimed again an instant earlier is kept.

  A record released by a build that did not write `goneSince` gets it now: its clock
  starts at the first sweep that sees it.

  KEYS[1] owner    <prefix>{<id>}:owner    owner hash (fields: see status-2.lua)
  KEYS[2] log      <prefix>{<id>}:log      the stream
  KEYS[3] boots    <prefix>{<id>}:boots
  KEYS[4] markers  <prefix>{<id>}:markers
  KEYS[5] skips    <prefix>{<id>}:skips

  ARGV[1] goneAfterMs  how long a guest must have been gone (> 0)

  Returns
    { 1, deleted }           expired: the keys are deleted (deleted: how many existed)
    { 0, reason, waitMs }    kept; reason 'no-record', 'owned', 'clock-started' or
                             'recent' (waitMs: how much longer it must stay gone)
    {-9, message }           bad argument
]]
-- TIME before a write: Redis 7 replicates a script's effects; before 7 it must be asked to.
if redis.replicate_commands then redis.replicate_commands() end
local goneAfter = tonumber(ARGV[1])
if not goneAfter or goneAfter <= 0 then
  return {-9, 'bad argument'}
end

local function int(n) return string.format('%d', n) end

local owner = redis.call('HMGET', KEYS[1], 'epoch', 'host', 'goneSince')
if not owner[1] then
  return {0, 'no-record', -1}
end
if (owner[2] or '') ~= '' then
  return {0, 'owned', -1}
end
local now = redis.call('TIME')
local nowMs = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local goneSince = tonumber(owner[3])
if not goneSince then
  redis.call('HSET', KEYS[1], 'goneSince', int(nowMs))
  return {0, 'clock-started', goneAfter}
end
local last = goneSince
local newest = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if #newest > 0 then
  local fields = newest[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 't' then last = math.max(last, tonumber(fields[i + 1]) or 0) end
  end
end
if nowMs - last < goneAfter then
  return {0, 'recent', goneAfter - (nowMs - last)}
end
local deleted = redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
return {1, deleted}
