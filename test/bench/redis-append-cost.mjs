#!/usr/bin/env node
// Redis's own CPU per GiB appended to a guest's stream, in one run (docs/design.md
// "Redis schema", README "Benchmarks"). Each variant appends `--mib` MiB in segments of
// `--segment-kib` KiB, 16 in flight, to a fresh guest on a real redis-server, and reads
// the server's CPU (user + system) before and after:
// - the append script as the daemon sends it (batched, fenced, exactly once), with the
//   default retention (16 MiB) and with retention off;
// - plain XADD of the same entries (no fencing, no offset check): the floor;
// - a sketch not built: the checks in a script that never sees the bytes, and the XADD
//   itself beside it in one MULTI (Lua hashes every byte of every string it is given).
//   The script moves the stream to a write slot only when the checks pass; the XADD goes
//   to the slot with NOMKSTREAM, and a RENAME moves it back. A refused check, or a script
//   Redis does not know (NOSCRIPT), leaves no slot: the XADD adds nothing, the RENAME
//   fails harmlessly, the stream is untouched. RENAME serves readers blocked on the
//   stream (checked by hand on this Redis, 7.0).
// Usage (after `npm run build`):
//   node test/bench/redis-append-cost.mjs [--mib 256] [--segment-kib 64] [--runs 3]
import { parseArgs } from 'node:util';
import { Redis } from 'ioredis';
import { replicationCommands } from '../../dist/store/replication/redis-commands.js';
import { guestKeys } from '../../dist/store/replication/redis-keys.js';
import { cpuSeconds, markdownTable, median, report } from './bench-lib.mjs';
import { appendForBench, claimForBench, startRedisServer } from './redis-bench-lib.mjs';

const { values } = parseArgs({
  options: {
    mib: { type: 'string', default: '256' },
    'segment-kib': { type: 'string', default: '64' },
    runs: { type: 'string', default: '3' },
  },
});
const segment = Buffer.alloc(Number(values['segment-kib']) * 1024, 0x61);
const count = Math.ceil((Number(values.mib) * 2 ** 20) / segment.length);
const gib = (count * segment.length) / 2 ** 30;
const IN_FLIGHT = 16;
const RETENTION = 16 * 2 ** 20;

const redis = await startRedisServer();
const client = new Redis(redis.url);
const commands = replicationCommands(client);

// The sketch: the owner checks without the bytes; only if they pass is the stream moved
// to its write slot, where the XADD (NOMKSTREAM) finds it; a RENAME moves it back. All in
// one MULTI (see the header). KEYS: owner, log, slot. An empty stream is made for the
// first append with XGROUP CREATE … MKSTREAM (and the group destroyed).
client.defineCommand('sketchGuard', {
  numberOfKeys: 3,
  lua: `local o = redis.call('HMGET', KEYS[1], 'epoch', 'host', 'next')
if tonumber(o[1]) ~= tonumber(ARGV[1]) or o[2] ~= ARGV[2] then return -1 end
if (tonumber(o[3]) or 0) ~= tonumber(ARGV[3]) then return -3 end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('RENAME', KEYS[2], KEYS[3])
else
  redis.call('XGROUP', 'CREATE', KEYS[3], 'g', '$', 'MKSTREAM')
  redis.call('XGROUP', 'DESTROY', KEYS[3], 'g')
end
redis.call('HSET', KEYS[1], 'next', string.format('%d', tonumber(ARGV[3]) + tonumber(ARGV[4])))
return 1`,
});

const entryFields = (offset, epoch) => [
  'd',
  segment,
  'h',
  'bench',
  'e',
  String(epoch),
  'b',
  '1',
  't',
  String(Date.now()),
  'o',
  String(offset),
];

const variants = {
  script: { label: 'append script, retention 16 MiB (the default)', retention: RETENTION },
  scriptNoRetention: { label: 'append script, retention off', retention: 0 },
  plainXadd: { label: 'plain XADD (no fencing): the floor' },
  sketch: { label: 'sketch: checks without the bytes, XADD to a slot the checks open, in MULTI' },
};

async function run(name, round) {
  const keys = guestKeys('consoled:', `cost-${name}-${round}`);
  const epoch = await claimForBench(commands, keys);
  const v = variants[name];
  const appendAt = (offset) => {
    if (name === 'plainXadd') return client.xadd(keys.log, `${offset}-1`, ...entryFields(offset, epoch));
    if (name === 'sketch') {
      const slot = `${keys.log}:w`;
      return client
        .multi()
        .sketchGuard(keys.owner, keys.log, slot, epoch, 'bench', offset, segment.length)
        .xadd(slot, 'NOMKSTREAM', `${offset}-1`, ...entryFields(offset, epoch))
        .rename(slot, keys.log)
        .exec()
        .then((replies) => {
          // Every check passes here: a refusal would be a bug in the benchmark.
          if (replies[0][1] !== 1 || replies[2][0])
            throw new Error(`sketch refused: ${JSON.stringify(replies)}`);
        });
    }
    return appendForBench(commands, keys, epoch, offset, segment, v.retention);
  };
  const cpu0 = cpuSeconds(redis.pid);
  const t0 = performance.now();
  const inFlight = new Set();
  for (let i = 0; i < count; i++) {
    const p = appendAt(i * segment.length);
    inFlight.add(p);
    p.finally(() => inFlight.delete(p));
    if (inFlight.size >= IN_FLIGHT) await Promise.race(inFlight);
  }
  await Promise.all(inFlight);
  const seconds = (performance.now() - t0) / 1000;
  const cpu = cpuSeconds(redis.pid) - cpu0;
  await client.del(keys.log, keys.owner, keys.boots, keys.markers);
  return { cpuPerGib: cpu / gib, mibPerSec: (gib * 1024) / seconds };
}

const runs = Number(values.runs);
const results = Object.fromEntries(Object.keys(variants).map((k) => [k, []]));
try {
  for (let round = 0; round < runs; round++) {
    for (const name of Object.keys(variants)) results[name].push(await run(name, round));
    process.stderr.write(`round ${round + 1}/${runs} done\n`);
  }
} finally {
  await client.quit();
  await redis.stop();
}

const floor = median(results.plainXadd.map((r) => r.cpuPerGib));
const summary = Object.fromEntries(
  Object.entries(results).map(([name, rs]) => [
    name,
    {
      cpuPerGib: median(rs.map((r) => r.cpuPerGib)),
      cpuPerGibEachRun: rs.map((r) => Number(r.cpuPerGib.toFixed(2))),
      mibPerSec: median(rs.map((r) => r.mibPerSec)),
    },
  ]),
);
report(
  'redis-append-cost',
  `Redis's CPU per GiB appended, ${values.mib} MiB in ${values['segment-kib']} KiB segments, ${IN_FLIGHT} in flight, median of ${runs} runs\n\n${markdownTable(
    ['append', "Redis's CPU s per GiB", 'each run', 'ratio vs plain XADD', 'MiB/s'],
    Object.entries(summary).map(([name, s]) => [
      variants[name].label,
      s.cpuPerGib.toFixed(2),
      s.cpuPerGibEachRun.join(' / '),
      (s.cpuPerGib / floor).toFixed(2),
      s.mibPerSec.toFixed(0),
    ]),
  )}`,
  summary,
);
