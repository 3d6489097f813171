#!/usr/bin/env node
// What a guest costs in Redis (README "Retention and capacity"): for segments of a few
// sizes, appends N segments through the real append script to a real redis-server and
// reads `MEMORY USAGE <stream> SAMPLES 0` (exact) and the growth of `used_memory`, then
// reports the bytes per entry beyond the data, and the fixed keys a guest has (owner
// hash, boots, markers). Usage (after `npm run build`):
//   node test/bench/redis-capacity.mjs [--entries 2000]
import { parseArgs } from 'node:util';
import { Redis } from 'ioredis';
import { replicationCommands } from '../../dist/store/replication/redis-commands.js';
import { guestKeys } from '../../dist/store/replication/redis-keys.js';
import { markdownTable, report } from './bench-lib.mjs';
import { appendForBench, claimForBench, startRedisServer } from './redis-bench-lib.mjs';

const { values } = parseArgs({ options: { entries: { type: 'string', default: '2000' } } });
const entries = Number(values.entries);
const SIZES = [80, 1024, 4096, 65536];

const redis = await startRedisServer();
const client = new Redis(redis.url);
const commands = replicationCommands(client);

async function usedMemory() {
  const info = await client.info('memory');
  return Number(/^used_memory:(\d+)/m.exec(info)[1]);
}

const rows = [];
const results = [];
for (const size of SIZES) {
  const id = `cap-${size}`;
  const keys = guestKeys('consoled:', id);
  const before = await usedMemory();
  const epoch = await claimForBench(commands, keys);
  const segment = Buffer.alloc(size, 0x61);
  for (let i = 0; i < entries; i++) await appendForBench(commands, keys, epoch, i * size, segment, 0);
  const after = await usedMemory();
  const stream = Number(await client.call('MEMORY', 'USAGE', keys.log, 'SAMPLES', '0'));
  const fixed =
    Number(await client.call('MEMORY', 'USAGE', keys.owner, 'SAMPLES', '0')) +
    Number((await client.call('MEMORY', 'USAGE', keys.boots, 'SAMPLES', '0')) ?? 0);
  const data = entries * size;
  const perEntry = (stream - data) / entries;
  const perEntryUsed = (after - before - data) / entries;
  results.push({ size, entries, data, stream, usedGrowth: after - before, perEntry, perEntryUsed, fixed });
  rows.push([
    String(size),
    String(entries),
    String(data),
    String(stream),
    perEntry.toFixed(0),
    perEntryUsed.toFixed(0),
    `${((stream / data) * 100).toFixed(0)}%`,
    String(fixed),
  ]);
}
await client.quit();
await redis.stop();

report(
  'redis-capacity',
  markdownTable(
    [
      'segment bytes',
      'entries',
      'data bytes',
      'MEMORY USAGE stream',
      'overhead/entry (MEMORY USAGE)',
      'overhead/entry (used_memory)',
      'stream / data',
      'owner+boots bytes',
    ],
    rows,
  ),
  { results },
);
