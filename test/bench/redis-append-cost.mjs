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

// The sketch: the owner checks without the bytes, then XADD, in one MULTI. A refused
// check would still let the XADD run; a real design must stop it (not built).
client.defineCommand('sketchGuard', {
  numberOfKeys: 1,
  lua: `local o = redis.call('HMGET', KEYS[1], 'epoch', 'host', 'next')
if tonumber(o[1]) ~= tonumber(ARGV[1]) or o[2] ~= ARGV[2] then return -1 end
if (tonumber(o[3]) or 0) ~= tonumber(ARGV[3]) then return -3 end
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
  sketch: { label: 'sketch: checks without the bytes + XADD in MULTI' },
};

async function run(name, round) {
  const keys = guestKeys('consoled:', `cost-${name}-${round}`);
  const epoch = await claimForBench(commands, keys);
  const v = variants[name];
  const appendAt = (offset) => {
    if (name === 'plainXadd') return client.xadd(keys.log, `${offset}-1`, ...entryFields(offset, epoch));
    if (name === 'sketch') {
      return client
        .multi()
        .sketchGuard(keys.owner, epoch, 'bench', offset, segment.length)
        .xadd(keys.log, `${offset}-1`, ...entryFields(offset, epoch))
        .exec();
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
