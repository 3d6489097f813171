/**
 * The fault test's checker must be able to fail: each invariant is shown a history
 * that breaks it (and a clean one that does not).
 */
import { describe, expect, it } from 'vitest';
import { formatMarker, MARKER_REGEX } from '../../common/marker.js';
import type { MarkerRecord } from '../../store/marker-index.js';
import { type CheckedEntry, type CheckInput, checkGuest } from '../fault/ownership-checker.js';

const MARK = formatMarker({ kind: 'reattach', at: new Date(0) }).toString('latin1');

function ticks(from: number, to: number): string {
  let s = '';
  for (let n = from; n < to; n++) s += `TICK g ${n}\r\n`;
  return s;
}

/** Entries from `[host, epoch, text]` laid back to back from offset 0. */
function entries(...parts: Array<[string, number, string, number?]>): CheckedEntry[] {
  let offset = 0;
  return parts.map(([host, epoch, text, t]) => {
    const e = { offset, bytes: Buffer.from(text, 'latin1'), host, epoch, timestampMs: t ?? 0 };
    offset += e.bytes.length;
    return e;
  });
}

/** The markers in `list`'s bytes, as the marker index would list them. */
function indexOf(list: CheckedEntry[]): MarkerRecord[] {
  const base = list[0]?.offset ?? 0;
  const text = Buffer.concat(list.map((e) => e.bytes)).toString('latin1');
  return [...text.matchAll(MARKER_REGEX)].map((m) => ({
    offset: base + m.index,
    length: m[0].length,
    kind: 'reattach',
  }));
}

function input(list: CheckedEntry[], extra: Partial<CheckInput> = {}): CheckInput {
  return {
    guest: 'g',
    entries: list,
    markers: indexOf(list),
    skips: [],
    locals: [],
    handoffs: [],
    admissions: [],
    ...extra,
  };
}

