--[[
  prune-host: takes a host out of the host registry's index once its hash expired
  (docs/design.md "Host registry": the host stopped refreshing it for the TTL). In one
  step, so a host that published again between a listing and this call keeps its place
  in the index.

  KEYS[1] index  <prefix>{_hosts}:index          sorted set of host ids
  KEYS[2] host   <prefix>{_hosts}:host:<hostId>  the host's hash (TTL: redis.hosts.ttlMs)

  ARGV[1] hostId  the member of the index to take out

  Returns
    { 1 }  pruned: the hash is gone and the id left the index
    { 0 }  kept: the hash exists (the host published again)
]]
if redis.call('EXISTS', KEYS[2]) == 1 then
  return { 0 }
end
redis.call('ZREM', KEYS[1], ARGV[1])
return { 1 }
