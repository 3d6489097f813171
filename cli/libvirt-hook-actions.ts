/**
 * What the libvirt hook does for the operations it handles (cli/libvirt-hook.ts, README
 * "libvirt"): loaded only for those, so that every other event costs Node's start alone.
 */
import { existsSync } from 'node:fs';
import { rm, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { type Config, loadConfig, validateConfig } from '../sidecar/config.js';
import { libvirtSpoolDir } from '../sidecar/libvirt/libvirt-config.js';
import {
  ensureSpoolDir,
  removeSpoolEntries,
  type SpoolEntry,
  type SpoolOwner,
  writeSpoolEntry,
} from '../sidecar/libvirt/spool-entry.js';
import { type LibvirtDomain, parseDomainXml } from './libvirt-domain-xml.js';
import { adminTokenOf, type HookApi, hookApi } from './libvirt-hook-api.js';
import { serialGuests } from './libvirt-serials.js';
import { grantPtyAccess, lookupUser } from './pty-access.js';

const DEFAULT_CONFIG = '/etc/consoled/consoled.yaml';

let say: (message: string) => void = () => undefined;

interface Delivery {
  readonly api: HookApi | null;
  readonly config: Readonly<Config>;
  readonly spoolDir: string | null;
  readonly owner: SpoolOwner | null;
}

/**
 * Spools `entry`, sends it, and removes it (with the same guest's older entries) once
 * the daemon decided it: any answer but none at all or a 5xx.
 */
async function deliver(d: Delivery, entry: SpoolEntry): Promise<void> {
  let spooled: string | null = null;
  if (d.spoolDir) {
    try {
      spooled = await writeSpoolEntry(d.spoolDir, entry, d.owner);
    } catch (err) {
      say(`cannot spool the ${entry.event} of ${entry.guest}: ${(err as Error).message}`);
    }
  }
  if (!d.api) return;
  const { connectWaitMs, requestTimeoutMs } = d.config.libvirt;
  const path = `/v1/guests/${encodeURIComponent(entry.guest)}`;
  const answer =
    entry.event === 'attach'
      ? await d.api.call(
          'PUT',
          `${path}?waitConnectedMs=${connectWaitMs}`,
          entry.spec,
          requestTimeoutMs + connectWaitMs,
        )
      : await d.api.call('DELETE', path, undefined, requestTimeoutMs);
  const decided = answer.status !== 0 && answer.status < 500;
  const done =
    answer.status === 200 || answer.status === 201 || (entry.event === 'detach' && answer.status === 404);
  if (!decided) {
    say(
      `${entry.event} of ${entry.guest} not delivered (${answer.error ?? `HTTP ${answer.status}`}); ` +
        (spooled ? 'the daemon replays it at its start' : 'and not spooled either'),
    );
    return;
  }
  if (!done) say(`${entry.event} of ${entry.guest} refused: HTTP ${answer.status} ${answer.body.trim()}`);
  else if (entry.event === 'attach') {
    try {
      const state = (JSON.parse(answer.body) as { state?: string }).state;
      if (state !== 'connected')
        say(`${entry.guest} attached; its source is ${state} after ${connectWaitMs} ms`);
    } catch {
      // the status is only for this message
    }
  }
  if (spooled && d.spoolDir) await removeSpoolEntries(d.spoolDir, entry.guest, basename(spooled));
}

async function act(operation: string, domain: LibvirtDomain, d: Delivery): Promise<void> {
  const guests = serialGuests(domain);
  const at = new Date().toISOString();
  const base = { version: 1, domain: domain.name, operation, at } as const;
  // Set by `migrate`, read by `started`: the domain arrives by a live migration.
  const incomingMark = d.spoolDir ? join(d.spoolDir, `incoming-${domain.uuid}`) : null;
  const entries: SpoolEntry[] = [];
  switch (operation) {
    case 'migrate': {
      if (incomingMark) await writeFile(incomingMark, `${at}\n`, { mode: 0o600 });
      for (const g of guests) {
        // A pty's path is the source host's; the destination's is known at `started`.
        if (g.source && g.source.type !== 'pty')
          entries.push({ ...base, event: 'attach', guest: g.id, spec: { source: g.source, incoming: true } });
      }
      break;
    }
    case 'started':
    case 'reconnect': {
      const incoming = incomingMark !== null && existsSync(incomingMark);
      for (const g of guests) {
        if (!g.source) continue;
        if (g.source.type === 'pty') {
          try {
            if (!d.owner) throw new Error(`no user ${d.config.libvirt.consoledUser}`);
            await grantPtyAccess(g.source.path, d.owner.gid);
          } catch (err) {
            say(
              `cannot give ${d.config.libvirt.consoledUser} access to ${g.source.path}: ${(err as Error).message}`,
            );
          }
        }
        entries.push({
          ...base,
          event: 'attach',
          guest: g.id,
          spec: incoming ? { source: g.source, incoming: true } : { source: g.source },
        });
      }
      break;
    }
    case 'release': {
      if (incomingMark) await rm(incomingMark, { force: true });
      for (const g of guests) entries.push({ ...base, event: 'detach', guest: g.id });
      break;
    }
  }
  for (const g of guests) if (g.skipped && operation !== 'release') say(`${g.id} not captured: ${g.skipped}`);
  await Promise.all(entries.map((entry) => deliver(d, entry)));
}

/**
 * Acts on one of the hook's operations (`started`, `migrate`, `release`), `xml` being the
 * domain XML libvirt gave; `report` takes one line for stderr. Never writes to stdout.
 */
export async function runHookOperation(
  operation: string,
  xml: string,
  report: (message: string) => void,
): Promise<void> {
  say = report;
  const configPath = process.env['CONSOLED_CONFIG'] ?? DEFAULT_CONFIG;
  const config = existsSync(configPath) ? await loadConfig(configPath) : validateConfig({});
  const domain = parseDomainXml(xml);
  // Never longer than its own bounds: libvirt waits for the hook.
  const { connectWaitMs, requestTimeoutMs } = config.libvirt;
  setTimeout(
    () => {
      say('gave up waiting for the daemon');
      process.exit(0);
    },
    connectWaitMs + requestTimeoutMs + 3000,
  ).unref();
  const owner = await lookupUser(config.libvirt.consoledUser);
  let spoolDir: string | null = libvirtSpoolDir(config);
  try {
    await ensureSpoolDir(spoolDir, owner);
  } catch (err) {
    say(`spool ${spoolDir} unusable: ${(err as Error).message}`);
    spoolDir = null;
  }
  let api: HookApi | null = null;
  try {
    api = hookApi(config, await adminTokenOf(config));
  } catch (err) {
    say(`no admin token (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}): spooling only`);
  }
  await act(operation, domain, { api, config, spoolDir, owner });
}
