import type { BootStart } from '../log-view.js';
import type { ReplicatorCore } from './replicator-core.js';

/** The boot records after renumbering: the stream's current boot, then the local boots after it. */
export async function adoptedBoots(
  core: ReplicatorCore,
  from: number,
  to: number,
  localBoots: readonly BootStart[],
): Promise<BootStart[]> {
  const delta = to - from;
  const spoolBoots = localBoots.filter((b) => b.offset >= from);
  const st = await core.owner();
  const current = st.boot;
  if (current === null) return spoolBoots.map((b) => ({ ...b, offset: b.offset + delta }));
  let start = to;
  try {
    start = (await core.options.shared.bootRange(core.options.guestId, current)).start;
  } catch {
    // not recorded (trimmed): it started before what the stream keeps
  }
  return [
    { boot: current, offset: Math.min(start, to), atMs: 0 },
    ...spoolBoots.map((b, i) => ({ boot: current + 1 + i, offset: b.offset + delta, atMs: b.atMs })),
  ];
}
