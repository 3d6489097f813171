/**
 * The daemon's Redis connection: its subscriber across a reconnect, and a close that
 * meets the subscriber just as it comes back. Real redis-server processes.
 */
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../common/logger.js';
import { RedisConnection } from '../../sidecar/replication/redis-connection.js';
import { redisConfigSchema } from '../../sidecar/replication/replication-config.js';
import { startRedis, stopAllRedis } from '../support/redis-server.js';
import { sleep, waitFor } from '../support/wait.js';

const stops: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const stop of stops.splice(0).reverse()) await stop();
});
afterAll(stopAllRedis);

/** Rejections nobody handled while `run` ran (vitest would report them after the test). */
async function unhandledDuring(run: () => Promise<void>): Promise<unknown[]> {
  const seen: unknown[] = [];
  const onRejection = (reason: unknown): void => {
    seen.push(reason);
  };
  process.on('unhandledRejection', onRejection);
  try {
    await run();
    await sleep(200); // rejections are reported after the microtasks that could handle them
  } finally {
    process.off('unhandledRejection', onRejection);
  }
  return seen;
}

describe('RedisConnection', () => {
  it('subscribes again after Redis restarts, and a close as it does leaves no rejection unhandled', async () => {
    const redis = await startRedis();
    const config = redisConfigSchema.parse({
      url: redis.url,
      reconnect: { initialDelayMs: 20, maxDelayMs: 100 },
    });
    const connection = new RedisConnection(config, 'sub', silentLogger());
    stops.push(() => connection.close());
    const received: string[] = [];
    await connection.subscribe('revocations', (message) => received.push(message));
    const publisher = redis.client();
    await publisher.publish('revocations', 'before');
    await waitFor('the first message', () => received.includes('before'));

    // A restart: the subscriber comes back and listens on the channel again.
    let resubscribed = 0;
    connection.on('resubscribed', () => resubscribed++);
    await redis.restart();
    await waitFor('the subscriber to come back', () => resubscribed === 1, { timeoutMs: 10_000 });
    await waitFor('a message after the restart', async () => {
      await publisher.publish('revocations', 'after');
      return received.includes('after');
    });

    // Another restart, and Redis frozen the moment the subscriber is back, before it
    // answers the subscriptions sent then: the close's QUIT gets no answer, the close
    // disconnects after its wait, and those subscriptions fail with the closed
    // connection, handled.
    const unhandled = await unhandledDuring(async () => {
      await redis.restart();
      const pid = redis.pid!;
      await new Promise<void>((resolve) =>
        connection.once('resubscribed', () => {
          process.kill(pid, 'SIGSTOP');
          resolve(connection.close().finally(() => process.kill(pid, 'SIGCONT')));
        }),
      );
    });
    expect(unhandled).toEqual([]);
    expect(connection.state).toBe('closed');
  });
});
