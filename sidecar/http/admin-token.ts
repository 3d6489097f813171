import { randomBytes, timingSafeEqual } from 'node:crypto';
import { stat, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { ConsoledError, type ErrorCode } from '../../common/errors.js';
import { openNoFollow } from '../../store/safe-files.js';
import type { Config } from '../config.js';

/** Shortest admin token accepted, inline or from a file. */
export const MIN_ADMIN_TOKEN_CHARS = 16;

function badTokenFile(path: string, problem: string): ConsoledError {
  return new ConsoledError('BAD_CONFIG', `admin token file ${path}: ${problem}`);
}

/**
 * Reads the admin token from `path`, refusing a file others could read or replace:
 * it must be a regular file (a symlink is not followed), owned by this user, with no
 * access for others and no write access for the group, in a directory others cannot
 * write to (unless the sticky bit keeps them from replacing our file); and the token
 * must be at least {@link MIN_ADMIN_TOKEN_CHARS} characters. Runs on every start.
 * Returns null when the file does not exist.
 */
async function readTokenFile(path: string): Promise<string | null> {
  let handle: Awaited<ReturnType<typeof openNoFollow>>;
  try {
    handle = await openNoFollow(path);
  } catch (err) {
    // A link in its place, or a file swapped while it was opened: a configuration problem.
    if (err instanceof ConsoledError && err.code === 'UNSAFE_PATH')
      throw new ConsoledError('BAD_CONFIG', `admin token file ${err.message}`);
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return null;
    throw badTokenFile(path, `cannot be read (${code})`);
  }
  try {
    const st = await handle.stat();
    const mode = (st.mode & 0o777).toString(8).padStart(4, '0');
    if (!st.isFile()) throw badTokenFile(path, 'is not a regular file');
    const uid = process.getuid?.();
    if (uid !== undefined && st.uid !== uid)
      throw badTokenFile(path, `is owned by uid ${st.uid}, not by this daemon's user (uid ${uid})`);
    if (st.mode & 0o007) throw badTokenFile(path, `mode ${mode} gives others access; chmod 600 (or 640) it`);
    if (st.mode & 0o020) throw badTokenFile(path, `mode ${mode} lets the group write it; chmod 600 it`);
    const dir = await stat(dirname(path));
    if (dir.mode & 0o002 && !(dir.mode & 0o1000)) {
      throw badTokenFile(
        path,
        `its directory ${dirname(path)} is writable by others (mode ${(dir.mode & 0o7777).toString(8)}), so anyone could replace it`,
      );
    }
    const token = (await handle.readFile('utf8')).trim();
    if (token.length < MIN_ADMIN_TOKEN_CHARS) {
      throw badTokenFile(
        path,
        `the token has ${token.length} characters; at least ${MIN_ADMIN_TOKEN_CHARS} are required`,
      );
    }
    return token;
  } finally {
    await handle.close();
  }
}

/** The admin bearer token: configured, read from a file, or generated into the state directory once. */
export async function loadAdminToken(config: Readonly<Config>): Promise<string> {
  if (config.adminToken) return config.adminToken;
  const path = config.adminTokenFile ?? join(config.stateDir, 'admin-token');
  const existing = await readTokenFile(path);
  if (existing !== null) return existing;
  if (config.adminTokenFile) throw badTokenFile(path, 'does not exist');
  const token = randomBytes(32).toString('base64url');
  // 'wx': never overwrite a token another process wrote meanwhile.
  await writeFile(path, `${token}\n`, { mode: 0o600, flag: 'wx' }).catch(
    async (err: NodeJS.ErrnoException) => {
      if (err.code !== 'EEXIST') throw err;
    },
  );
  const written = await readTokenFile(path);
  if (written === null) throw badTokenFile(path, 'vanished after it was written');
  return written;
}

/** Constant-time comparison of a presented token with the expected one. */
export function tokenMatches(presented: string, expected: string): boolean {
  const a = Buffer.from(presented);
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
}

/** The token from `Authorization: Bearer <token>`, if any. */
export function bearerToken(header: string | undefined): string | null {
  if (!header) return null;
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
  return match?.[1] ?? null;
}

const REALM = 'Bearer realm="consoled"';
/** A valid token that does not grant the call (a viewer token on an admin route). */
export const INSUFFICIENT_SCOPE = `${REALM}, error="insufficient_scope"`;

/**
 * The `WWW-Authenticate` challenge for an error (RFC 6750 section 3): every 401 gets
 * one, with `error="invalid_token"` when a token was presented and refused.
 */
export function authChallenge(code: ErrorCode, httpStatus: number): string | undefined {
  if (code === 'UNAUTHORIZED') return REALM;
  if (httpStatus === 401) return `${REALM}, error="invalid_token"`;
  return undefined;
}
