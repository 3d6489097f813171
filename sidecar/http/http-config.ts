/**
 * The `http:` section of the configuration (timeouts and connection limits of the
 * API server) and `trustedProxies`. Every option has its unit in its name and a default.
 */
import { isIP } from 'node:net';
import { z } from 'zod';

export const HTTP_DEFAULTS = {
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 30_000,
  bodyTimeoutMs: 10_000,
  keepAliveTimeoutMs: 5_000,
  maxConnections: 200,
  reservedConnections: 16,
  maxFollowers: 64,
} as const;

/** `http:` in the config file. */
export const httpConfigSchema = z
  .object({
    /** Time for a request's headers to arrive in full. @default 10000 */
    headersTimeoutMs: z.number().int().min(100).default(HTTP_DEFAULTS.headersTimeoutMs),
    /**
     * Time for a whole request (headers and body) to arrive; Node answers 408 and closes
     * after it. Responses are not bounded by it: `follow=1` readers stay. @default 30000
     */
    requestTimeoutMs: z.number().int().min(100).default(HTTP_DEFAULTS.requestTimeoutMs),
    /** Time for a JSON body to arrive once its handler asks for it (408 REQUEST_TIMEOUT). @default 10000 */
    bodyTimeoutMs: z.number().int().min(100).default(HTTP_DEFAULTS.bodyTimeoutMs),
    /** An idle keep-alive connection is closed after this long. @default 5000 */
    keepAliveTimeoutMs: z.number().int().min(100).default(HTTP_DEFAULTS.keepAliveTimeoutMs),
    /**
     * Open HTTP connections for ordinary requests (WebSocket consoles and `follow=1`
     * readers are counted under their own limits). @default 200
     */
    maxConnections: z.number().int().min(1).default(HTTP_DEFAULTS.maxConnections),
    /**
     * Further connections kept for `GET /healthz` and admin calls once `maxConnections`
     * are open; any other request on one is answered 503 TOO_MANY_CONNECTIONS. Beyond
     * both, a new connection is closed at once. @default 16
     */
    reservedConnections: z.number().int().min(1).default(HTTP_DEFAULTS.reservedConnections),
    /** `follow=1` log readers at once (429 TOO_MANY_FOLLOWERS). @default 64 */
    maxFollowers: z.number().int().min(1).default(HTTP_DEFAULTS.maxFollowers),
  })
  .strict()
  .prefault({});

export type HttpConfig = z.infer<typeof httpConfigSchema>;

/** An IP address or a CIDR block (`10.0.0.0/8`, `fd00::/8`). */
function isAddressOrCidr(entry: string): boolean {
  const [address, prefix, ...rest] = entry.split('/');
  if (rest.length > 0 || address === undefined) return false;
  const family = isIP(address);
  if (family === 0) return false;
  if (prefix === undefined) return true;
  if (!/^\d{1,3}$/.test(prefix)) return false;
  return Number(prefix) <= (family === 4 ? 32 : 128);
}

/** `trustedProxies`: addresses or CIDR blocks. @default [] */
export const trustedProxiesSchema = z
  .array(z.string().refine(isAddressOrCidr, { message: 'not an IP address or CIDR block (10.0.0.0/8, ::1)' }))
  .default([]);
