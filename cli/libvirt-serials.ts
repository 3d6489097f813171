/**
 * Which consoled guest each `<serial>` of a libvirt domain becomes (README "libvirt"):
 * the first `<serial>` is the guest `<uuid>` (nova's instance UUID), the one at
 * position N (counted from 0, in the XML's order) is `<uuid>-serialN`. Captured:
 * `tcp` and `unix` with `mode='bind'` (QEMU listens, consoled dials: sources `tcp`
 * and `unix`) and `pty` (the slave path of the live XML). Anything else is skipped,
 * with the reason.
 */
import { isGuestId } from '../common/guest-id.js';
import type { SourceSpec } from '../sidecar/sources/create-source.js';
import type { DomainSerial, LibvirtDomain } from './libvirt-domain-xml.js';

export interface SerialGuest {
  /** The consoled guest id. */
  readonly id: string;
  /** What to attach; null when the serial is not captured (see `skipped`). */
  readonly source: SourceSpec | null;
  readonly skipped: string | null;
}

/** A wildcard address QEMU binds is dialled on loopback. */
function dialHost(host: string | undefined): string {
  if (host === undefined || host === '' || host === '0.0.0.0') return '127.0.0.1';
  if (host === '::') return '::1';
  return host;
}

function sourceOf(serial: DomainSerial): SourceSpec | string {
  const source = serial.source ?? {};
  switch (serial.type) {
    case 'tcp': {
      if (source['mode'] !== 'bind') return `tcp mode ${source['mode'] ?? '(none)'}: QEMU does not listen`;
      const service = source['service'] ?? '';
      if (!/^\d+$/.test(service) || Number(service) > 65535) return `tcp service ${service} is not a port`;
      return { type: 'tcp', host: dialHost(source['host']), port: Number(service) };
    }
    case 'unix': {
      if (source['mode'] !== 'bind') return `unix mode ${source['mode'] ?? '(none)'}: QEMU does not listen`;
      const path = source['path'] ?? '';
      if (!path.startsWith('/')) return 'unix socket without an absolute path';
      return { type: 'unix', path };
    }
    case 'pty': {
      const path = source['path'] ?? '';
      if (!path.startsWith('/')) return 'pty without a path (not started yet)';
      return { type: 'pty', path };
    }
    default:
      return `serial type ${serial.type || '(none)'} is not captured`;
  }
}

/** The guests of `domain`'s serials, in the XML's order. */
export function serialGuests(domain: LibvirtDomain): SerialGuest[] {
  return domain.serials.map((serial, index) => {
    const id = index === 0 ? domain.uuid : `${domain.uuid}-serial${index}`;
    if (!isGuestId(id)) return { id, source: null, skipped: `${id} is not a valid guest id` };
    const source = sourceOf(serial);
    return typeof source === 'string' ? { id, source: null, skipped: source } : { id, source, skipped: null };
  });
}
