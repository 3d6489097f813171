/**
 * `advertise:` in the configuration: the URLs other hosts and browsers should use to
 * reach this host, which it publishes in the host registry and `GET /v1/hosts` lists
 * (docs/design.md "Host registry"). Without them the URLs are derived from the address
 * the API listens on (`http://<listen.host>:<port>`, a wildcard address replaced by the
 * machine's host name): right only for a single host, or hosts that reach each other
 * directly at those addresses; behind a reverse proxy or NAT, set them.
 */
import { hostname } from 'node:os';
import { z } from 'zod';

const WILDCARD_ADDRESSES = new Set(['0.0.0.0', '[::]']);

/** An absolute http(s) URL with no credentials, query or fragment. */
function isBaseUrl(text: string): boolean {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return false;
  }
  return (
    (url.protocol === 'http:' || url.protocol === 'https:') &&
    url.username === '' &&
    url.password === '' &&
    url.search === '' &&
    url.hash === '' &&
    !text.includes('?') &&
    !text.includes('#')
  );
}

const baseUrl = z
  .string()
  .refine(isBaseUrl, 'must be an absolute http:// or https:// URL without credentials, query or fragment')
  // `<base>/v1/hosts` is how callers join it: no trailing slash.
  .transform((url) => url.replace(/\/+$/, ''));

export const advertiseConfigSchema = z
  .object({
    /** Base URL of this host's HTTP API. @default derived from `listen` */
    apiUrl: baseUrl.optional(),
    /** Base URL browsers open this host's consoles under. @default the TLS listener's, else `apiUrl` */
    consoleUrl: baseUrl.optional(),
  })
  .strict()
  .prefault({});

export type AdvertiseConfig = z.infer<typeof advertiseConfigSchema>;

export interface AdvertisedUrls {
  readonly apiUrl: string;
  readonly consoleUrl: string;
}

/**
 * The URLs this host advertises: the configured ones, else derived from `listening`,
 * the URL the API server is bound to (`http://127.0.0.1:7070`; `unix:<path>` on a
 * unix socket, which reaches nothing over the network: set `advertise` then).
 */
export function advertisedUrls(
  config: AdvertiseConfig,
  listening: string,
  /** The TLS listener's URL (`listen.tls`), or null: browsers are sent there by default. */
  tlsListening: string | null = null,
): AdvertisedUrls {
  const derived = reachableUrl(listening);
  const apiUrl = config.apiUrl ?? derived;
  return {
    apiUrl,
    consoleUrl: config.consoleUrl ?? (tlsListening ? reachableUrl(tlsListening) : apiUrl),
  };
}

/** `listening` with a wildcard address replaced by the hostname, without a trailing slash. */
function reachableUrl(listening: string): string {
  try {
    const url = new URL(listening);
    if (WILDCARD_ADDRESSES.has(url.hostname)) url.hostname = hostname();
    return url.href.replace(/\/+$/, '');
  } catch {
    return listening; // not a URL (the API is not listening yet): left as it is
  }
}
