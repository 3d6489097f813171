/**
 * Real QEMU test guests, under TCG (never KVM, so the suite behaves the same on any host):
 * the Debian cloud kernel, the initramfs built by `initramfs.ts`, one serial port on a
 * chardev the test chooses, and a QMP socket. Nothing global is registered: each test kills
 * the guests it started in `afterEach`/`afterAll`.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { accessSync, constants, existsSync, readdirSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { BUSYBOX_PATH, buildInitramfs, type GuestMode } from './initramfs.js';
import { QmpClient } from './qmp.js';

export { GUEST_BANNER, GUEST_PROMPT, type GuestMode } from './initramfs.js';

const QEMU_BINARY = 'qemu-system-x86_64';

/** Where QEMU's serial port goes. The names say which side listens. */
export type SerialSpec =
  /** QEMU listens on 127.0.0.1:port (`server=on,wait=off`, or `wait=on` when `wait` is set). */
  | { kind: 'tcp-server'; port: number; wait?: boolean }
  /** QEMU connects out to 127.0.0.1:port, retrying every `reconnect` seconds (default 1). */
  | { kind: 'tcp-client'; port: number; reconnect?: number }
  /** QEMU listens on the unix socket `path` (`server=on,wait=off`). */
  | { kind: 'unix-server'; path: string; wait?: boolean }
  /** QEMU connects out to the unix socket `path`, retrying every `reconnect` seconds (default 1). */
  | { kind: 'unix-client'; path: string; reconnect?: number }
  /** QEMU allocates a pseudo-terminal; its path is {@link QemuGuest.ptyPath}. */
  | { kind: 'pty' };

export interface QemuGuestOptions {
  /** What the guest's init does. @default 'shell' */
  mode?: GuestMode;
  /** Lines a second in `counter` mode; 0 prints them as fast as the guest can. @default 5 */
  hz?: number;
  serial: SerialSpec;
  /** QEMU copies every byte the serial chardev emits to this file (chardev `logfile=`). */
  logfile?: string;
  /** Start as a migration destination listening on 127.0.0.1:port (`-incoming`). */
  incoming?: number;
  /** Guest RAM. @default 128 */
  memoryMiB?: number;
  /** Start with the CPU stopped (`-S`); run `qmp.execute('cont')` to start the guest. */
  paused?: boolean;
  /** Print the kernel's boot messages (drops `quiet`); about 25 KB of realistic output. @default false */
  kernelLog?: boolean;
}

/** How a QEMU process ended. */
export interface QemuExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** A running QEMU. */
export interface QemuGuest {
  /** A connected QMP session. */
  readonly qmp: QmpClient;
  readonly pid: number;
  /** The pseudo-terminal QEMU allocated, for `{kind: 'pty'}`. */
  readonly ptyPath: string | undefined;
  /** The command line that was run, program first (`setpriv --pdeathsig KILL` when available). */
  readonly argv: readonly string[];
  /** The options the guest was started with (a migration destination reuses them). */
  readonly options: Readonly<QemuGuestOptions>;
  /** Resolves when the process has exited; never rejects. */
  readonly exited: Promise<QemuExit>;
  /** Everything QEMU wrote to stderr (and stdout) so far. */
  readonly stderr: string;
  /** Sends `signal` (SIGKILL by default) unless already exited; resolves once it has exited. */
  kill(signal?: NodeJS.Signals): Promise<QemuExit>;
}

/** The Debian cloud kernel, newest by name, or undefined. */
export function findCloudKernel(): string | undefined {
  let names: string[];
  try {
    names = readdirSync('/boot');
  } catch {
    return undefined;
  }
  const kernels = names.filter((n) => /^vmlinuz-.*-cloud-amd64$/.test(n)).sort();
  const newest = kernels[kernels.length - 1];
  return newest === undefined ? undefined : join('/boot', newest);
}

