/**
 * The configuration's defaults are the ones the documentation gives: README's tables
 * (the main one and `console:`) and docs/replication.md's `redis`/`handoff` example.
 * A backoff with `initialDelayMs` above `maxDelayMs` is accepted (it was before the
 * check) and the daemon logs a warning for it at start.
 */
import { readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { configWarnings, validateConfig } from '../../sidecar/config.js';
import { CONSOLED_BIN, REPO_ROOT, startDaemon, stopAllDaemons } from '../support/daemon.js';
import { runScript } from '../support/run-script.js';
import { removeTmpDirs, tmpDir } from '../support/tmp.js';

afterAll(async () => {
  await stopAllDaemons();
  await removeTmpDirs();
});

const README = readFileSync(join(REPO_ROOT, 'README.md'), 'utf8');
const UNITS: Record<string, number> = { KiB: 1024, MiB: 1024 * 1024 };

/** A documented default as a value, or undefined where it is prose ("the hostname"). */
function documentedValue(text: string): unknown {
  const t = text
    .replace(/\([^)]*\)/g, '')
    .trim()
    .replace(/^`(.*)`$/, '$1');
  if (/^\d+$/.test(t)) return Number(t);
  const withUnit = /^(\d+) (KiB|MiB)$/.exec(t);
  if (withUnit) return Number(withUnit[1]) * (UNITS[withUnit[2] as string] as number);
  if (t === 'true' || t === 'false') return t === 'true';
  if (t === '[]') return [];
  if (/^"[^"]*"$/.test(t)) return t.slice(1, -1);
  if (/^[\w.-]+$/.test(t) && /\d/.test(t)) return t; // an address such as 127.0.0.1
  if (/^\/[\w./-]+$/.test(t)) return t; // a path
  return undefined;
}

