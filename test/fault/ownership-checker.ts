/**
 * The invariants of the ownership fault test (docs/design.md "Ownership"), checked on
 * what a history left: the raw stream (every entry with its host, epoch and capture
 * time), each host's local log, and what the hosts said when asked during the run.
 * Pure: it takes data, returns the violations found.
 */
import { MARKER_REGEX } from '../../common/marker.js';
import type { MarkerRecord } from '../../store/marker-index.js';

export interface CheckedEntry {
  readonly offset: number;
  readonly bytes: Buffer;
  readonly host: string;
  readonly epoch: number;
  readonly timestampMs: number;
}

export interface LocalCopy {
  readonly host: string;
  /** The host's role for the guest when its log was read. */
  readonly role: string;
  readonly start: number;
  readonly bytes: Buffer;
}

/** A live handoff the history completed: `source` must never append again, unless re-admitted. */
export interface CompletedHandoff {
  readonly source: string;
  readonly destEpoch: number;
  readonly atMs: number;
}

/** An attach that may legitimately make `host` an owner again (explicit or incoming), at `atMs`. */
export interface Admission {
  readonly host: string;
  readonly atMs: number;
}

/**
 * An upgrade or a reload of `host`, which owned the guest at `epoch` with nothing
 * else under way (docs/design.md "Upgrade"): from `fromMs` to `toMs` the old process
 * and its successor share the host id and epoch, and neither writes a marker.
 */
export interface Handover {
  readonly host: string;
  readonly epoch: number;
  readonly fromMs: number;
  readonly toMs: number;
  readonly what: string;
  /**
   * Markers the guest's local log held when it began: captured before it, they may still
   * reach the stream during it (the first segment of a guest that just started). Only a
   * marker after these is one the handover wrote.
   */
  readonly markersBefore?: number;
}

export interface CheckInput {
  readonly guest: string;
  /** consoled's markers in the stream (the replicated marker index): what the checker takes for markers. */
  readonly markers: readonly MarkerRecord[];
  readonly entries: readonly CheckedEntry[];
  /** Spans the stream jumped over on purpose (the skips key): `[from, to)`. */
  readonly skips: ReadonlyArray<readonly [number, number]>;
  readonly locals: readonly LocalCopy[];
  readonly handoffs: readonly CompletedHandoff[];
  readonly admissions: readonly Admission[];
  /** Upgrades and reloads that ran alone (none when absent). */
  readonly handovers?: readonly Handover[];
}

const TICK = /^TICK (\S+) (\d+)$/;
/**
 * Markers that say output went missing here: a gap, a reattach (nobody read the
 * chardev meanwhile), a boot, a release, a suppression. A handoff marker alone does
 * not: a clean handoff loses nothing.
 */
const EXPLAINS_A_HOLE =
  /\[consoled\] (capture gap|reattached|boot \d+ started|released by|\d+ bytes suppressed)/;

