/**
 * The ownership fault test, long form: FAULT_HISTORIES histories (default 200) from
 * FAULT_SEED on (default: drawn and printed), FAULT_OPS operations each (default 12),
 * FAULT_BURST_LINES lines printed at once by each guest every 40 ticks (default 0),
 * FAULT_UPGRADE_RATE the share of live migrations that also upgrade a host (default 0.15).
 * Run it with `npm run fault:ownership -- --seed S --histories N [--ops K] [--burst-lines L]
 * [--upgrade-rate R]`
 * (FAULT_VERBOSE=1 prints each operation as it starts). Every
 * failing history prints its seed and operations; the summary counts what ran clean.
 */
import { afterAll, expect, it } from 'vitest';
import { closeAllPeers, stopAllDaemons } from '../support/daemon.js';
import { removeTmpDirs } from '../support/tmp.js';
import { describeHistory, type HistoryResult, runOwnershipHistory } from './ownership-history.js';

afterAll(async () => {
  await stopAllDaemons();
  await closeAllPeers();
  await removeTmpDirs();
});

const first = Number(process.env['FAULT_SEED'] ?? Math.floor(Math.random() * 2 ** 31));
const histories = Number(process.env['FAULT_HISTORIES'] ?? 200);
const opsPer = Number(process.env['FAULT_OPS'] ?? 12);
const guests = Number(process.env['FAULT_GUESTS'] ?? 2);
const burstLines = Number(process.env['FAULT_BURST_LINES'] ?? 0);
const upgradeRate = Number(process.env['FAULT_UPGRADE_RATE'] ?? 0.15);

it(
  `ownership: ${histories} histories from seed ${first}`,
  async () => {
    const failed: HistoryResult[] = [];
    let ops = 0;
    const started = Date.now();
    for (let i = 0; i < histories; i++) {
      const seed = first + i;
      const result = await runOwnershipHistory({
        seed,
        ops: opsPer,
        guests,
        burstLines,
        upgradeRate,
        ...(process.env['FAULT_VERBOSE'] ? { log: (line: string) => console.log(line) } : {}),
      });
      ops += result.ops.length;
      if (result.violations.length > 0) {
        failed.push(result);
        console.error(describeHistory(result));
      }
      console.log(
        `history ${i + 1}/${histories} seed ${seed}: ${result.violations.length === 0 ? 'clean' : 'FAILED'}, ${result.ops.length} ops, ${result.polls} owner polls, epochs ${JSON.stringify(result.epochs)}`,
      );
    }
    console.log(
      `ownership fault run: ${histories - failed.length} of ${histories} histories clean, ${ops} operations, ${Math.round((Date.now() - started) / 1000)} s; first seed ${first}`,
    );
    expect(failed.map((f) => f.seed)).toEqual([]);
  },
  24 * 3600_000,
);
