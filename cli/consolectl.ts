#!/usr/bin/env node
/**
 * consolectl: the operator's client of a consoled daemon.
 *   consolectl [--url URL] [--token T | --token-file F] COMMAND ...
 *   logs ID [--tail N | --lines N | --start O] [--limit N] [--previous | --boot N|current|all] [--scope S] [-f] [--raw]
 *   status [ID] | hosts | attach ID --source JSON [--incoming] | detach ID | boot ID | upgrade
 */
import { parseArgs } from 'node:util';
import { ConsoledError } from '../common/errors.js';
import { assertGuestId } from '../common/guest-id.js';
import { parseLogQuery } from '../sidecar/http/log-query-params.js';
import { type ApiTarget, apiRequest, resolveApiTarget } from './api-client.js';
import { extraCommands } from './extra-commands.js';
import { type RedisTarget, redisLogs, redisMarkers, wantsRedis } from './redis-logs.js';
import { targetFromConfig } from './reload-command.js';
import { TerminalFilter } from './terminal-filter.js';

const USAGE = `usage: consolectl [--url URL] [--token T | --token-file F] COMMAND
  logs ID [--tail N | --lines N | --start O] [--limit N] [--previous | --boot N|current|all] [--scope local|cluster|auto] [-f]
       [--raw]    on a terminal, control sequences other than colour are shown escaped (\\x1b); --raw writes the bytes as they are
       [--redis URL | --sentinel H:P[,H:P] --master NAME | --cluster H:P[,H:P]] [--redis-user U] [--redis-password P]
       [--redis-tls-ca FILE] [--prefix P]    read the shared Redis stream directly, no sidecar needed
  markers ID [--start O] [--end O] [--scope local|cluster|auto] [the Redis options of logs]
                         where consoled's own markers sit (guest output that looks like one is not listed)
  status [ID]            one guest's status, or all guests
  hosts                  the hosts of the host registry and when each was last seen (GET /v1/hosts)
  attach ID --source JSON [--incoming]
  detach ID
  boot ID                mark a new boot
  upgrade [--config FILE]  hand the running daemon over to the installed build, losing nothing;
                         waits for the result (exit status 1 with UPGRADE_FAILED: the old one serves on)
${Object.values(extraCommands)
  .map((c) => `  ${c.usage}`)
  .join('\n')}
`;

const REDIS_OPTIONS = {
  redis: { type: 'string' },
  sentinel: { type: 'string' },
  master: { type: 'string' },
  cluster: { type: 'string' },
  'redis-user': { type: 'string' },
  'redis-password': { type: 'string' },
  'redis-tls-ca': { type: 'string' },
  prefix: { type: 'string' },
} as const;

async function writeStdout(chunk: Uint8Array): Promise<void> {
  if (!process.stdout.write(chunk)) await new Promise((r) => process.stdout.once('drain', r));
}

async function logs(target: ApiTarget, args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      tail: { type: 'string' },
      lines: { type: 'string' },
      start: { type: 'string' },
      limit: { type: 'string' },
      previous: { type: 'boolean' },
      boot: { type: 'string' },
      scope: { type: 'string' },
      follow: { type: 'boolean', short: 'f' },
      raw: { type: 'boolean' },
      ...REDIS_OPTIONS,
    },
  });
  const id = assertGuestId(positionals[0]);
  const q = new URLSearchParams();
  for (const key of ['tail', 'lines', 'start', 'limit', 'scope'] as const) {
    const v = values[key];
    if (v !== undefined) q.set(key, v);
  }
  if (values.previous) q.set('boot', 'previous');
  else if (values.boot) q.set('boot', values.boot);
  if (values.follow) q.set('follow', '1');
  const redis = redisTarget(values);
  // A terminal obeys escape sequences the guest printed: show them escaped, keep colour.
  const filter = process.stdout.isTTY && !values.raw ? new TerminalFilter() : null;
  const write = filter ? (chunk: Uint8Array) => writeStdout(filter.push(chunk)) : writeStdout;
  if (wantsRedis(redis)) {
    const stop = new AbortController();
    process.once('SIGINT', () => stop.abort());
    process.once('SIGTERM', () => stop.abort());
    await redisLogs(id, parseLogQuery(q), redis, write, stop.signal);
  } else {
    const res = await apiRequest(target, 'GET', `/v1/guests/${encodeURIComponent(id)}/log?${q}`);
    if (!res.body) return;
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) await write(chunk);
  }
  if (filter) await writeStdout(filter.end());
}

