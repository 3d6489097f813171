/**
 * The libvirt QEMU hook (cli/libvirt-hook.ts) with a real libvirtd, real TCG domains
 * booting the test kernel and initramfs, and the built daemon (README "libvirt").
 * Each domain's serial port also has `<log file=…>`: virtlogd writes its own copy of
 * the same chardev, and consoled's capture, its markers taken out (by the marker
 * index), must equal virtlogd's file byte for byte.
 *
 * One scenario, in order: `virsh start` attaches; `destroy` detaches and `start` is
 * boot 2 in the same log; the domain undefined stays detached with its logs kept; a
 * transient domain started while consoled is down is attached once consoled is back
 * (the spool), and attached again by `reconnect` after libvirtd restarts; the `migrate` hook, driven with a real domain XML (no second libvirtd
 * here), attaches with `incoming: true` and prints nothing; a pty serial is captured by
 * a consoled running as an unprivileged user, through the group access the hook grants.
 *
 * The guests print nothing before init (`quiet loglevel=1`): libvirt runs `started`
 * once the CPUs run, so output in the few hundred ms before consoled connects would be
 * virtlogd's only (README "libvirt").
 */
import { execFile, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type DaemonHandle, DIST_DIR, readWholeLog, startDaemon, stopAllDaemons } from '../support/daemon.js';
import { freePort } from '../support/free-port.js';
import { buildInitramfs, GUEST_BANNER } from '../support/initramfs.js';
import {
  ensureLibvirt,
  installQemuHook,
  libvirtUnavailableReason,
  removeDomain,
  restartLibvirtd,
  virsh,
} from '../support/libvirt.js';
import { findCloudKernel, qemuAvailable } from '../support/qemu-guest.js';
import { removeTmpDirs, tmpDir } from '../support/tmp.js';
import { waitFor } from '../support/wait.js';

const run = promisify(execFile);
const HOOK_NAME = 'consoled-test';
const HOOK_JS = join(DIST_DIR, 'cli', 'libvirt-hook.js');
const UNPRIVILEGED_USER = 'consoled-lvtest';

interface Domain {
  readonly name: string;
  readonly uuid: string;
  readonly serialLog: string;
  readonly port: number | null;
}

let kernel = '';
let initrd = '';
const domains: Domain[] = [];
let removeHook: (() => Promise<void>) | null = null;

/** A TCG domain of the test guest in counter mode, its one serial a tcp or a pty chardev. */
async function newDomain(kind: 'tcp' | 'pty'): Promise<{ domain: Domain; xml: string }> {
  const uuid = randomUUID();
  const name = `consoled-test-${uuid.slice(0, 8)}`;
  const serialLog = join(tmpDir('virtlogd'), 'serial.log');
  const port = kind === 'tcp' ? await freePort() : null;
  const source = kind === 'tcp' ? `<source mode='bind' host='127.0.0.1' service='${port}'/>` : '';
  const xml = `<domain type='qemu'>
  <name>${name}</name>
  <uuid>${uuid}</uuid>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>${kernel}</kernel>
    <initrd>${initrd}</initrd>
    <cmdline>console=ttyS0 panic=-1 cryptomgr.notests quiet loglevel=1 consoled.mode=counter consoled.hz=20</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <serial type='${kind}'>
      ${source}
      <log file='${serialLog}' append='on'/>
      <target port='0'/>
    </serial>
  </devices>
</domain>
`;
  const domain = { name, uuid, serialLog, port };
  domains.push(domain);
  return { domain, xml };
}

async function writeXml(xml: string): Promise<string> {
  const path = join(tmpDir('domain'), 'domain.xml');
  const { writeFile } = await import('node:fs/promises');
  await writeFile(path, xml);
  return path;
}

/** The hook wrapper, as the Debian package installs it, pointed at `daemon`'s config. */
function hookScript(daemon: DaemonHandle): string {
  return `#!/bin/sh\nCONSOLED_CONFIG='${daemon.configPath}' exec '${process.execPath}' '${HOOK_JS}' "$@"\n`;
}

