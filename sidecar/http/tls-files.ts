/**
 * The TLS listener's certificate and key (README "TLS"): PEM files read at start and
 * again at every reload, so a certificate renewed in place (certbot, an internal CA)
 * is served to new connections without a restart. A pair that does not load, or a
 * key that does not match its certificate, is refused with BAD_CONFIG naming the file,
 * and the pair in force stays.
 */
import { X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createSecureContext } from 'node:tls';
import { ConsoledError } from '../../common/errors.js';

export interface TlsFiles {
  readonly cert: string;
  readonly key: string;
}

export interface TlsMaterial {
  readonly cert: Buffer;
  readonly key: Buffer;
  /** What operators see in status and the reload's answer. */
  readonly summary: { readonly fingerprint256: string; readonly subject: string; readonly validTo: string };
}

/** Reads and checks `files`: both parse, and the key is the certificate's. */
export async function loadTlsMaterial(files: TlsFiles): Promise<TlsMaterial> {
  const read = async (path: string, what: string) => {
    try {
      return await readFile(path);
    } catch (err) {
      throw new ConsoledError(
        'BAD_CONFIG',
        `listen.tls.${what}: cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`,
      );
    }
  };
  const cert = await read(files.cert, 'cert');
  const key = await read(files.key, 'key');
  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(cert);
  } catch (err) {
    throw new ConsoledError(
      'BAD_CONFIG',
      `listen.tls.cert: ${files.cert} is not a PEM certificate (${String(err)})`,
    );
  }
  try {
    // Fails when the key does not parse or is not the certificate's.
    createSecureContext({ cert, key });
  } catch (err) {
    throw new ConsoledError(
      'BAD_CONFIG',
      `listen.tls.key: ${files.key} does not load with ${files.cert} (${(err as Error).message})`,
    );
  }
  return {
    cert,
    key,
    summary: { fingerprint256: x509.fingerprint256, subject: x509.subject, validTo: x509.validTo },
  };
}
