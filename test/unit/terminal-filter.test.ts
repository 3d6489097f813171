/**
 * The filter `consolectl logs` puts between a console log and a terminal
 * (cli/terminal-filter.ts), on tricky input: what passes (text, tab, CR, LF,
 * UTF-8, colour), what is shown escaped (OSC 52, titles, reports, DCS, C0 and C1
 * controls, bad UTF-8), and the same result however the input is cut into chunks,
 * sequences and characters split included. A fuzz run checks that nothing but text
 * and colour ever comes out.
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { TerminalFilter } from '../../cli/terminal-filter.js';
import { prng } from '../support/prng.js';

function filterChunks(chunks: Array<string | Uint8Array>): string {
  const f = new TerminalFilter();
  const out = chunks.map((c) => f.push(typeof c === 'string' ? Buffer.from(c, 'latin1') : c));
  out.push(f.end());
  return Buffer.concat(out).toString('latin1');
}

/** One chunk, bytes given as a latin1 string (so `\xe2` is the byte 0xe2). */
const filtered = (input: string) => filterChunks([input]);

/** Throws unless `out` holds only printable bytes, tab, CR, LF, UTF-8 and whole SGR sequences. */
function assertOnlyTextAndColour(out: Buffer): void {
  for (let i = 0; i < out.length; i++) {
    const b = out[i]!;
    if (b === 0x1b) {
      const m = /^\x1b\[[0-9;:]*m/.exec(out.subarray(i, i + 70).toString('latin1'));
      if (!m) throw new Error(`a control sequence that is not colour at ${i}`);
      i += m[0].length - 1;
    } else if ((b < 0x20 && b !== 0x09 && b !== 0x0a && b !== 0x0d) || b === 0x7f) {
      throw new Error(`control byte 0x${b.toString(16)} at ${i}`);
    }
  }
  // A fatal decoder refuses invalid UTF-8; U+FFFD written as valid UTF-8 (EF BF BD) is text.
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(out);
  } catch {
    throw new Error('invalid UTF-8 came through');
  }
  if (/[\u0080-\u009f]/.test(text)) throw new Error('a C1 control came through');
}

