/**
 * The scanner of the owner's frames on a proxying host (sidecar/console/upstream-socket.ts):
 * generated streams of server frames (output, fragmented output, control messages,
 * pings, a close) cut into chunks at random places, checked against what went in: the
 * bytes passed on and the text frames, in order, are the stream without its pings and
 * close; the output counted is every binary payload byte; each ping and the close are
 * seen once.
 */
import { describe, expect, it } from 'vitest';
import { ServerFrameScanner } from '../../sidecar/console/upstream-socket.js';
import { prng } from '../support/prng.js';

function serverFrame(opcode: number, payload: Buffer, fin = true): Buffer {
  const n = payload.length;
  const head =
    n < 126
      ? Buffer.from([(fin ? 0x80 : 0) | opcode, n])
      : n < 65536
        ? Buffer.from([(fin ? 0x80 : 0) | opcode, 126, n >> 8, n & 0xff])
        : (() => {
            const h = Buffer.alloc(10);
            h[0] = (fin ? 0x80 : 0) | opcode;
            h[1] = 127;
            h.writeBigUInt64BE(BigInt(n), 2);
            return h;
          })();
  return Buffer.concat([head, payload]);
}

interface Generated {
  stream: Buffer;
  /** The stream without pings and the close. */
  passed: Buffer;
  outputBytes: number;
  texts: string[];
  pings: string[];
}

function generate(random: () => number): Generated {
  const parts: Buffer[] = [];
  const passed: Buffer[] = [];
  const texts: string[] = [];
  const pings: string[] = [];
  let outputBytes = 0;
  const frames = 5 + Math.floor(random() * 40);
  for (let i = 0; i < frames; i++) {
    const kind = random();
    if (kind < 0.45) {
      const sizes = [0, 1, 125, 126, 127, 65535, 65536, 70000];
      const n = random() < 0.3 ? sizes[Math.floor(random() * sizes.length)]! : Math.floor(random() * 3000);
      const payload = Buffer.alloc(n, i & 0xff);
      const f = serverFrame(0x2, payload);
      parts.push(f);
      passed.push(f);
      outputBytes += n;
    } else if (kind < 0.6) {
      // Output in three fragments, a text frame between them being legal only for control frames.
      const a = Buffer.alloc(Math.floor(random() * 200), 1);
      const b = Buffer.alloc(Math.floor(random() * 200), 2);
      const c = Buffer.alloc(Math.floor(random() * 200), 3);
      const ping = Buffer.from(`p${i}`);
      for (const f of [serverFrame(0x2, a, false), serverFrame(0x0, b, false)]) {
        parts.push(f);
        passed.push(f);
      }
      parts.push(serverFrame(0x9, ping));
      pings.push(ping.toString());
      const last = serverFrame(0x0, c, true);
      parts.push(last);
      passed.push(last);
      outputBytes += a.length + b.length + c.length;
    } else if (kind < 0.9) {
      const text = JSON.stringify({ type: 'lock', n: i, pad: 'x'.repeat(Math.floor(random() * 300)) });
      const f = serverFrame(0x1, Buffer.from(text));
      parts.push(f);
      passed.push(f);
      texts.push(text);
    } else {
      const ping = Buffer.from(`ping ${i}`);
      parts.push(serverFrame(0x9, ping));
      pings.push(ping.toString());
    }
  }
  const reason = Buffer.from('GUEST_MOVED');
  const close = Buffer.alloc(2 + reason.length);
  close.writeUInt16BE(4413, 0);
  reason.copy(close, 2);
  parts.push(serverFrame(0x8, close));
  // Anything after a close is not read.
  parts.push(serverFrame(0x2, Buffer.from('after the close')));
  return { stream: Buffer.concat(parts), passed: Buffer.concat(passed), outputBytes, texts, pings };
}

describe('ServerFrameScanner', () => {
  for (const seed of [1, 2, 3, 4, 5, 6, 7, 8]) {
    it(`passes output through unchanged and takes control frames out whole (seed ${seed})`, () => {
      const random = prng(seed);
      for (let history = 0; history < 25; history++) {
        const g = generate(random);
        const passed: Buffer[] = [];
        const texts: string[] = [];
        const pings: string[] = [];
        let output = 0;
        const closes: Array<[number, string]> = [];
        const scanner = new ServerFrameScanner({
          pass: (raw, n) => {
            passed.push(Buffer.from(raw));
            output += n;
          },
          text: (raw, payload) => {
            passed.push(Buffer.from(raw));
            texts.push(payload);
          },
          ping: (payload) => pings.push(payload.toString()),
          close: (code, reason) => closes.push([code, reason]),
          tooLarge: () => closes.push([1009, 'too large']),
        });
        // Chunks from 1 byte to 20 KiB, cut anywhere (inside headers too).
        for (let pos = 0; pos < g.stream.length; ) {
          const n = 1 + Math.floor(random() ** 3 * 20_000);
          scanner.scan(g.stream.subarray(pos, pos + n));
          pos += n;
        }
        expect(Buffer.concat(passed).equals(g.passed)).toBe(true);
        expect(output).toBe(g.outputBytes);
        expect(texts).toEqual(g.texts);
        expect(pings).toEqual(g.pings);
        expect(closes).toEqual([[4413, 'GUEST_MOVED']]);
      }
    });
  }
});
