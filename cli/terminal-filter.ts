/**
 * What `consolectl logs` writes to a terminal (SECURITY.md, "Terminal escapes"). A
 * console log holds whatever the guest printed, and a terminal obeys what it is sent:
 * OSC 52 sets the clipboard, OSC 0/2 the window title, `CSI 21 t` reports the title
 * back as if typed. So, as journalctl does, only text reaches the terminal as it is:
 * printable characters (valid UTF-8), tab, CR, LF, and colour (SGR: `ESC [` digits,
 * `;` and `:` only, then `m`). Every other control byte is shown as `\xNN` (lowercase
 * hex; `ESC ] 52 ; …` prints as `\x1b]52;…`), as are C1 controls written in UTF-8
 * (`\xc2\x9b`) and bytes that are not valid UTF-8. The rest of a refused sequence is
 * printable text and shows as such. Sequences and characters split across chunks are
 * held until the next chunk; `end()` flushes what is still held.
 */

const ESC = 0x1b;
const LEFT_BRACKET = 0x5b;
const SGR_FINAL = 0x6d; // 'm'
/** An SGR longer than this is not colour anyone needs; it is shown escaped. */
const MAX_SGR_BYTES = 64;
const HEX = '0123456789abcdef';

function isPlainByte(b: number): boolean {
  return (b >= 0x20 && b < 0x7f) || b === 0x09 || b === 0x0a || b === 0x0d;
}

/** Result of looking at the bytes from an index: how many to pass, to escape, or wait for more. */
type Verdict = { pass: number } | { escape: number } | 'incomplete';

/** An `ESC` at `at`: a whole SGR passes, anything else escapes the ESC alone. */
function escapeSequence(data: Uint8Array, at: number): Verdict {
  if (at + 1 >= data.length) return 'incomplete';
  if (data[at + 1] !== LEFT_BRACKET) return { escape: 1 };
  for (let i = at + 2; i < data.length; i++) {
    const b = data[i]!;
    if (i - at >= MAX_SGR_BYTES) return { escape: 1 };
    if ((b >= 0x30 && b <= 0x39) || b === 0x3b || b === 0x3a) continue; // digits ; :
    return b === SGR_FINAL ? { pass: i - at + 1 } : { escape: 1 };
  }
  return data.length - at >= MAX_SGR_BYTES ? { escape: 1 } : 'incomplete';
}

/** A byte >= 0x80 at `at`: a whole valid UTF-8 character passes, unless it is a C1 control. */
function utf8Character(data: Uint8Array, at: number): Verdict {
  const lead = data[at]!;
  let length: number;
  let min = 0x80;
  let max = 0xbf; // the range of the second byte
  if (lead >= 0xc2 && lead <= 0xdf) length = 2;
  else if (lead >= 0xe0 && lead <= 0xef) {
    length = 3;
    if (lead === 0xe0) min = 0xa0; // no overlong forms
    if (lead === 0xed) max = 0x9f; // no surrogates
  } else if (lead >= 0xf0 && lead <= 0xf4) {
    length = 4;
    if (lead === 0xf0) min = 0x90;
    if (lead === 0xf4) max = 0x8f; // nothing past U+10FFFF
  } else return { escape: 1 };
  for (let k = 1; k < length; k++) {
    if (at + k >= data.length) return 'incomplete';
    const b = data[at + k]!;
    const [lo, hi] = k === 1 ? [min, max] : [0x80, 0xbf];
    if (b < lo || b > hi) return { escape: 1 };
  }
  // U+0080–U+009F are C1 controls (U+009B is CSI to some terminals).
  if (lead === 0xc2 && data[at + 1]! <= 0x9f) return { escape: 2 };
  return { pass: length };
}

export class TerminalFilter {
  /** The start of a sequence or character that the next chunk may complete. */
  private held: Uint8Array = new Uint8Array(0);

  /** The filtered form of `chunk` (and of what was held from the chunk before). */
  push(chunk: Uint8Array): Buffer {
    const data = this.held.length === 0 ? chunk : Buffer.concat([this.held, chunk]);
    return this.filter(data, false);
  }

  /** Whatever is still held, escaped: the stream ended inside a sequence or a character. */
  end(): Buffer {
    const data = this.held;
    return this.filter(data, true);
  }

  private filter(data: Uint8Array, final: boolean): Buffer {
    const out: Uint8Array[] = [];
    let runStart = 0; // bytes [runStart, i) pass as they are
    let i = 0;
    const escapeBytes = (n: number) => {
      if (i > runStart) out.push(data.subarray(runStart, i));
      let text = '';
      for (let k = 0; k < n; k++) text += `\\x${HEX[data[i + k]! >> 4]}${HEX[data[i + k]! & 15]}`;
      out.push(Buffer.from(text, 'latin1'));
      i += n;
      runStart = i;
    };
    this.held = new Uint8Array(0);
    while (i < data.length) {
      const b = data[i]!;
      if (isPlainByte(b)) {
        i++;
        continue;
      }
      let verdict: Verdict =
        b === ESC ? escapeSequence(data, i) : b >= 0x80 ? utf8Character(data, i) : { escape: 1 };
      if (verdict === 'incomplete') {
        if (!final) {
          this.held = Uint8Array.from(data.subarray(i));
          break;
        }
        verdict = { escape: 1 };
      }
      if ('pass' in verdict) i += verdict.pass;
      else escapeBytes(verdict.escape);
    }
    const end = this.held.length > 0 ? data.length - this.held.length : data.length;
    if (end > runStart) out.push(data.subarray(runStart, end));
    return Buffer.concat(out);
  }
}
