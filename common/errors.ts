/**
 * Every failure consoled reports has one stable code. The HTTP status and the
 * WebSocket close code travel with it, so callers never map wording to status.
 * Tests assert on `code`; `test/unit/error-codes.test.ts` checks each one is documented
 * in README.md.
 */
export const ERROR_CODES = {
  BAD_REQUEST: { http: 400, ws: 1008, text: 'The request is malformed.' },
  BAD_JSON: { http: 400, ws: 1007, text: 'The body or frame is not valid JSON.' },
  BAD_GUEST_ID: {
    http: 400,
    ws: 1008,
    text: 'The guest id does not match ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$.',
  },
  BAD_SOURCE: { http: 400, ws: 1008, text: 'The source description is invalid or of an unknown type.' },
  BAD_PARAMETER: { http: 400, ws: 1008, text: 'A query parameter is out of range or malformed.' },
  BAD_CONFIG: { http: 500, ws: 1011, text: 'The configuration file is invalid.' },
  RELOAD_REFUSED: {
    http: 409,
    ws: 1008,
    text: 'The reloaded configuration changes a field that needs a restart, or there is no file to reload.',
  },
  UNAUTHORIZED: { http: 401, ws: 4401, text: 'No credentials were given.' },
  FORBIDDEN: { http: 403, ws: 4403, text: 'The credentials do not allow this call.' },
  TOKEN_INVALID: { http: 401, ws: 4401, text: 'The token is malformed or its signature does not verify.' },
  TOKEN_EXPIRED: { http: 401, ws: 4402, text: 'The token has expired.' },
  TOKEN_WRONG_GUEST: { http: 403, ws: 4403, text: 'The token was issued for another guest.' },
  TOKEN_WRONG_MODE: { http: 403, ws: 4404, text: 'The token does not grant the requested mode.' },
  TOKEN_REUSED: { http: 401, ws: 4405, text: 'The single-use token was already used.' },
  TOKEN_REVOKED: {
    http: 401,
    ws: 4407,
    text: 'The token, or the chain it belongs to, was revoked (DELETE /v1/tokens/{jti}).',
  },
  TOKEN_NOT_RENEWABLE: {
    http: 403,
    ws: 4412,
    text: 'The token cannot be renewed: it was issued without renewableFor, or its renewal time has passed.',
  },
  AUTH_TIMEOUT: { http: 408, ws: 4408, text: 'No auth frame arrived in time.' },
  ORIGIN_FORBIDDEN: { http: 403, ws: 4406, text: 'The Origin header is not in the allowlist.' },
  NOT_FOUND: { http: 404, ws: 4404, text: 'No such route.' },
  GUEST_NOT_FOUND: { http: 404, ws: 4410, text: 'The guest is not attached here and has no log here.' },
  METHOD_NOT_ALLOWED: { http: 405, ws: 1008, text: 'The method is not allowed on this route.' },
  GUEST_DECLARED: {
    http: 409,
    ws: 1008,
    text: 'The guest is declared in the configuration file and cannot be changed through the API.',
  },
  GUEST_ATTACHED: {
    http: 409,
    ws: 1008,
    text: 'The guest is attached here: detach it before purging its history.',
  },
  STREAM_OWNED: {
    http: 409,
    ws: 1008,
    text: "A host owns the guest's Redis stream (attached, handing off or sealed there): its history cannot be purged.",
  },
  TOO_MANY_GUESTS: { http: 429, ws: 1013, text: 'The host-wide guest limit is reached.' },
  TOO_MANY_VIEWERS: { http: 429, ws: 1013, text: 'The viewer limit is reached.' },
  PAYLOAD_TOO_LARGE: { http: 413, ws: 1009, text: 'The body or frame is larger than allowed.' },
  NOT_WRITER: { http: 409, ws: 1008, text: 'Only the writer may do this.' },
  TAKEOVER_DISABLED: { http: 409, ws: 1008, text: 'Takeover is disabled for this guest.' },
  UNSUPPORTED: { http: 409, ws: 1008, text: 'The source does not support this operation.' },
  RANGE_NOT_AVAILABLE: { http: 416, ws: 1008, text: 'The requested boot or range is not held.' },
  SHUTTING_DOWN: { http: 503, ws: 1001, text: 'The daemon is shutting down.' },
  UPGRADING: {
    http: 503,
    ws: 1012,
    text: 'The daemon is handing over to its successor (an upgrade); retry in a moment.',
  },
  UPGRADE_FAILED: {
    http: 500,
    ws: 1011,
    text: 'The successor did not start or become ready; the running daemon goes on serving.',
  },
  STORE_FAILED: { http: 500, ws: 1011, text: 'The local store failed.' },
  STATE_VERSION: {
    http: 500,
    ws: 1011,
    text: 'A state file was written in a version this build does not read (a newer build wrote it): it is left as it is.',
  },
  UNSAFE_PATH: {
    http: 500,
    ws: 1011,
    text: 'A path in the state directory is a symbolic link, not owned by the daemon user, or writable by group or others.',
  },
  REPLICATION_UNAVAILABLE: {
    http: 503,
    ws: 1011,
    text: 'Cluster scope was asked for but no Redis is configured or reachable.',
  },
  FENCED: { http: 409, ws: 1008, text: 'This host no longer owns the guest (stale fencing epoch).' },
  OFFSET_MISMATCH: {
    http: 409,
    ws: 1008,
    text: 'The append does not continue the stream at its last offset.',
  },
  HANDOFF_STATE: { http: 409, ws: 1008, text: 'The guest is not in a state that allows this handoff step.' },
  INTERNAL: { http: 500, ws: 1011, text: 'An unexpected internal error.' },
  VIEWER_TOO_SLOW: {
    http: 429,
    ws: 4429,
    text: 'The console viewer stayed behind the guest output for too long.',
  },
  IDLE_TIMEOUT: { http: 408, ws: 4409, text: 'The console connection sent nothing for too long.' },
  LOCK_HELD: { http: 409, ws: 1008, text: 'Another console viewer holds the writer lock.' },
  GUEST_DETACHED: { http: 410, ws: 4411, text: 'The guest was detached while the console was open.' },
  GUEST_MOVED: {
    http: 409,
    ws: 4413,
    text: 'The guest was migrated to another host: reconnect (to this host or the new one) from the offset in the moved message.',
  },
  GUEST_ARRIVING: {
    http: 503,
    ws: 1013,
    text: 'The guest is being migrated to this host and its log is not numbered yet; retry in a moment.',
  },
  HOST_AUTH_FAILED: {
    http: 401,
    ws: 4401,
    text: 'The host credential of a proxied console connection is missing, stale, replayed or does not verify.',
  },
  UPSTREAM_UNAVAILABLE: {
    http: 502,
    ws: 1014,
    text: 'The host that runs the guest could not be reached to proxy its console.',
  },
  TOO_MANY_CONNECTIONS: {
    http: 503,
    ws: 1013,
    text: 'A host-wide connection limit (console or HTTP) is reached.',
  },
  TOO_MANY_PENDING: {
    http: 429,
    ws: 1013,
    text: 'Too many console connections are waiting to authenticate, from this address or in all.',
  },
  TOO_MANY_FOLLOWERS: { http: 429, ws: 1013, text: 'The limit of follow=1 log readers is reached.' },
  UNSUPPORTED_MEDIA_TYPE: {
    http: 415,
    ws: 1003,
    text: 'The body must be sent as Content-Type: application/json.',
  },
  REQUEST_TIMEOUT: { http: 408, ws: 1008, text: 'The request or its body did not arrive in time.' },
} as const satisfies Record<string, { http: number; ws: number; text: string }>;

export type ErrorCode = keyof typeof ERROR_CODES;

/** The root of every error consoled raises on purpose. */
export class ConsoledError extends Error {
  readonly code: ErrorCode;
  readonly httpStatus: number;
  readonly wsCloseCode: number;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message?: string, details?: Record<string, unknown>) {
    super(message ?? ERROR_CODES[code].text);
    this.name = 'ConsoledError';
    this.code = code;
    this.httpStatus = ERROR_CODES[code].http;
    this.wsCloseCode = ERROR_CODES[code].ws;
    this.details = details;
  }

  toJSON(): { error: { code: ErrorCode; message: string; details?: Record<string, unknown> } } {
    return {
      error: { code: this.code, message: this.message, ...(this.details ? { details: this.details } : {}) },
    };
  }
}

/** Wraps anything thrown into a ConsoledError, keeping ours as they are. */
export function asConsoledError(err: unknown): ConsoledError {
  if (err instanceof ConsoledError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new ConsoledError('INTERNAL', message);
}
