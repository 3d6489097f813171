import { describe, expect, it } from 'vitest';
import { ConsoledError } from '../../common/errors.js';
import { readScripts } from '../../store/replication/redis-commands.js';
import {
  DEFAULT_KEY_PREFIX,
  guestKeys,
  hashTag,
  revocationChannel,
  revokedTokenKey,
  usedTokenKey,
} from '../../store/replication/redis-keys.js';

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return err instanceof ConsoledError ? err.code : 'not a ConsoledError';
  }
  return undefined;
}

describe('guestKeys', () => {
  it('names the keys exactly as docs/design.md does, all under one hash tag', () => {
    expect(guestKeys(DEFAULT_KEY_PREFIX, 'vm-1')).toEqual({
      log: 'consoled:{vm-1}:log',
      owner: 'consoled:{vm-1}:owner',
      boots: 'consoled:{vm-1}:boots',
      markers: 'consoled:{vm-1}:markers',
      logSlot: 'consoled:{vm-1}:log:slot',
    });
    expect(guestKeys('dc2:', 'a.b_c')).toEqual({
      log: 'dc2:{a.b_c}:log',
      owner: 'dc2:{a.b_c}:owner',
      boots: 'dc2:{a.b_c}:boots',
      markers: 'dc2:{a.b_c}:markers',
      logSlot: 'dc2:{a.b_c}:log:slot',
    });
    expect(hashTag('0f6c3a8e-1d2b-4c5d-9e7f-123456789abc')).toBe('{0f6c3a8e-1d2b-4c5d-9e7f-123456789abc}');
  });

  it('refuses a bad guest id before building any key', () => {
    for (const bad of ['', '-x', 'a}b', 'a{b', 'a b', 'x'.repeat(129), '../etc']) {
      expect(codeOf(() => guestKeys(DEFAULT_KEY_PREFIX, bad))).toBe('BAD_GUEST_ID');
    }
  });

  it('refuses a prefix that would move the hash tag', () => {
    expect(codeOf(() => guestKeys('x{y}:', 'vm-1'))).toBe('BAD_CONFIG');
    expect(codeOf(() => guestKeys('x{', 'vm-1'))).toBe('BAD_CONFIG');
  });
});

describe('token keys', () => {
  it('names the spent and revoked token ids as docs/design.md does; revocations share one hash tag', () => {
    expect(usedTokenKey(DEFAULT_KEY_PREFIX, 'vm-1', 'abc_-9')).toBe('consoled:{vm-1}:used-token:abc_-9');
    expect(revokedTokenKey(DEFAULT_KEY_PREFIX, 'abc_-9')).toBe('consoled:{_tokens}:revoked:abc_-9');
    expect(revokedTokenKey('dc2:', 'x')).toBe('dc2:{_tokens}:revoked:x');
    expect(revocationChannel('dc2:')).toBe('dc2:tokens:revoked');
    for (const bad of ['', 'a.b', 'a:b', 'x'.repeat(65)])
      expect(codeOf(() => revokedTokenKey(DEFAULT_KEY_PREFIX, bad))).toBe('BAD_PARAMETER');
    expect(codeOf(() => revocationChannel('x{'))).toBe('BAD_CONFIG');
  });
});

describe('script files', () => {
  it('are named <name>-<numberOfKeys>.lua and document KEYS, ARGV and replies', () => {
    const scripts = readScripts();
    expect(scripts.map((s) => `${s.name}-${s.numberOfKeys}`).sort()).toEqual([
      'append-5',
      'cancel-handoff-1',
      'claim-2',
      'expire-gone-5',
      'prune-host-2',
      'purge-5',
      'release-1',
      'request-handoff-1',
      'seal-1',
      'status-2',
    ]);
    for (const script of scripts) {
      const header = script.lua.slice(0, script.lua.indexOf(']]'));
      expect(header, script.name).toMatch(/KEYS\[1\]/);
      expect(header, script.name).toMatch(/Returns/);
      for (let k = 1; k <= script.numberOfKeys; k++) expect(header, script.name).toContain(`KEYS[${k}]`);
      expect(header, script.name).not.toContain(`KEYS[${script.numberOfKeys + 1}]`);
    }
  });
});