describe('TerminalFilter', () => {
  it('passes text, tab, CR, LF, UTF-8 and colour as they are', () => {
    const text = 'plain\ttext\r\nnext line é € 😀 日本\n';
    const utf8 = Buffer.from(text, 'utf8').toString('latin1');
    expect(filtered(utf8)).toBe(utf8);
    const colour = '\x1b[31mred\x1b[0m \x1b[1;38;2;10;20;30mtrue\x1b[m \x1b[38:5:196mcolon\x1b[39;49m';
    expect(filtered(colour)).toBe(colour);
  });

  it('shows every other control sequence escaped', () => {
    expect(filtered('\x1b]52;c;aGVsbG8=\x07after')).toBe('\\x1b]52;c;aGVsbG8=\\x07after');
    expect(filtered('\x1b]0;owned\x07')).toBe('\\x1b]0;owned\\x07');
    expect(filtered('\x1b]2;title\x1b\\')).toBe('\\x1b]2;title\\x1b\\');
    expect(filtered('\x1b[21t')).toBe('\\x1b[21t');
    expect(filtered('\x1b[6n\x1b[c\x1b[>c\x1b[?1049h\x1b[2J')).toBe(
      '\\x1b[6n\\x1b[c\\x1b[>c\\x1b[?1049h\\x1b[2J',
    );
    expect(filtered('\x1bP$qm\x1b\\')).toBe('\\x1bP$qm\\x1b\\');
    // Colour-like but not colour: a private marker, an intermediate, a control inside.
    expect(filtered('\x1b[>4;2m\x1b[1 m\x1b[3\x1b[1m')).toBe('\\x1b[>4;2m\\x1b[1 m\\x1b[3\x1b[1m');
    expect(filtered(`\x1b[${'1;'.repeat(40)}m`)).toBe(`\\x1b[${'1;'.repeat(40)}m`);
  });

  it('shows C0 controls, DEL, C1 controls and bytes that are not UTF-8 escaped', () => {
    expect(filtered('a\x00b\x07c\x08d\x7fe\x0bf\x0cg')).toBe('a\\x00b\\x07c\\x08d\\x7fe\\x0bf\\x0cg');
    // C1 CSI written in UTF-8, and as a bare 8-bit byte.
    expect(filtered('\xc2\x9b31m \x9b21t')).toBe('\\xc2\\x9b31m \\x9b21t');
    // An overlong NUL, a surrogate, a byte never valid, a lone continuation byte, a code point past U+10FFFF.
    expect(filtered('\xc0\x80|\xed\xa0\x80|\xf5|\x80|\xf4\x90\x80\x80')).toBe(
      '\\xc0\\x80|\\xed\\xa0\\x80|\\xf5|\\x80|\\xf4\\x90\\x80\\x80',
    );
  });

  it('holds a sequence or a character split across chunks, and flushes a cut one escaped at the end', () => {
    expect(filterChunks(['red: \x1b', '[3', '1mX\x1b[', '0m'])).toBe('red: \x1b[31mX\x1b[0m');
    expect(filterChunks(['\x1b', ']52;c;', 'eA==\x07'])).toBe('\\x1b]52;c;eA==\\x07');
    const euro = Buffer.from('€', 'utf8');
    expect(filterChunks([euro.subarray(0, 1), euro.subarray(1, 2), euro.subarray(2)])).toBe(
      euro.toString('latin1'),
    );
    // A C1 control split after its lead byte is still a C1 control.
    expect(filterChunks(['\xc2', '\x9b'])).toBe('\\xc2\\x9b');
    // The stream ends inside a sequence, inside a character.
    expect(filterChunks(['ok \x1b[3'])).toBe('ok \\x1b[3');
    expect(filterChunks(['ok \xe2\x82'])).toBe('ok \\xe2\\x82');
    // Nothing is held back that could already be judged.
    const f = new TerminalFilter();
    expect(f.push(Buffer.from('abc\x1b[31')).toString('latin1')).toBe('abc');
    expect(f.push(Buffer.from('mdef')).toString('latin1')).toBe('\x1b[31mdef');
    expect(f.end().length).toBe(0);
  });

  it('gives the same output at every split point of tricky input', () => {
    const input = Buffer.concat([
      Buffer.from('\x1b[1;31mbold red\x1b[0m é\t😀\r\n\x1b]52;c;aGk=\x07\x1b[21t', 'latin1'),
      Buffer.from('日本 €', 'utf8'),
      Buffer.from('\xc2\x9b\xed\xa0\x80\x1b[>c\x1b', 'latin1'),
    ]);
    const whole = filterChunks([input]);
    for (let k = 0; k <= input.length; k++) {
      expect(filterChunks([input.subarray(0, k), input.subarray(k)]), `split at ${k}`).toBe(whole);
    }
    const byteByByte = [...input].map((b) => Uint8Array.of(b));
    expect(filterChunks(byteByByte)).toBe(whole);
  });

  it('lets nothing but text and colour through on random bytes, however they are chunked', () => {
    // Seeded (TERMINAL_FUZZ_SEED replays a run); a failure names its seed and round.
    const seed = Number(process.env['TERMINAL_FUZZ_SEED'] ?? randomBytes(4).readUInt32LE(0));
    const random = prng(seed);
    for (let round = 0; round < 20; round++) {
      // Random bytes with plenty of ESC, '[' and UTF-8 lead bytes among them.
      const input = new Uint8Array(4000).map(() => {
        const b = Math.floor(random() * 256);
        return b < 40 ? 0x1b : b < 80 ? 0x5b : b < 100 ? 0xe2 : b < 110 ? 0x6d : b;
      });
      const whole = filterChunks([input]);
      try {
        assertOnlyTextAndColour(Buffer.from(whole, 'latin1'));
      } catch (err) {
        throw new Error(`seed ${seed}, round ${round}: ${(err as Error).message}`);
      }
      const chunks: Uint8Array[] = [];
      for (let pos = 0; pos < input.length; ) {
        const n = 1 + Math.floor(random() * 50);
        chunks.push(input.subarray(pos, pos + n));
        pos += n;
      }
      expect(filterChunks(chunks), `seed ${seed}, round ${round}`).toBe(whole);
    }
  });

  it('takes U+FFFD written as valid UTF-8 for text (the fuzz check once took it for an error)', () => {
    const replacement = Buffer.from('a\ufffdb', 'utf8').toString('latin1');
    expect(filtered(replacement)).toBe(replacement);
    assertOnlyTextAndColour(Buffer.from(filtered(replacement), 'latin1'));
  });
});