function onPath(program: string): string | undefined {
  for (const dir of (process.env['PATH'] ?? '').split(delimiter)) {
    if (dir === '') continue;
    const candidate = join(dir, program);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

/**
 * Whether a QEMU guest can run here. Use as
 * `describe.skipIf(!qemuAvailable().ok)`, printing `qemuAvailable().reason`.
 */
export function qemuAvailable(): { ok: boolean; reason?: string } {
  if (onPath(QEMU_BINARY) === undefined) return { ok: false, reason: `${QEMU_BINARY} is not on PATH` };
  const kernel = findCloudKernel();
  if (kernel === undefined) return { ok: false, reason: 'no /boot/vmlinuz-*-cloud-amd64 kernel' };
  try {
    accessSync(kernel, constants.R_OK);
  } catch {
    return { ok: false, reason: `${kernel} is not readable` };
  }
  if (!existsSync(BUSYBOX_PATH)) return { ok: false, reason: `${BUSYBOX_PATH} (busybox-static) is missing` };
  return { ok: true };
}

/**
 * The kernel command line. `cryptomgr.notests` skips the crypto self-tests (0.6 s under TCG,
 * the slowest initcall); `quiet` saves printing the boot log through the emulated UART.
 * `no_timer_check` skips the boot-time check that the timer interrupt ticks within a
 * delay loop: under TCG on a loaded host the loop can end first, and the kernel panics
 * in `x86_late_time_init` ("IO-APIC + timer doesn't work"), as one CI run's guest did.
 */
function kernelAppend(opts: QemuGuestOptions): string {
  const parts = ['console=ttyS0', 'panic=-1', 'cryptomgr.notests', 'no_timer_check'];
  if (opts.kernelLog !== true) parts.push('quiet');
  parts.push(`consoled.mode=${opts.mode ?? 'shell'}`, `consoled.hz=${opts.hz ?? 5}`);
  return parts.join(' ');
}

function serialChardev(serial: SerialSpec, logfile: string | undefined): string {
  let spec: string;
  switch (serial.kind) {
    case 'tcp-server':
      spec = `socket,id=ser0,host=127.0.0.1,port=${serial.port},server=on,wait=${serial.wait === true ? 'on' : 'off'}`;
      break;
    case 'tcp-client':
      spec = `socket,id=ser0,host=127.0.0.1,port=${serial.port},server=off,reconnect=${serial.reconnect ?? 1}`;
      break;
    case 'unix-server':
      spec = `socket,id=ser0,path=${serial.path},server=on,wait=${serial.wait === true ? 'on' : 'off'}`;
      break;
    case 'unix-client':
      spec = `socket,id=ser0,path=${serial.path},server=off,reconnect=${serial.reconnect ?? 1}`;
      break;
    case 'pty':
      spec = 'pty,id=ser0';
      break;
  }
  // QEMU's option syntax doubles a comma to escape it.
  return logfile === undefined ? spec : `${spec},logfile=${logfile.replaceAll(',', ',,')}`;
}

/**
 * The QEMU arguments, without the program. `-M pc` because it boots and migrates like a
 * nova/libvirt guest (microvm hangs calibrating the TSC under TCG); `-nodefaults` leaves only
 * the one serial port we add. `-no-reboot` with `panic=-1` turns a guest crash into a QEMU exit.
 */
export function qemuArgs(opts: QemuGuestOptions, kernel: string, initrd: string, qmpPath: string): string[] {
  // biome-ignore format: one QEMU option and its value per line
  const args = [
    '-name', 'consoled-test-guest',
    '-machine', 'pc',
    '-accel', 'tcg',
    '-m', String(opts.memoryMiB ?? 128),
    '-smp', '1',
    '-nodefaults',
    '-no-user-config',
    '-display', 'none',
    '-no-reboot',
    '-chardev', `socket,id=qmp,path=${qmpPath},server=on,wait=off`,
    '-mon', 'chardev=qmp,mode=control',
    '-chardev', serialChardev(opts.serial, opts.logfile),
    '-serial', 'chardev:ser0',
    '-kernel', kernel,
    '-initrd', initrd,
    '-append', kernelAppend(opts),
  ];
  if (opts.paused === true) args.push('-S');
  if (opts.incoming !== undefined) args.push('-incoming', `tcp:127.0.0.1:${opts.incoming}`);
  return args;
}

/**
 * Starts QEMU and resolves once its QMP socket answers (the serial chardev exists by then).
 * The guest then needs 2.5 to 4 s under TCG on two cores to print the banner (8 s and more
 * when the host is busy).
 * QEMU runs under `setpriv --pdeathsig KILL` when available, so that a test worker that dies
 * without its `afterAll` takes its guests with it.
 */
export async function startQemuGuest(opts: QemuGuestOptions): Promise<QemuGuest> {
  const kernel = findCloudKernel();
  if (kernel === undefined) throw new Error('no /boot/vmlinuz-*-cloud-amd64 kernel');
  const initrd = await buildInitramfs();
  const dir = await mkdtemp(join(tmpdir(), 'consoled-qemu-'));
  const qmpPath = join(dir, 'qmp.sock');
  const args = qemuArgs(opts, kernel, initrd, qmpPath);
  const setpriv = onPath('setpriv');
  const argv =
    setpriv === undefined ? [QEMU_BINARY, ...args] : [setpriv, '--pdeathsig', 'KILL', QEMU_BINARY, ...args];

  const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.setEncoding('utf8').on('data', (s: string) => (output += s));
  child.stderr.setEncoding('utf8').on('data', (s: string) => (output += s));
  let exitInfo: QemuExit | undefined;
  const exited = new Promise<QemuExit>((resolve) => {
    child.once('error', (err) => {
      output += `spawn error: ${err.message}\n`;
      exitInfo ??= { code: null, signal: null };
      resolve(exitInfo);
    });
    child.once('exit', (code, signal) => {
      exitInfo = { code, signal };
      resolve(exitInfo);
    });
  }).then(async (info) => {
    await rm(dir, { recursive: true, force: true });
    return info;
  });

  const kill = async (signal: NodeJS.Signals = 'SIGKILL'): Promise<QemuExit> => {
    if (exitInfo === undefined && child.pid !== undefined) child.kill(signal);
    return exited;
  };

  try {
    const hasExited = (): boolean => exitInfo !== undefined;
    const qmp = await connectQmp(qmpPath, child, hasExited, () => output);
    const ptyPath = opts.serial.kind === 'pty' ? await queryPty(qmp) : undefined;
    return {
      qmp,
      pid: child.pid!,
      ptyPath,
      argv,
      options: opts,
      exited,
      get stderr() {
        return output;
      },
      kill,
    };
  } catch (err) {
    await kill();
    throw err;
  }
}

async function connectQmp(
  path: string,
  child: ChildProcess,
  hasExited: () => boolean,
  output: () => string,
): Promise<QmpClient> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (hasExited()) throw new Error(`QEMU exited during start-up (pid ${child.pid}): ${output()}`);
    if (existsSync(path)) {
      try {
        return await QmpClient.connect(path, 10_000);
      } catch (err) {
        if (Date.now() > deadline) throw err;
      }
    }
    if (Date.now() > deadline) throw new Error(`QEMU's QMP socket did not answer within 30 s: ${output()}`);
    await sleep(20);
  }
}