describe('ownership checker', () => {
  it('passes a clean history with a marked hole and a handoff', () => {
    const list = entries(['a', 1, ticks(0, 5)], ['a', 1, MARK + ticks(9, 12)], ['b', 2, ticks(12, 15), 10]);
    const local = Buffer.concat(list.slice(2).map((e) => e.bytes));
    expect(
      checkGuest(
        input(list, {
          locals: [{ host: 'b', role: 'owner', start: list[2]!.offset, bytes: local }],
          handoffs: [{ source: 'a', destEpoch: 2, atMs: 5 }],
        }),
      ),
    ).toEqual([]);
  });

  it('takes markers from the index: a lookalike the index does not list explains nothing, an unlisted marker is reported', () => {
    const list = entries(['a', 1, ticks(0, 3) + MARK + ticks(7, 8)]);
    const v = checkGuest(input(list, { markers: [] })).join('\n');
    expect(v).toMatch(/lines 3\.\.6 missing with no marker/);
    expect(v).toMatch(/missing from the marker index/);
    const wrong = checkGuest(input(list, { markers: [{ offset: 0, length: 10, kind: 'gap' }] })).join('\n');
    expect(wrong).toMatch(/the marker index lists gap at 0/);
  });

  it('places indexed markers by offset across a recorded skip', () => {
    const first = entries(['a', 1, ticks(0, 2)])[0]!;
    const after = {
      offset: 500,
      bytes: Buffer.from(MARK + ticks(2, 3), 'latin1'),
      host: 'b',
      epoch: 2,
      timestampMs: 0,
    };
    const list = [first, after];
    const end = first.bytes.length;
    const markers: MarkerRecord[] = [{ offset: 500, length: MARK.length, kind: 'reattach' }];
    expect(checkGuest(input(list, { markers, skips: [[end, 500]] }))).toEqual([]);
  });

  it('does not take a handoff marker for a hole marker', () => {
    const handoff = formatMarker({ kind: 'handoff-from', host: 'a', at: new Date(0) }).toString('latin1');
    const v = checkGuest(input(entries(['a', 1, ticks(0, 3)], ['b', 2, handoff + ticks(6, 8)])));
    expect(v.join('\n')).toMatch(/lines 3\.\.5 missing with no marker/);
  });

  it('finds a hole without a marker, a duplicate and a stale line', () => {
    const v = checkGuest(input(entries(['a', 1, ticks(0, 3) + ticks(5, 6) + ticks(5, 6) + 'STALE g 1\r\n'])));
    expect(v.join('\n')).toMatch(/lines 3\.\.4 missing with no marker/);
    expect(v.join('\n')).toMatch(/line 5 after line 5/);
    expect(v.join('\n')).toMatch(/stale chardev/);
  });

  it('finds an epoch going back and two hosts in one epoch', () => {
    const v = checkGuest(input(entries(['a', 2, ticks(0, 1)], ['b', 2, ticks(1, 2)], ['a', 1, ticks(2, 3)])));
    expect(v.join('\n')).toMatch(/epoch 2 has entries from a and b/);
    expect(v.join('\n')).toMatch(/epoch went back from 2 to 1/);
  });

  it('finds a source appending after its handoff unless it was admitted again later', () => {
    const list = entries(['a', 1, ticks(0, 1), 1], ['b', 2, ticks(1, 2), 2], ['a', 3, ticks(2, 3), 9]);
    const handoffs = [{ source: 'a', destEpoch: 2, atMs: 5 }];
    expect(checkGuest(input(list, { handoffs })).join('\n')).toMatch(/a appended at epoch 3/);
    expect(checkGuest(input(list, { handoffs, admissions: [{ host: 'a', atMs: 7 }] }))).toEqual([]);
  });

  it('finds a gap in offsets unless a skip is recorded, and a local log that differs', () => {
    const list = entries(['a', 1, ticks(0, 2)]);
    const moved = [...list, { ...list[0]!, offset: 100, bytes: Buffer.from(ticks(2, 3)) }];
    expect(checkGuest(input(moved)).join('\n')).toMatch(/follows one that ended at/);
    const end = list[0]!.bytes.length;
    expect(checkGuest(input(moved, { skips: [[end, 100]] }))).toEqual([]);
    const wrong = Buffer.from(ticks(0, 2).replace('1', '7'));
    expect(
      checkGuest(input(list, { locals: [{ host: 'a', role: 'owner', start: 0, bytes: wrong }] })).join('\n'),
    ).toMatch(/a's local log differs/);
  });

  it('finds another epoch, another host or a marker during an upgrade that ran alone', () => {
    const upgrade = { host: 'a', epoch: 1, fromMs: 10, toMs: 20, what: 'the upgrade of a' };
    const clean = entries(['a', 1, ticks(0, 2), 5], ['a', 1, ticks(2, 4), 15], ['a', 1, ticks(4, 6), 25]);
    expect(checkGuest(input(clean, { handovers: [upgrade] }))).toEqual([]);
    const newEpoch = entries(['a', 1, ticks(0, 2), 5], ['a', 2, ticks(2, 4), 15]);
    expect(checkGuest(input(newEpoch, { handovers: [upgrade] })).join('\n')).toMatch(
      /a appended at epoch 2 .* during the upgrade of a, while a owned at epoch 1/,
    );
    const claimed = entries(['a', 1, ticks(0, 2), 5], ['b', 2, ticks(2, 4), 15]);
    expect(checkGuest(input(claimed, { handovers: [upgrade] })).join('\n')).toMatch(
      /b appended at epoch 2 .* during the upgrade of a/,
    );
    // A marker outside the window is none of the upgrade's business; inside, it is.
    const marked = entries(['a', 1, ticks(0, 2), 5], ['a', 1, MARK + ticks(9, 10), 15]);
    expect(checkGuest(input(marked, { handovers: [upgrade] })).join('\n')).toMatch(
      /a reattach marker at \d+ was captured during the upgrade of a/,
    );
    expect(checkGuest(input(marked, { handovers: [{ ...upgrade, fromMs: 16 }] }))).toEqual([]);
    // A marker the log held before the window (a guest's first boot, its first segment
    // appended only now) is not the upgrade's; one after those is.
    expect(checkGuest(input(marked, { handovers: [{ ...upgrade, markersBefore: 1 }] }))).toEqual([]);
    expect(checkGuest(input(marked, { handovers: [{ ...upgrade, markersBefore: 0 }] })).join('\n')).toMatch(
      /a reattach marker at \d+ was captured during the upgrade of a/,
    );
  });
});