/** The Redis a command reads directly, from its options (and the environment for credentials). */
function redisTarget(values: Partial<Record<keyof typeof REDIS_OPTIONS, string | undefined>>): RedisTarget {
  return {
    redis: values.redis,
    sentinel: values.sentinel,
    master: values.master,
    cluster: values.cluster,
    user: values['redis-user'] ?? process.env['CONSOLED_REDIS_USER'],
    password: values['redis-password'] ?? process.env['CONSOLED_REDIS_PASSWORD'],
    tlsCa: values['redis-tls-ca'],
    prefix: values.prefix,
  };
}

async function markers(target: ApiTarget, args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      start: { type: 'string' },
      end: { type: 'string' },
      scope: { type: 'string' },
      ...REDIS_OPTIONS,
    },
  });
  const id = assertGuestId(positionals[0]);
  const redis = redisTarget(values);
  if (wantsRedis(redis)) {
    const start = Number(values.start ?? 0);
    const end = values.end === undefined ? Number.POSITIVE_INFINITY : Number(values.end);
    if (!Number.isSafeInteger(start) || start < 0 || !(end >= start))
      throw new ConsoledError('BAD_PARAMETER', '--start and --end must be offsets, end not before start');
    const list = await redisMarkers(id, redis, start, end);
    process.stdout.write(`${JSON.stringify({ id, scope: 'cluster', markers: list }, null, 2)}\n`);
    return;
  }
  const q = new URLSearchParams();
  for (const key of ['start', 'end', 'scope'] as const) {
    const v = values[key];
    if (v !== undefined) q.set(key, v);
  }
  await printJson(await apiRequest(target, 'GET', `/v1/guests/${encodeURIComponent(id)}/markers?${q}`));
}

async function printJson(res: Response): Promise<void> {
  process.stdout.write(`${JSON.stringify(await res.json(), null, 2)}\n`);
}

async function main(argv: string[]): Promise<void> {
  const { values, positionals, tokens } = parseArgs({
    args: argv,
    allowPositionals: true,
    strict: false,
    tokens: true,
    options: {
      url: { type: 'string' },
      token: { type: 'string' },
      'token-file': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  const command = positionals[0];
  if (values.help || !command) {
    process.stdout.write(USAGE);
    if (!command && !values.help) process.exitCode = 2;
    return;
  }
  // Everything after the command word belongs to the command.
  const commandToken = tokens.find((t) => t.kind === 'positional');
  const rest = argv.slice((commandToken?.index ?? 0) + 1);
  const target = resolveApiTarget({
    url: values.url as string | undefined,
    token: values.token as string | undefined,
    tokenFile: values['token-file'] as string | undefined,
  });
  switch (command) {
    case 'logs':
      return logs(target, rest);
    case 'markers':
      return markers(target, rest);
    case 'status': {
      const id = rest[0];
      return printJson(
        await apiRequest(
          target,
          'GET',
          id ? `/v1/guests/${encodeURIComponent(assertGuestId(id))}` : '/v1/guests',
        ),
      );
    }
    case 'hosts':
      return printJson(await apiRequest(target, 'GET', '/v1/hosts'));
    case 'attach': {
      const { values: v, positionals: p } = parseArgs({
        args: rest,
        allowPositionals: true,
        options: { source: { type: 'string' }, incoming: { type: 'boolean' } },
      });
      const id = assertGuestId(p[0]);
      if (!v.source) throw new ConsoledError('BAD_SOURCE', 'attach needs --source JSON');
      let source: unknown;
      try {
        source = JSON.parse(v.source);
      } catch {
        throw new ConsoledError('BAD_JSON', '--source is not valid JSON');
      }
      return printJson(
        await apiRequest(target, 'PUT', `/v1/guests/${encodeURIComponent(id)}`, {
          source,
          ...(v.incoming ? { incoming: true } : {}),
        }),
      );
    }
    case 'detach':
      return printJson(
        await apiRequest(target, 'DELETE', `/v1/guests/${encodeURIComponent(assertGuestId(rest[0]))}`),
      );
    case 'boot':
      return printJson(
        await apiRequest(target, 'POST', `/v1/guests/${encodeURIComponent(assertGuestId(rest[0]))}/boots`),
      );
    case 'upgrade': {
      // Returns once the successor took over, or the old process took everything back.
      // With --config, the daemon's address and token come from its file (the package's postinst).
      const { values } = parseArgs({ args: rest, options: { config: { type: 'string', short: 'c' } } });
      const to = values.config ? await targetFromConfig(values.config) : target;
      return printJson(await apiRequest(to, 'POST', '/v1/upgrade'));
    }
    default: {
      const extra = extraCommands[command];
      if (extra) return extra.run(target, rest);
      throw new ConsoledError('BAD_REQUEST', `unknown command ${command}\n${USAGE}`);
    }
  }
}

main(process.argv.slice(2)).catch((err: unknown) => {
  if (err instanceof ConsoledError) process.stderr.write(`consolectl: ${err.code}: ${err.message}\n`);
  else process.stderr.write(`consolectl: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