export function checkGuest(input: CheckInput): string[] {
  const v: string[] = [];
  const { guest, entries } = input;
  const say = (what: string): void => {
    v.push(`${guest}: ${what}`);
  };

  // Entries follow each other, except across a recorded skip.
  for (let i = 1; i < entries.length; i++) {
    const prev = entries[i - 1]!;
    const cur = entries[i]!;
    const end = prev.offset + prev.bytes.length;
    if (cur.offset !== end && !input.skips.some(([from, to]) => from === end && to === cur.offset))
      say(`entry at ${cur.offset} follows one that ended at ${end}, with no skip recorded`);
  }

  // Epochs never decrease; each epoch's entries come from one host.
  const hostOfEpoch = new Map<number, string>();
  let lastEpoch = 0;
  for (const e of entries) {
    if (e.epoch < lastEpoch) say(`epoch went back from ${lastEpoch} to ${e.epoch} at offset ${e.offset}`);
    lastEpoch = Math.max(lastEpoch, e.epoch);
    const h = hostOfEpoch.get(e.epoch);
    if (h === undefined) hostOfEpoch.set(e.epoch, e.host);
    else if (h !== e.host) say(`epoch ${e.epoch} has entries from ${h} and ${e.host} (offset ${e.offset})`);
  }

  // Once a handoff completed, the source never appends again unless re-admitted later.
  for (const h of input.handoffs) {
    const readmitted = input.admissions.find((a) => a.host === h.source && a.atMs > h.atMs);
    for (const e of entries) {
      if (e.host !== h.source || e.epoch < h.destEpoch) continue;
      if (!readmitted || e.timestampMs < readmitted.atMs)
        say(
          `${h.source} appended at epoch ${e.epoch} (offset ${e.offset}) after handing off at epoch ${h.destEpoch}`,
        );
    }
  }

  // Across an upgrade or reload: one host, one epoch, no new marker, in the stream.
  const markersByOffset = [...input.markers].sort((a, b) => a.offset - b.offset);
  for (const h of input.handovers ?? []) {
    const newMarkersFrom = markersByOffset[h.markersBefore ?? 0]?.offset ?? Number.POSITIVE_INFINITY;
    for (const e of entries) {
      if (e.timestampMs < h.fromMs || e.timestampMs > h.toMs) continue;
      if (e.host !== h.host || e.epoch !== h.epoch)
        say(
          `${e.host} appended at epoch ${e.epoch} (offset ${e.offset}) during ${h.what}, while ${h.host} owned at epoch ${h.epoch}`,
        );
      const marker = markersByOffset.find(
        (m) => m.offset >= newMarkersFrom && m.offset >= e.offset && m.offset < e.offset + e.bytes.length,
      );
      if (marker) say(`a ${marker.kind} marker at ${marker.offset} was captured during ${h.what}`);
    }
  }

  // Markers come from the index, not the text (a guest can print a lookalike); these
  // guests print none, so every marker-looking span must be in the index, and every
  // index record must sit on a marker's bytes.
  const text = Buffer.concat(entries.map((e) => e.bytes)).toString('latin1');
  // Text positions and stream offsets part where the stream skips (a recorded skip).
  const spans: Array<{ offset: number; at: number; length: number }> = [];
  let at = 0;
  for (const e of entries) {
    spans.push({ offset: e.offset, at, length: e.bytes.length });
    at += e.bytes.length;
  }
  const textAt = (offset: number): number | null => {
    const span = spans.find((x) => offset >= x.offset && offset < x.offset + x.length);
    return span ? span.at + (offset - span.offset) : null;
  };
  const offsetAt = (pos: number): number => {
    const span = spans.find((x) => pos >= x.at && pos < x.at + x.length) ?? spans[spans.length - 1];
    return span ? span.offset + (pos - span.at) : pos;
  };
  const positioned = input.markers.flatMap((m) => {
    const p = textAt(m.offset);
    return p === null ? [] : [{ ...m, at: p }];
  });
  const indexed = new Set(positioned.map((m) => m.at));
  for (const m of positioned) {
    const bytes = text.slice(m.at, m.at + m.length);
    if (!/^\r\n\[consoled\] [^\r\n]*\r\n$/.test(bytes))
      say(
        `the marker index lists ${m.kind} at ${m.offset}, where the stream holds ${JSON.stringify(bytes.slice(0, 40))}`,
      );
  }
  for (const m of text.matchAll(MARKER_REGEX)) {
    if (!indexed.has(m.index))
      say(`a marker at ${offsetAt(m.index)} is missing from the marker index: ${JSON.stringify(m[0])}`);
  }

  // Numbered lines: at most once, in order; every hole carries a marker; nothing stale.
  let last: number | null = null;
  let markerSince = false;
  let pos = 0;
  const pieces = splitMarkers(text, positioned);
  for (const piece of pieces) {
    if (piece.marker) {
      if (EXPLAINS_A_HOLE.test(piece.text)) markerSince = true;
      pos += piece.text.length;
      continue;
    }
    const lines = piece.text.split('\r\n');
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i]!;
      const whole = i < lines.length - 1; // ended by \r\n inside this piece
      if (line.includes('STALE')) say(`a stale chardev's line reached the stream: ${JSON.stringify(line)}`);
      const m = whole ? TICK.exec(line) : null;
      if (m && m[1] === guest) {
        const n = Number(m[2]);
        if (last !== null && n <= last) say(`line ${n} after line ${last} (duplicate or out of order)`);
        else if (last !== null && n > last + 1 && !markerSince)
          say(
            `lines ${last + 1}..${n - 1} missing with no marker at the hole (before offset ${offsetAt(pos)})`,
          );
        last = n;
        markerSince = false;
      }
      pos += line.length + (whole ? 2 : 0);
    }
  }

  // Each host's local log equals the stream where that host published.
  for (const local of input.locals) {
    if (local.role === 'follower' || local.role === 'cancelled' || local.role === 'incoming') continue;
    const localEnd = local.start + local.bytes.length;
    for (const e of entries) {
      if (e.host !== local.host) continue;
      const from = Math.max(e.offset, local.start);
      const to = Math.min(e.offset + e.bytes.length, localEnd);
      if (from >= to) continue;
      const a = e.bytes.subarray(from - e.offset, to - e.offset);
      const b = local.bytes.subarray(from - local.start, to - local.start);
      if (!a.equals(b)) {
        say(`${local.host}'s local log differs from the stream in [${from}, ${to}) (role ${local.role})`);
        break;
      }
    }
  }
  return v;
}

/** The text cut into marker spans (from the index, at their text positions) and what lies between them. */
function splitMarkers(
  text: string,
  markers: ReadonlyArray<{ readonly at: number; readonly length: number }>,
): Array<{ marker: boolean; text: string }> {
  const out: Array<{ marker: boolean; text: string }> = [];
  let at = 0;
  for (const m of [...markers].sort((x, y) => x.at - y.at)) {
    if (m.at < at || m.at >= text.length) continue;
    if (m.at > at) out.push({ marker: false, text: text.slice(at, m.at) });
    out.push({ marker: true, text: text.slice(m.at, m.at + m.length) });
    at = m.at + m.length;
  }
  if (at < text.length) out.push({ marker: false, text: text.slice(at) });
  return out;
}
