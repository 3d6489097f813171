/**
 * Certificates the TLS tests make for themselves with Debian's `openssl` (installed by
 * .ci/run): self-signed, for `localhost` and `127.0.0.1`, key mode 0600.
 */
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { chmodSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

export interface TestCert {
  readonly cert: string;
  readonly key: string;
  readonly pem: Buffer;
  readonly fingerprint256: string;
}

/** Writes `<name>.pem` and `<name>.key` into `dir` (replacing what is there) and returns them. */
export function makeTestCert(dir: string, name = 'server', commonName = 'localhost'): TestCert {
  const cert = join(dir, `${name}.pem`);
  const key = join(dir, `${name}.key`);
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-days',
      '2',
      '-subj',
      `/CN=${commonName}`,
      '-addext',
      'subjectAltName=DNS:localhost,IP:127.0.0.1',
      '-keyout',
      key,
      '-out',
      cert,
    ],
    { stdio: 'ignore' },
  );
  chmodSync(key, 0o600);
  const pem = readFileSync(cert);
  return { cert, key, pem, fingerprint256: new X509Certificate(pem).fingerprint256 };
}