/** The guest's own bytes: the log with every marker the index lists cut out. */
async function guestBytes(daemon: DaemonHandle, id: string): Promise<Buffer> {
  const log = await readWholeLog(daemon, id);
  const { markers } = await daemon.json<{ markers: { offset: number; length: number }[] }>(
    'GET',
    `/v1/guests/${id}/markers?start=0`,
  );
  const parts: Buffer[] = [];
  let at = log.start;
  for (const m of markers) {
    parts.push(log.bytes.subarray(at - log.start, m.offset - log.start));
    at = m.offset + m.length;
  }
  parts.push(log.bytes.subarray(at - log.start));
  return Buffer.concat(parts);
}

async function status(
  daemon: DaemonHandle,
  id: string,
): Promise<{ code: number; body: Record<string, unknown> }> {
  const res = await daemon.api('GET', `/v1/guests/${id}`);
  return { code: res.status, body: (await res.json()) as Record<string, unknown> };
}

async function logText(daemon: DaemonHandle, id: string): Promise<string> {
  return (await readWholeLog(daemon, id)).bytes.toString('latin1');
}

/** Waits for consoled's capture to equal virtlogd's file (both keep growing until the domain stops). */
async function expectSameAsVirtlogd(daemon: DaemonHandle, domain: Domain): Promise<void> {
  const ours = await guestBytes(daemon, domain.uuid);
  const theirs = await readFile(domain.serialLog);
  expect(ours.length).toBeGreaterThan(0);
  expect(ours.toString('latin1')).toBe(theirs.toString('latin1'));
}

/** Runs the built hook as libvirt does, `xml` on stdin. */
function runHook(
  daemon: DaemonHandle,
  args: string[],
  xml: string,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [HOOK_JS, ...args], {
      env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', CONSOLED_CONFIG: daemon.configPath },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
    child.on('error', reject);
    child.on('exit', (code) => resolve({ code, stdout, stderr }));
    child.stdin.end(xml);
  });
}

async function unprivilegedUser(): Promise<{ uid: number; gid: number }> {
  const lookup = async () => {
    const { stdout } = await run('getent', ['passwd', UNPRIVILEGED_USER]);
    const fields = stdout.trim().split(':');
    return { uid: Number(fields[2]), gid: Number(fields[3]) };
  };
  try {
    return await lookup();
  } catch {
    await run('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', UNPRIVILEGED_USER]);
    return lookup();
  }
}

// Skipped, saying why, where libvirt or QEMU is missing or not root (`bash .ci/run` installs them).
const qemu = qemuAvailable();
const skipReason = libvirtUnavailableReason() ?? (qemu.ok ? null : (qemu.reason ?? 'QEMU is not available'));

