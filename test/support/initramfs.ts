/**
 * Builds the initramfs of the QEMU test guest: a static busybox, its applet links, and an
 * `/init` script whose behaviour the kernel command line picks (`consoled.mode=`). The archive
 * is written by this file (newc cpio, gzip), so no `cpio` binary is needed, and it is cached
 * under the temp directory by a hash of its inputs, so a test run builds it once.
 */
import { createHash, randomBytes } from 'node:crypto';
import { access, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { gzip } from 'node:zlib';

const gzipAsync = promisify(gzip);

/** The static busybox copied into the guest (Debian's busybox-static). */
export const BUSYBOX_PATH = '/bin/busybox';

/** `/init` prints this, then ` mode=<mode>\r\n`, once it is up, in every mode, before the mode starts. */
export const GUEST_BANNER = 'consoled-test-guest ready';

/**
 * The interactive shell's prompt in `shell` mode. Busybox's line editor follows each prompt
 * with `ESC [ 6 n` (where is the cursor?); a terminal such as xterm.js answers it, a bare
 * socket does not, and the shell carries on either way.
 */
export const GUEST_PROMPT = 'guest# ';

/** What `/init` does, chosen with `consoled.mode=` on the kernel command line. */
export type GuestMode = 'shell' | 'counter' | 'counter-shell' | 'flood';

/** Busybox applets that `/init` and the tests' shell sessions use, linked under /bin. */
// biome-ignore format: a list of names
const APPLETS = [
  'sh', 'mount', 'cat', 'echo', 'usleep', 'sleep', 'yes', 'poweroff', 'setsid', 'cttyhack',
  'ls', 'dmesg', 'stty', 'head', 'seq', 'printf', 'true', 'false', 'uname', 'dd', 'sync', 'kill',
  'ps', 'date',
] as const;

/**
 * The guest's `/init`. Kernel parameters with a dot are module parameters to the kernel, so
 * they are not passed to init as arguments or environment: the script reads /proc/cmdline.
 * Kernel messages are silenced once init runs (`printk` level 1), so that they cannot split
 * the guest's lines in the middle (printk writes to the UART directly, past the tty layer).
 * Every way out ends in `poweroff -f`; if the script itself dies, the kernel panics and
 * `panic=-1` plus QEMU's `-no-reboot` make QEMU exit instead of looping.
 */
export const INIT_SCRIPT = `#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo 1 > /proc/sys/kernel/printk

mode=shell
hz=5
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    consoled.mode=*) mode="\${arg#consoled.mode=}" ;;
    consoled.hz=*) hz="\${arg#consoled.hz=}" ;;
  esac
done

echo "${GUEST_BANNER} mode=$mode"
case "$mode" in
  shell)
    PS1='${GUEST_PROMPT}' HOME=/ TERM=vt100 setsid cttyhack sh -i
    ;;
  counter)
    # Under TCG the loop with usleep tops out at a few hundred lines a second, whatever hz
    # asks; hz=0 drops the sleep: numbered lines as fast as the guest can print them.
    n=1
    if [ "$hz" -eq 0 ]; then
      while :; do
        echo "counter $n"
        n=$((n + 1))
      done
    fi
    interval=$((1000000 / hz))
    while :; do
      echo "counter $n"
      n=$((n + 1))
      usleep "$interval"
    done
    ;;
  counter-shell)
    # Numbered lines in the background and an interactive shell on the same console:
    # a guest that both prints steadily and runs what a viewer types.
    interval=$((1000000 / hz))
    ( n=1; while :; do echo "counter $n"; n=$((n + 1)); usleep "$interval"; done ) &
    PS1='${GUEST_PROMPT}' HOME=/ TERM=vt100 setsid cttyhack sh -i
    ;;
  flood)
    yes consoled-flood-line
    ;;
  *)
    echo "consoled-test-guest: unknown mode $mode"
    ;;
esac
echo "consoled-test-guest: init done, powering off"
poweroff -f
`;

/** One entry of the archive. `data` is the file's bytes or a symlink's target. */
type CpioEntry =
  | { name: string; kind: 'dir'; perm: number }
  | { name: string; kind: 'file'; perm: number; data: Buffer }
  | { name: string; kind: 'symlink'; target: string }
  | { name: string; kind: 'chardev'; perm: number; major: number; minor: number };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

function hex8(n: number): string {
  return n.toString(16).toUpperCase().padStart(8, '0');
}

function pad4(length: number): Buffer {
  return Buffer.alloc((4 - (length % 4)) % 4);
}

/**
 * One newc record: a 110-byte ASCII header ("070701" and 13 eight-digit hex fields), the NUL
 * terminated name padded so that header plus name is a multiple of 4, then the data padded to
 * 4. See the kernel's Documentation/driver-api/early-userspace/buffer-format.rst.
 */
function cpioRecord(
  ino: number,
  mode: number,
  data: Buffer,
  name: string,
  rdev = { major: 0, minor: 0 },
): Buffer {
  const nameBytes = Buffer.from(`${name}\0`, 'utf8');
  const header = Buffer.from(
    '070701' +
      hex8(ino) +
      hex8(mode) +
      hex8(0) + // uid
      hex8(0) + // gid
      hex8((mode & 0o170000) === S_IFDIR ? 2 : 1) + // nlink
      hex8(0) + // mtime: fixed, so the archive is reproducible
      hex8(data.length) +
      hex8(0) + // devmajor
      hex8(0) + // devminor
      hex8(rdev.major) +
      hex8(rdev.minor) +
      hex8(nameBytes.length) +
      hex8(0), // check: only used by the "070702" crc format
    'ascii',
  );
  return Buffer.concat([header, nameBytes, pad4(header.length + nameBytes.length), data, pad4(data.length)]);
}

/** Serialises entries into an uncompressed newc archive ending with the TRAILER!!! record. */
export function writeNewc(entries: readonly CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  for (const entry of entries) {
    switch (entry.kind) {
      case 'dir':
        parts.push(cpioRecord(ino++, S_IFDIR | entry.perm, Buffer.alloc(0), entry.name));
        break;
      case 'file':
        parts.push(cpioRecord(ino++, S_IFREG | entry.perm, entry.data, entry.name));
        break;
      case 'symlink':
        parts.push(cpioRecord(ino++, S_IFLNK | 0o777, Buffer.from(entry.target, 'utf8'), entry.name));
        break;
      case 'chardev':
        parts.push(
          cpioRecord(ino++, S_IFCHR | entry.perm, Buffer.alloc(0), entry.name, {
            major: entry.major,
            minor: entry.minor,
          }),
        );
        break;
    }
  }
  parts.push(cpioRecord(0, 0, Buffer.alloc(0), 'TRAILER!!!'));
  return Buffer.concat(parts);
}

function guestEntries(busybox: Buffer): CpioEntry[] {
  return [
    { name: 'bin', kind: 'dir', perm: 0o755 },
    { name: 'bin/busybox', kind: 'file', perm: 0o755, data: busybox },
    ...APPLETS.map((applet): CpioEntry => ({ name: `bin/${applet}`, kind: 'symlink', target: 'busybox' })),
    { name: 'dev', kind: 'dir', perm: 0o755 },
    // The kernel opens /dev/console for init's stdin/stdout/stderr before init runs, so it
    // must exist in the archive; devtmpfs, mounted later over /dev, hides it.
    { name: 'dev/console', kind: 'chardev', perm: 0o600, major: 5, minor: 1 },
    { name: 'proc', kind: 'dir', perm: 0o755 },
    { name: 'sys', kind: 'dir', perm: 0o755 },
    { name: 'init', kind: 'file', perm: 0o755, data: Buffer.from(INIT_SCRIPT, 'utf8') },
  ];
}

let cached: Promise<string> | undefined;

/**
 * Returns the path of the guest's gzip-compressed newc initramfs, building it the first time.
 * The file lives in `<tmpdir>/consoled-test-guest/<hash of busybox, init and format>/`; it is
 * written under a unique temporary name and renamed into place, so two vitest workers that
 * build at once both end with a complete file.
 */
export function buildInitramfs(): Promise<string> {
  cached ??= build().catch((err: unknown) => {
    cached = undefined;
    throw err;
  });
  return cached;
}

async function build(): Promise<string> {
  const busybox = await readFile(BUSYBOX_PATH);
  const hash = createHash('sha256')
    .update('consoled-test-guest initramfs v1\0')
    .update(busybox)
    .update(INIT_SCRIPT)
    .update(APPLETS.join(','))
    .digest('hex')
    .slice(0, 16);
  const dir = join(tmpdir(), 'consoled-test-guest', hash);
  const path = join(dir, 'initramfs.cpio.gz');
  try {
    await access(path);
    return path;
  } catch {
    // Not built yet.
  }
  await mkdir(dir, { recursive: true });
  const archive = await gzipAsync(writeNewc(guestEntries(busybox)), { level: 6 });
  const temp = `${path}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    await writeFile(temp, archive);
    await rename(temp, path);
  } catch (err) {
    await rm(temp, { force: true });
    throw err;
  }
  return path;
}
