/**
 * The host credential of proxied console connections (sidecar/console/host-credential.ts):
 * what one host signs another verifies once, for that path and viewer address only,
 * within the clock skew, and only with the same cluster secret.
 */
import { describe, expect, it } from 'vitest';
import {
  CLOCK_SKEW_MS,
  HOST_CREDENTIAL_HEADER,
  HostCredential,
  PROXIED_CLIENT_HEADER,
} from '../../sidecar/console/host-credential.js';

const SECRET = Buffer.from('a-cluster-secret-of-enough-length-0123');
const PATH = '/v1/guests/g1/console?from=10&mode=rw';

function signed(signer: HostCredential, path = PATH, client = '192.0.2.1', now = Date.now()) {
  const headers = signer.sign(path, client, now);
  return { header: headers[HOST_CREDENTIAL_HEADER]!, client: headers[PROXIED_CLIENT_HEADER]! };
}

function refusal(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    return (err as { code: string }).code;
  }
  return 'accepted';
}

describe('host credential', () => {
  it('verifies once, naming the signing host and the viewer address', () => {
    const edge = new HostCredential(SECRET, 'host-c');
    const owner = new HostCredential(SECRET, 'host-a');
    const { header, client } = signed(edge);
    expect(owner.verify(header, PATH, client)).toEqual({ hostId: 'host-c', client: '192.0.2.1' });
    expect(refusal(() => owner.verify(header, PATH, client))).toBe('HOST_AUTH_FAILED');
  });

  it('refuses another path, another address, another secret, a stale or future time, and garbage', () => {
    const edge = new HostCredential(SECRET, 'host-c');
    const owner = new HostCredential(SECRET, 'host-a');
    const now = Date.now();
    const cases: Array<[string, () => unknown]> = [
      ['other path', () => owner.verify(signed(edge).header, '/v1/guests/g2/console', '192.0.2.1')],
      ['other query', () => owner.verify(signed(edge).header, '/v1/guests/g1/console?from=0', '192.0.2.1')],
      ['other address', () => owner.verify(signed(edge).header, PATH, '198.51.100.9')],
      [
        'other secret',
        () => {
          const forged = signed(
            new HostCredential(Buffer.from('another-secret-of-enough-length-xyz'), 'host-c'),
          );
          return owner.verify(forged.header, PATH, forged.client);
        },
      ],
      [
        'stale',
        () =>
          owner.verify(signed(edge, PATH, '192.0.2.1', now - CLOCK_SKEW_MS - 1000).header, PATH, '192.0.2.1'),
      ],
      [
        'future',
        () =>
          owner.verify(signed(edge, PATH, '192.0.2.1', now + CLOCK_SKEW_MS + 1000).header, PATH, '192.0.2.1'),
      ],
      ['not five parts', () => owner.verify('v1.host-c.1.2', PATH, '')],
      ['other version', () => owner.verify(signed(edge).header.replace(/^v1\./, 'v2.'), PATH, '192.0.2.1')],
      [
        'renamed host',
        () => owner.verify(signed(edge).header.replace('.host-c.', '.host-x.'), PATH, '192.0.2.1'),
      ],
    ];
    for (const [what, attempt] of cases) expect(refusal(attempt), what).toBe('HOST_AUTH_FAILED');
    // A time within the skew either way is fine.
    expect(owner.verify(signed(edge, PATH, '', now - CLOCK_SKEW_MS + 5000).header, PATH, '').hostId).toBe(
      'host-c',
    );
    expect(owner.verify(signed(edge, PATH, '', now + CLOCK_SKEW_MS - 5000).header, PATH, '').hostId).toBe(
      'host-c',
    );
  });
});