/** `[path, value]` of every README table row of `| field | default | meaning |` with a plain default. */
function readmeDefaults(): Array<[string, unknown]> {
  const rows: Array<[string, unknown]> = [];
  let prefix = '';
  let inTable = false;
  for (const line of README.split('\n')) {
    if (line.startsWith('#')) prefix = line.includes('`console:`') ? 'console.' : '';
    if (line === '| field | default | meaning |') {
      inTable = true;
      continue;
    }
    if (!line.startsWith('|')) inTable = false;
    if (!inTable || line.startsWith('|---')) continue;
    const [fieldCell = '', defaultCell = ''] = line.split('|').slice(1, 3);
    const fields = [...fieldCell.matchAll(/`([^`]+)`/g)].map((m) => m[1] as string);
    if (fieldCell.includes(' / ') || fields.some((f) => /[*<[]/.test(f))) continue;
    const values = defaultCell.split(/,(?![^(]*\))/).map(documentedValue);
    if (values.length !== fields.length || values.some((v) => v === undefined)) continue;
    // `a.b.c`, `d` is a.b.c and a.b.d.
    const parent = (fields[0] as string).split('.').slice(0, -1).join('.');
    fields.forEach((f, i) => {
      const path = i > 0 && !f.includes('.') && parent ? `${parent}.${f}` : f;
      rows.push([`${prefix}${path}`, values[i]]);
    });
  }
  return rows;
}

function at(value: unknown, path: string): unknown {
  return path.split('.').reduce<unknown>((v, k) => (v as Record<string, unknown> | undefined)?.[k], value);
}

describe('config defaults', () => {
  it("are what README's configuration tables say", () => {
    const rows = readmeDefaults();
    // The parser must find the tables' rows, or this test checks nothing.
    const paths = rows.map(([p]) => p);
    for (const p of [
      'stateDir',
      'listen.port',
      'defaults.reconnect.maxDelayMs',
      'store.fileMode',
      'exec.rows',
    ])
      expect(paths).toContain(p);
    expect(paths).toContain('console.replayBytes');
    expect(rows.length).toBeGreaterThan(40);
    // With a `redis:` section, so that rows of `redis.` fields (`redis.hosts.*`) are checked too.
    const config = validateConfig({ redis: { url: 'redis://127.0.0.1:6379' } });
    for (const [path, documented] of rows) expect(at(config, path), path).toEqual(documented);
    expect(paths).toContain('redis.hosts.ttlMs');
  });

  it("the redis and handoff defaults are docs/replication.md's example", () => {
    const doc = readFileSync(join(REPO_ROOT, 'docs', 'replication.md'), 'utf8');
    const block = /## Configuration\n\n```yaml\n([\s\S]*?)```/.exec(doc)?.[1];
    expect(block).toBeDefined();
    const example = parseYaml(block as string) as {
      redis: Record<string, unknown>;
      handoff: Record<string, unknown>;
    };
    const config = validateConfig({ redis: { url: 'redis://127.0.0.1:6379' } });
    const { url: _url, ...redisDefaults } = example.redis;
    expect(Object.keys(redisDefaults).length).toBeGreaterThan(8);
    expect(config.redis).toMatchObject(redisDefaults);
    expect(Object.keys(example.handoff).length).toBe(6);
    expect(config.handoff).toEqual(example.handoff);
  });

  it('a section given in part keeps the defaults of the rest', () => {
    const config = validateConfig({
      listen: { port: 7171 },
      store: { fileMode: '0600' },
      defaults: { reconnect: { maxDelayMs: 3000 } },
      redis: { url: 'redis://127.0.0.1:6379', reconnect: { initialDelayMs: 50 } },
      handoff: { drainQuietMs: 20 },
    });
    expect(config.listen).toEqual({ host: '127.0.0.1', port: 7171 });
    expect(config.store).toMatchObject({ fileMode: '0600', maxQueueBytes: 16 * 1024 * 1024 });
    expect(config.defaults.reconnect).toEqual({ initialDelayMs: 100, maxDelayMs: 3000, minUptimeMs: 1000 });
    expect(config.redis?.reconnect).toEqual({ initialDelayMs: 50, maxDelayMs: 10_000 });
    expect(config.handoff).toMatchObject({ drainQuietMs: 20, completionTimeoutMs: 10_000 });
    expect(configWarnings(config)).toEqual([]);
  });

  it('initialDelayMs above maxDelayMs is accepted, with a warning for each backoff', () => {
    const config = validateConfig({
      defaults: { reconnect: { initialDelayMs: 5000, maxDelayMs: 1000 } },
      redis: { url: 'redis://127.0.0.1:6379', reconnect: { initialDelayMs: 20_000, maxDelayMs: 10_000 } },
    });
    expect(configWarnings(config)).toEqual([
      'defaults.reconnect.initialDelayMs (5000) is above defaults.reconnect.maxDelayMs (1000): every delay is the cap',
      'redis.reconnect.initialDelayMs (20000) is above redis.reconnect.maxDelayMs (10000): every delay is the cap',
    ]);
  });

  it('the daemon starts with initialDelayMs above maxDelayMs and logs the warning', async () => {
    const d = await startDaemon({
      config: { defaults: { reconnect: { initialDelayMs: 5000, maxDelayMs: 1000, minUptimeMs: 1000 } } },
    });
    const health = await fetch(`${d.url}/healthz`);
    expect(health.status).toBe(200);
    // Logged before "consoled listening", which startDaemon waited for.
    const line = d
      .logs()
      .split('\n')
      .find((l) => l.includes('config: defaults.reconnect.initialDelayMs'));
    expect(line, d.logs()).toBeDefined();
    expect(JSON.parse((line as string).slice((line as string).indexOf('{')))).toMatchObject({
      level: 40,
      msg: 'config: defaults.reconnect.initialDelayMs (5000) is above defaults.reconnect.maxDelayMs (1000): every delay is the cap',
    });
  });

  it('check-config accepts it too, and prints the warning', async () => {
    const path = join(tmpDir('conf'), 'consoled.json');
    await writeFile(
      path,
      JSON.stringify({ redis: { url: 'redis://127.0.0.1:6379', reconnect: { initialDelayMs: 20_000 } } }),
    );
    const result = await runScript(CONSOLED_BIN, ['check-config', path]);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toContain(': ok');
    expect(result.stderr).toContain(
      'warning: redis.reconnect.initialDelayMs (20000) is above redis.reconnect.maxDelayMs (10000)',
    );
  });
});
