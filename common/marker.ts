/**
 * Markers are lines consoled writes into the log itself, so anyone reading the
 * file, the stream or the API sees them. docs/design.md ("Words", "Markers")
 * fixes the frame: `\r\n[consoled] <event> ...\r\n`.
 */
export type MarkerEvent =
  | { kind: 'boot'; boot: number; at: Date }
  | { kind: 'suppressed'; bytes: number }
  /** `bytes` null: the count is not known here (a handoff forced while the source was unreachable). */
  | {
      kind: 'gap';
      bytes: number | null;
      reason:
        | 'queue-overflow'
        | 'disk-error'
        | 'fenced'
        | 'handoff-timeout'
        | 'spool-overflow'
        /** The chardev was not read while the guest may have printed (a restart not yet reconnected). */
        | 'not-connected'
        /** The stream jumped over bytes no local log holds any more (marked in the stream only). */
        | 'skipped';
    }
  | { kind: 'reattach'; at: Date }
  /** A source that could not be handed over at an upgrade (`exec`) started its program again. */
  | { kind: 'restarted'; at: Date; reason: 'upgrade' }
  | { kind: 'handoff-to'; host: string; at: Date }
  | { kind: 'handoff-from'; host: string; at: Date }
  /** The owner gave the stream up (a DELETE of the guest on its owner). */
  | { kind: 'release'; host: string; at: Date };

export const MARKER_PREFIX = '\r\n[consoled] ';

export function markerText(event: MarkerEvent): string {
  switch (event.kind) {
    case 'boot':
      return `boot ${event.boot} started at ${event.at.toISOString()}`;
    case 'suppressed':
      return `${event.bytes} bytes suppressed by rate limit`;
    case 'gap':
      return `capture gap: ${event.bytes ?? 'an unknown number of'} bytes lost (${event.reason})`;
    case 'reattach':
      return `reattached at ${event.at.toISOString()}`;
    case 'restarted':
      return `restarted at ${event.at.toISOString()} (${event.reason})`;
    case 'handoff-to':
      return `handoff to ${event.host} at ${event.at.toISOString()}`;
    case 'handoff-from':
      return `handoff from ${event.host} at ${event.at.toISOString()}`;
    case 'release':
      return `released by ${event.host} at ${event.at.toISOString()}`;
  }
}

export function formatMarker(event: MarkerEvent): Buffer {
  return Buffer.from(`${MARKER_PREFIX}${markerText(event)}\r\n`, 'latin1');
}

/** Matches one whole marker in a latin1-decoded log; tests use it to strip markers. */
export const MARKER_REGEX = /\r\n\[consoled\] [^\r\n]*\r\n/g;
