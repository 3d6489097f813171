#!/usr/bin/env node
/**
 * consoled's libvirt QEMU hook (README "libvirt", docs/design.md "libvirt"), run by
 * libvirtd as root through `/etc/libvirt/hooks/qemu.d/consoled`:
 *
 *   node dist/cli/libvirt-hook.js <domain> <operation> <sub-operation> <extra>   (domain XML on stdin)
 *
 * - `started`: attaches every captured `<serial>` (cli/libvirt-serials.ts) with the
 *   domain UUID as the guest id, after giving the daemon's group access to a pty;
 *   `incoming: true` when the domain arrived by a live migration (a `migrate` before it).
 * - `reconnect` (libvirtd started again, for each running domain): as `started`, so a
 *   restart of libvirtd attaches the domains that ran before the hook was installed.
 * - `migrate` (on the destination, before QEMU starts): attaches the socket serials with
 *   `incoming: true`. It prints nothing on stdout: libvirt would take it as the domain XML.
 * - `release` (the last event of every stop, on this host): detaches them, which
 *   releases the stream or finishes a pending handoff (docs/design.md "Ownership").
 *
 * Each request is first written to the spool directory, then sent, bounded in time;
 * it is removed once the daemon decided it. A daemon that is down leaves it for its
 * next start (sidecar/libvirt/attach-spool.ts). The hook always exits 0: consoled
 * being down never fails a libvirt operation.
 */
/** The operations the hook acts on; every other one (prepare, start, stopped, …) is a no-op. */
const HANDLED = new Set(['started', 'reconnect', 'migrate', 'release']);

let domainLabel = '';
function say(message: string): void {
  process.stderr.write(`consoled libvirt hook: ${domainLabel}: ${message}\n`);
}

async function readStdin(): Promise<string> {
  if (process.stdin.isTTY) return '';
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

async function main(argv: string[]): Promise<void> {
  const [name = '', operation = ''] = argv;
  domainLabel = `${name} ${operation}`;
  // Read all of it in every case: libvirt writes the XML whatever the operation.
  const xml = await readStdin();
  if (!HANDLED.has(operation)) return;
  const { runHookOperation } = await import('./libvirt-hook-actions.js');
  await runHookOperation(operation, xml, say);
}

main(process.argv.slice(2))
  .catch((err: unknown) => say(err instanceof Error ? err.message : String(err)))
  .finally(() => {
    process.exitCode = 0;
  });
