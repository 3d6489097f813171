/**
 * The demo guest that `npm start` attaches through an `exec` source: it prints a
 * boot log like a small Linux guest and then offers a shell-like prompt. `reboot`
 * exits, so consoled starts it again and a new boot begins.
 */
import { createInterface } from 'node:readline';

const bootLines = [
  'Linux version 6.1.0-demo (consoled@demo) #1 SMP PREEMPT_DYNAMIC',
  'Command line: console=ttyS0,115200n8 root=/dev/vda1 ro',
  'x86/fpu: Supporting XSAVE feature 0x001: x87 floating point registers',
  'BIOS-provided physical RAM map:',
  'Memory: 1984512K/2096632K available (14336K kernel code)',
  'Serial: 8250/16550 driver, 4 ports, IRQ sharing enabled',
  'serial8250: ttyS0 at I/O 0x3f8 (irq = 4, base_baud = 115200) is a 16550A',
  'EXT4-fs (vda1): mounted filesystem with ordered data mode',
  'systemd[1]: Reached target Multi-User System.',
  '',
  'demo-guest login: root (automatic login)',
];

const out = (text: string) => process.stdout.write(text.replace(/\n/g, '\r\n'));
const started = performance.now();
const stamp = () => `[${((performance.now() - started) / 1000).toFixed(6).padStart(12)}] `;

async function boot(): Promise<void> {
  for (const line of bootLines) {
    out(`${line && !line.startsWith('demo-guest') ? stamp() : ''}${line}\n`);
    await new Promise((r) => setTimeout(r, 40));
  }
}

function help(): void {
  out('commands: help, echo TEXT, date, uname, uptime, flood N (N lines), colors, reboot, exit\n');
}

function run(line: string): boolean {
  const [cmd = '', ...args] = line.trim().split(/\s+/);
  switch (cmd) {
    case '':
      break;
    case 'help':
      help();
      break;
    case 'echo':
      out(`${args.join(' ')}\n`);
      break;
    case 'date':
      out(`${new Date().toUTCString()}\n`);
      break;
    case 'uname':
      out('Linux demo-guest 6.1.0-demo x86_64 GNU/Linux\n');
      break;
    case 'uptime':
      out(`up ${((performance.now() - started) / 1000).toFixed(1)} s\n`);
      break;
    case 'flood': {
      const n = Math.min(Number(args[0] ?? 100) || 100, 1_000_000);
      for (let i = 1; i <= n; i++)
        out(`flood line ${i} of ${n} ................................................\n`);
      break;
    }
    case 'colors':
      for (let c = 31; c <= 36; c++) out(`\x1b[${c}mcolour ${c}\x1b[0m `);
      out('\n');
      break;
    case 'reboot':
      out('reboot: Restarting system\n');
      return false;
    case 'exit':
      out('logout\n');
      return false;
    default:
      out(`sh: ${cmd}: not found\n`);
  }
  return true;
}

await boot();
help();
const prompt = () => out('root@demo-guest:~# ');
prompt();
const rl = createInterface({ input: process.stdin, terminal: false });
rl.on('line', (line) => {
  if (!run(line)) {
    setTimeout(() => process.exit(0), 50);
    return;
  }
  prompt();
});
