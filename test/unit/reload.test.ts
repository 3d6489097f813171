/**
 * The reload's diff (sidecar/lifecycle/reload.ts): which changed fields a reload applies
 * and which it refuses, and which declared guests it adds, removes or changes.
 */
import { describe, expect, it } from 'vitest';
import { validateConfig } from '../../sidecar/config.js';
import { changedFields, planReload, RELOADABLE_FIELDS } from '../../sidecar/lifecycle/reload.js';

const base = {
  hostId: 'h1',
  stateDir: '/var/lib/consoled',
  adminToken: 'a'.repeat(32),
  guests: [
    { id: 'vm-a', source: { type: 'tcp', host: '127.0.0.1', port: 4000 } },
    {
      id: 'vm-b',
      source: { type: 'unix', path: '/run/b.sock' },
      rateLimit: { bytesPerSec: 100, burstBytes: 1000 },
    },
  ],
};

function plan(patch: Record<string, unknown>) {
  return planReload(validateConfig(base), validateConfig({ ...base, ...patch }));
}

describe('changedFields', () => {
  it('names the leaves that differ, objects key by key and arrays whole', () => {
    expect(changedFields({ a: 1, b: { c: 2, d: [1] } }, { a: 1, b: { c: 3, d: [1, 2] } })).toEqual([
      'b.c',
      'b.d',
    ]);
    expect(changedFields({ a: { x: 1 } }, { a: undefined })).toEqual(['a']);
    expect(changedFields({ a: 1 }, { a: 1 })).toEqual([]);
  });
});

describe('planReload', () => {
  it('finds nothing to do in the same file', () => {
    expect(plan({})).toEqual({ refused: [], applied: [], added: [], removed: [], changed: [] });
  });

  it('adds and removes declared guests', () => {
    const p = plan({ guests: [base.guests[1], { id: 'vm-c', source: { type: 'pty', path: '/dev/pts/9' } }] });
    expect(p).toMatchObject({
      refused: [],
      applied: ['guests'],
      added: ['vm-c'],
      removed: ['vm-a'],
      changed: [],
    });
  });

  it('marks a declared guest whose spec changed, and only that one', () => {
    const p = plan({
      guests: [base.guests[0], { ...base.guests[1], rateLimit: { bytesPerSec: 200, burstBytes: 1000 } }],
    });
    expect(p).toMatchObject({ refused: [], added: [], removed: [], changed: ['vm-b'] });
  });

  it('applies the limits a reload may change', () => {
    const p = plan({
      hostRateLimit: { bytesPerSec: 1000, burstBytes: 5000 },
      defaults: { rateLimit: { bytesPerSec: 10, burstBytes: 20 } },
      limits: { maxGuests: 10 },
    });
    expect(p.refused).toEqual([]);
    expect(p.applied).toEqual([
      'defaults.rateLimit.burstBytes',
      'defaults.rateLimit.bytesPerSec',
      'hostRateLimit.burstBytes',
      'hostRateLimit.bytesPerSec',
      'limits.maxGuests',
    ]);
  });

  it('refuses every other field, naming each, whatever else changes', () => {
    const p = plan({
      hostId: 'h2',
      stateDir: '/srv/consoled',
      listen: { port: 7071 },
      limits: { maxBodyBytes: 2048, maxGuests: 10 },
      defaults: { rotation: { maxFileBytes: 8192, maxFiles: 2 } },
      redis: { url: 'redis://127.0.0.1:6379' },
      console: { tokenSecret: 'b'.repeat(32) },
      guests: [],
    });
    expect(p.refused).toEqual(
      expect.arrayContaining([
        'hostId',
        'stateDir',
        'listen.port',
        'limits.maxBodyBytes',
        'defaults.rotation.maxFileBytes',
        'defaults.rotation.maxFiles',
        'redis',
      ]),
    );
    expect(p.refused.some((f) => f.startsWith('console.'))).toBe(true);
    expect(p.refused.every((f) => !RELOADABLE_FIELDS.some((r) => f === r || f.startsWith(`${r}.`)))).toBe(
      true,
    );
    expect(p.applied).toEqual(['guests', 'limits.maxGuests']);
  });

  it('takes a new TLS certificate or key path, and refuses adding, removing or moving the TLS listener', () => {
    const tls = { port: 7443, cert: '/etc/consoled/tls/a.pem', key: '/etc/consoled/tls/a.key' };
    const withTls = (t: object | undefined) => ({
      ...base,
      listen: { host: '127.0.0.1', port: 7070, ...(t ? { tls: t } : {}) },
    });
    const from = validateConfig(withTls(tls));
    const to = (t: object | undefined) => planReload(from, validateConfig(withTls(t)));
    expect(to({ ...tls, cert: '/etc/consoled/tls/b.pem', key: '/etc/consoled/tls/b.key' })).toMatchObject({
      refused: [],
      applied: ['listen.tls.cert', 'listen.tls.key'],
    });
    expect(to(undefined).refused).toEqual(['listen.tls']);
    expect(to({ ...tls, port: 8443 }).refused).toEqual(['listen.tls.port']);
    expect(to({ ...tls, host: '0.0.0.0' }).refused).toEqual(['listen.tls.host']);
  });

  it('refuses a changed secret by its name only', () => {
    const p = plan({ adminToken: 'z'.repeat(32) });
    expect(p.refused).toEqual(['adminToken']);
    expect(JSON.stringify(p)).not.toContain('zzzz');
  });
});
