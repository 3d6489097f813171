import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ConsoledError } from '../../common/errors.js';
import { readFileNoFollow } from '../../store/safe-files.js';

/** File in the state directory that holds the generated secret. */
export const CONSOLE_SECRET_FILE = 'console-secret';

/**
 * The HMAC secret that signs viewer tokens: `console.tokenSecret` from the config,
 * else `<stateDir>/console-secret`, generated once (256 random bits, mode 0600) so
 * that tokens survive restarts. Replacing the file revokes every token issued.
 */
export async function loadConsoleSecret(stateDir: string, configured: string | undefined): Promise<Buffer> {
  if (configured !== undefined) return Buffer.from(configured, 'utf8');
  const path = join(stateDir, CONSOLE_SECRET_FILE);
  // Never through a link (store/safe-files.ts).
  const existing = await readFileNoFollow(path);
  if (existing !== null) return checked(path, existing.toString('utf8'));
  // 'wx' (O_EXCL): never overwrite a secret another process wrote meanwhile, never follow a link.
  await writeFile(path, `${randomBytes(32).toString('base64url')}\n`, { mode: 0o600, flag: 'wx' }).catch(
    (err: NodeJS.ErrnoException) => {
      if (err.code !== 'EEXIST') throw err;
    },
  );
  return checked(path, (await readFileNoFollow(path))?.toString('utf8') ?? '');
}

function checked(path: string, text: string): Buffer {
  const secret = text.trim();
  if (secret.length < 32)
    throw new ConsoledError(
      'BAD_CONFIG',
      `${path} holds fewer than 32 characters; remove it to generate a new secret`,
    );
  return Buffer.from(secret, 'utf8');
}
