--[[
  purge: an operator deletes a guest's history from Redis (DELETE
  /v1/guests/{id}/history with scope cluster or all; docs/design.md "Retention").
  Only a stream nobody owns may go: while a host holds the record (appending, handing
  off, sealed for a destination) its appends and the destination's claim rely on the
  record and on `next`, so the purge is refused. The check and the deletes are one
  script: no claim can come in between.

  KEYS[1] owner    <prefix>{<id>}:owner    owner hash (fields: see status-2.lua)
  KEYS[2] log      <prefix>{<id>}:log      the stream
  KEYS[3] boots    <prefix>{<id>}:boots    sorted set of boot starts
  KEYS[4] markers  <prefix>{<id>}:markers  sorted set of markers
  KEYS[5] skips    <prefix>{<id>}:skips    sorted set of skipped spans

  No ARGV.

  Reads: host, epoch, handoff. Deletes the five keys.

  Returns
    { 1, deleted, epoch }               purged; deleted is the number of keys that
                                        existed (0: nothing to purge), epoch the
                                        record's last epoch (0: none)
    {-5, epoch, host, handoff }         STREAM_OWNED: a host owns the stream
]]
local owner = redis.call('HMGET', KEYS[1], 'epoch', 'host', 'handoff')
local epoch = tonumber(owner[1]) or 0
local host = owner[2] or ''
if host ~= '' then
  return {-5, epoch, host, owner[3] or 'none'}
end
local deleted = redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
return {1, deleted, epoch}
