/**
 * `consolectl logs ID --redis URL | --sentinel H:P[,H:P] --master NAME | --cluster H:P[,H:P]`:
 * reads a guest's log straight from the shared stream, with no sidecar on this host,
 * with the same query semantics as `GET /v1/guests/{id}/log` (the same LogView and
 * `resolveLogRange`), and `-f` following across reboots and migrations.
 */
import { ConsoledError } from '../common/errors.js';
import { createRedisClient, duplicateForBlocking } from '../sidecar/replication/redis-connection.js';
import { redisConfigSchema } from '../sidecar/replication/replication-config.js';
import { type LogQuery, resolveLogRange } from '../store/log-query.js';
import type { MarkerRecord } from '../store/marker-index.js';
import { SharedLog } from '../store/replication/shared-log.js';
import { StreamLogView } from '../store/replication/stream-log-view.js';

/** One read from Redis returns at most this much; the output is written in such chunks. */
const CHUNK_BYTES = 1024 * 1024;

export interface RedisTarget {
  readonly redis?: string | undefined;
  readonly sentinel?: string | undefined;
  readonly master?: string | undefined;
  readonly cluster?: string | undefined;
  readonly password?: string | undefined;
  readonly user?: string | undefined;
  readonly tlsCa?: string | undefined;
  readonly prefix?: string | undefined;
}

/** Whether the options name a Redis to read from. */
export function wantsRedis(t: RedisTarget): boolean {
  return t.redis !== undefined || t.sentinel !== undefined || t.cluster !== undefined;
}

function endpoints(list: string, flag: string): Array<{ host: string; port: number }> {
  return list.split(',').map((item) => {
    const m = /^(.+):(\d+)$/.exec(item.trim());
    if (!m) throw new ConsoledError('BAD_PARAMETER', `${flag}: ${JSON.stringify(item)} is not HOST:PORT`);
    return { host: m[1]!, port: Number(m[2]) };
  });
}

/**
 * Writes the bytes `query` selects to `write`; with `query.follow`, keeps writing new
 * bytes until `signal` aborts. Reports the offsets served through `onRange`.
 */
export async function redisLogs(
  id: string,
  query: LogQuery,
  target: RedisTarget,
  write: (chunk: Buffer) => Promise<void>,
  signal: AbortSignal,
  onRange: (range: { start: number; next: number }) => void = () => {},
): Promise<void> {
  const { view, close } = openStreamView(id, target);
  try {
    if (!(await view.exists()))
      throw new ConsoledError('GUEST_NOT_FOUND', `no stream for guest ${id} in Redis`);
    const range = await resolveLogRange(view, query);
    onRange({ start: range.start, next: range.end });
    let pos = range.start;
    const copy = async (end: number): Promise<void> => {
      while (pos < end && !signal.aborted) {
        const upTo = Math.min(end, pos + CHUNK_BYTES);
        await write(await view.read(pos, upTo));
        pos = upTo;
      }
    };
    await copy(range.end);
    while (query.follow && !signal.aborted) {
      await view.waitForData(pos, signal);
      if (signal.aborted) break;
      const { oldest, next } = await view.bounds();
      pos = Math.max(pos, oldest); // trimmed while we were away: the jump shows in the offsets
      await copy(next);
    }
  } finally {
    close();
  }
}

/** `consolectl markers ID --redis ...`: consoled's markers in `[start, end)`, from the stream's marker set. */
export async function redisMarkers(
  id: string,
  target: RedisTarget,
  start: number,
  end: number,
): Promise<MarkerRecord[]> {
  const { view, close } = openStreamView(id, target);
  try {
    if (!(await view.exists()))
      throw new ConsoledError('GUEST_NOT_FOUND', `no stream for guest ${id} in Redis`);
    return await view.markers(start, end);
  } finally {
    close();
  }
}

/** A client to the Redis `target` names and a view of guest `id`'s stream through it. */
function openStreamView(id: string, target: RedisTarget): { view: StreamLogView; close: () => void } {
  const parsed = redisConfigSchema.safeParse({
    ...(target.redis ? { url: target.redis } : {}),
    ...(target.sentinel ? { sentinels: endpoints(target.sentinel, '--sentinel'), name: target.master } : {}),
    ...(target.cluster ? { cluster: { nodes: endpoints(target.cluster, '--cluster') } } : {}),
    ...(target.password ? { password: target.password } : {}),
    ...(target.user ? { username: target.user } : {}),
    ...(target.tlsCa ? { tls: { caFile: target.tlsCa } } : {}),
    ...(target.prefix !== undefined ? { keyPrefix: target.prefix } : {}),
  });
  if (!parsed.success) {
    throw new ConsoledError(
      'BAD_PARAMETER',
      parsed.error.issues.map((i) => `${i.path.join('.') || 'redis'}: ${i.message}`).join('; '),
    );
  }
  const config = parsed.data;
  const client = createRedisClient(config, { queueUntilConnected: true });
  client.on('error', () => {}); // surfaced by the commands that fail
  const view = new StreamLogView(new SharedLog(client, { prefix: config.keyPrefix }), client, id, {
    prefix: config.keyPrefix,
    blockMs: config.followBlockMs,
    duplicate: () => duplicateForBlocking(client, config),
  });
  return {
    view,
    close: () => {
      view.close();
      client.disconnect();
    },
  };
}