describe.skipIf(skipReason !== null)(
  `the libvirt hook with a real libvirtd${skipReason ? ` (skipped: ${skipReason})` : ''}`,
  () => {
    let daemon: DaemonHandle;

    beforeAll(async () => {
      const found = findCloudKernel();
      if (!found)
        throw new Error('no /boot/vmlinuz-*-cloud-amd64 kernel (apt-get install linux-image-cloud-amd64)');
      kernel = found;
      initrd = await buildInitramfs();
      await ensureLibvirt();
      // The hook finds the daemon through its config: a fixed port, not port 0.
      daemon = await startDaemon({
        config: {
          listen: { host: '127.0.0.1', port: await freePort() },
          defaults: { rateLimit: { bytesPerSec: 0, burstBytes: 1 } },
        },
      });
      removeHook = await installQemuHook(HOOK_NAME, hookScript(daemon));
    }, 90_000);

    afterAll(async () => {
      for (const d of domains) await removeDomain(d.name);
      await removeHook?.();
      await stopAllDaemons();
      await removeTmpDirs();
    }, 60_000);

    let persistent: Domain;

    it('virsh start attaches the domain by its UUID and captures what virtlogd logs', async () => {
      const { domain, xml } = await newDomain('tcp');
      persistent = domain;
      await virsh(['define', await writeXml(xml)]);
      await virsh(['start', domain.name]);
      // The hook ran before virsh start returned, and returned once the source was connected.
      const attached = await status(daemon, domain.uuid);
      expect(attached.code).toBe(200);
      expect(attached.body['source']).toEqual({ type: 'tcp', host: '127.0.0.1', port: domain.port });
      expect(attached.body['state']).toBe('connected');
      await waitFor('the banner and counter lines in the log', async () =>
        /counter 5\r?\n/.test(await logText(daemon, domain.uuid)),
      );
    }, 60_000);

    it('virsh destroy detaches, virsh start attaches again into boot 2 of the same log', async () => {
      const domain = persistent;
      await virsh(['destroy', domain.name]);
      expect((await status(daemon, domain.uuid)).code).toBe(404);
      // Detached, the log is still served, and it equals virtlogd's.
      await expectSameAsVirtlogd(daemon, domain);
      const boot1End = (await readWholeLog(daemon, domain.uuid)).next;

      await virsh(['start', domain.name]);
      const again = await status(daemon, domain.uuid);
      expect(again.code).toBe(200);
      await waitFor('boot 2 to print its counter lines', async () => {
        const text = (await readWholeLog(daemon, domain.uuid)).bytes.toString('latin1');
        return (
          text.split(GUEST_BANNER).length === 3 && /counter 5\r?\n[\s\S]*$/.test(text.split(GUEST_BANNER)[2]!)
        );
      });
      expect((await status(daemon, domain.uuid)).body['boot']).toBe(2);
      const { markers } = await daemon.json<{ markers: { offset: number; kind: string }[] }>(
        'GET',
        `/v1/guests/${domain.uuid}/markers?start=0`,
      );
      expect(markers.map((m) => m.kind)).toEqual(['boot', 'boot']);
      expect(markers[1]!.offset).toBe(boot1End);
    }, 60_000);

    it('a domain destroyed and undefined stays detached, its logs kept', async () => {
      const domain = persistent;
      await virsh(['destroy', domain.name]);
      await virsh(['undefine', domain.name]);
      expect((await status(daemon, domain.uuid)).code).toBe(404);
      await expectSameAsVirtlogd(daemon, domain);
      expect(existsSync(join(daemon.stateDir, 'guests', domain.uuid, 'console.log'))).toBe(true);
    }, 60_000);

    // Open defect: in about half the runs of the whole file in CI the replayed attach says
    // connected and no byte arrives (QEMU serving another client?); each attempt is a new
    // domain, and an attempt that passes checks everything (see the README).
    it('a domain started while consoled is down is attached once consoled is back', {
      timeout: 240_000,
      retry: 2,
    }, async () => {
      await daemon.stop();
      const { domain, xml } = await newDomain('tcp');
      // Transient: gone for good once destroyed.
      await virsh(['create', await writeXml(xml)]);
      const spool = join(daemon.stateDir, 'libvirt-spool');
      const spooled = (await readdir(spool)).filter((n) => n.endsWith(`-${domain.uuid}.json`));
      expect(spooled).toHaveLength(1);
      await daemon.start();
      await waitFor('the spooled attach to be replayed and connected', async () => {
        const s = await status(daemon, domain.uuid);
        return s.code === 200 && s.body['state'] === 'connected';
      });
      expect((await readdir(spool)).filter((n) => n.includes(domain.uuid))).toEqual([]);
      // A TCG boot beside the rest of the suite can take far longer than alone.
      await waitFor(
        'the guest output in the log',
        async () => /counter 5\r?\n/.test(await logText(daemon, domain.uuid)),
        { timeoutMs: 90_000, intervalMs: 200 },
      );
      // From its connect to the detach below consoled missed nothing: its capture is one
      // unbroken run of what virtlogd logged. What the guest printed before the replayed
      // attach connected (a slow start) is virtlogd's alone: QEMU drops what a socket
      // chardev emits while nobody is connected.
      await daemon.json('DELETE', `/v1/guests/${domain.uuid}`);
      const ours = (await guestBytes(daemon, domain.uuid)).toString('latin1');
      expect(ours).toMatch(/counter 5\r?\n/);
      await waitFor('virtlogd to have logged what consoled captured', async () =>
        (await readFile(domain.serialLog, 'latin1')).includes(ours),
      );
      // A restart of libvirtd runs `reconnect` for each running domain: it attaches one
      // consoled did not have (here: detached by hand).
      await restartLibvirtd();
      await waitFor(
        'the reconnect hook to attach the domain again',
        async () => {
          const s = await status(daemon, domain.uuid);
          return s.code === 200 && s.body['state'] === 'connected';
        },
        { timeoutMs: 60_000 },
      );
      await virsh(['destroy', domain.name]);
      expect((await status(daemon, domain.uuid)).code).toBe(404);
      expect((await virsh(['dominfo', domain.name], { allowFailure: true })).code).not.toBe(0);
    });

    it('the migrate hook, given a real domain XML, attaches with incoming: true and prints nothing', async () => {
      const { domain, xml } = await newDomain('tcp');
      await virsh(['define', await writeXml(xml)]);
      const live = (await virsh(['dumpxml', domain.name])).stdout;
      const migrate = await runHook(daemon, [domain.name, 'migrate', 'begin', '-'], live);
      expect(migrate.code).toBe(0);
      expect(migrate.stdout).toBe('');
      const incoming = await status(daemon, domain.uuid);
      expect(incoming.code).toBe(200);
      expect(incoming.body['incoming']).toBe(true);
      // The destination's QEMU then starts: `started` keeps the incoming attach as it is.
      const started = await runHook(daemon, [domain.name, 'started', 'begin', '-'], live);
      expect(started.code).toBe(0);
      expect((await status(daemon, domain.uuid)).body['incoming']).toBe(true);
      // A migration that fails ends in `release` on the destination: the incoming guest is dropped.
      const release = await runHook(daemon, [domain.name, 'release', 'end', '-'], live);
      expect(release.code).toBe(0);
      expect((await status(daemon, domain.uuid)).code).toBe(404);
      // Without a daemon the hook still exits 0 and prints nothing.
      await daemon.stop();
      const down = await runHook(daemon, [domain.name, 'migrate', 'begin', '-'], live);
      expect(down.code).toBe(0);
      expect(down.stdout).toBe('');
      expect(down.stderr).toContain('the daemon replays it at its start');
      await runHook(daemon, [domain.name, 'release', 'end', '-'], live);
      await daemon.start();
    }, 60_000);

    it('a pty serial is captured by a consoled running as an unprivileged user', async () => {
      await daemon.stop();
      const user = await unprivilegedUser();
      const unprivileged = await startDaemon({
        user,
        config: {
          listen: { host: '127.0.0.1', port: await freePort() },
          defaults: { rateLimit: { bytesPerSec: 0, burstBytes: 1 } },
          libvirt: { consoledUser: UNPRIVILEGED_USER },
        },
      });
      await removeHook?.();
      removeHook = await installQemuHook(HOOK_NAME, hookScript(unprivileged));
      const { domain, xml } = await newDomain('pty');
      await virsh(['create', await writeXml(xml)]);
      const attached = await status(unprivileged, domain.uuid);
      expect(attached.code).toBe(200);
      const source = attached.body['source'] as { type: string; path: string };
      expect(source.type).toBe('pty');
      expect(attached.body['state']).toBe('connected');
      // The hook gave the pty the daemon's group, read and write (devpts has no ACLs).
      const { stdout: pty } = await run('stat', ['-c', '%G %a', source.path]);
      expect(pty.trim()).toMatch(new RegExp(`^${UNPRIVILEGED_USER} [0-7]6[0-7]$`));
      await waitFor('the guest output in the log', async () =>
        /counter 5\r?\n/.test(await logText(unprivileged, domain.uuid)),
      );
      await virsh(['destroy', domain.name]);
      expect((await status(unprivileged, domain.uuid)).code).toBe(404);
      await expectSameAsVirtlogd(unprivileged, domain);
    }, 90_000);
  },
);