async function queryPty(qmp: QmpClient): Promise<string> {
  const chardevs = await qmp.execute<{ label: string; filename: string }[]>('query-chardev');
  const ser0 = chardevs.find((c) => c.label === 'ser0');
  if (ser0 === undefined || !ser0.filename.startsWith('pty:')) {
    throw new Error(`no pty in query-chardev: ${JSON.stringify(chardevs)}`);
  }
  return ser0.filename.slice('pty:'.length);
}

export interface MigrateOptions {
  /** Give up (and cancel) after this long. @default 60000 */
  timeoutMs?: number;
  /**
   * Bandwidth cap in bytes a second. QEMU 7.2's default, 32 MiB/s, makes a 128 MiB guest
   * (about 90 MB sent) take about 3 s; loopback takes far more.
   * @default 1 GiB/s
   */
  maxBandwidthBytes?: number;
}

/**
 * Live-migrates `source` to a destination QEMU started with `incoming: destPort` and the same
 * options otherwise (another serial chardev is fine: chardev backends are not migrated, the
 * UART's state is). Polls `query-migrate` until `completed`; throws on `failed` or
 * `cancelled`. Returns the elapsed milliseconds. Afterwards the source is paused
 * (`postmigrate`) and the guest's serial output continues on the destination's chardev.
 */
export async function migrate(
  source: QemuGuest,
  destPort: number,
  options: MigrateOptions = {},
): Promise<number> {
  const timeoutMs = options.timeoutMs ?? 60_000;
  await source.qmp.execute('migrate-set-parameters', {
    'max-bandwidth': options.maxBandwidthBytes ?? 1024 ** 3,
  });
  const started = performance.now();
  await source.qmp.execute('migrate', { uri: `tcp:127.0.0.1:${destPort}` });
  for (;;) {
    const info = await source.qmp.execute<{ status?: string; 'error-desc'?: string }>('query-migrate');
    if (info.status === 'completed') return performance.now() - started;
    if (info.status === 'failed' || info.status === 'cancelled') {
      throw new Error(`migration ${info.status}: ${info['error-desc'] ?? 'no error-desc'}`);
    }
    if (performance.now() - started > timeoutMs) {
      await source.qmp.execute('migrate_cancel').catch(() => {});
      throw new Error(`migration did not complete within ${timeoutMs} ms (status ${String(info.status)})`);
    }
    await sleep(20);
  }
}
