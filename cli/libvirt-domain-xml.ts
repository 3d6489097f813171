/**
 * The few parts of a libvirt domain XML the hook needs (README "libvirt"): the UUID,
 * the name and each `<serial>` with its `<source>` and `<target>`. libvirt hands the
 * hook its own well-formed output, so a small scanner of tags suffices: no DTDs, no
 * CDATA in these elements, attributes quoted with ' or ".
 */

/** One `<serial>` device as written in the XML. */
export interface DomainSerial {
  /** `type` of `<serial>`: `pty`, `tcp`, `unix`, `file`, … */
  readonly type: string;
  /** The attributes of its `<source>` (absent: no `<source>`). */
  readonly source: Readonly<Record<string, string>> | null;
  /** `<target port='N'>`, when given. */
  readonly targetPort: number | null;
}

export interface LibvirtDomain {
  readonly uuid: string;
  readonly name: string;
  readonly serials: readonly DomainSerial[];
}

const TAG =
  /<(\/?)([A-Za-z_][\w:.-]*)((?:\s+[\w:.-]+\s*=\s*(?:'[^']*'|"[^"]*"))*)\s*(\/?)>|<!--[\s\S]*?-->|<\?[\s\S]*?\?>/g;
const ATTRIBUTE = /([\w:.-]+)\s*=\s*(?:'([^']*)'|"([^"]*)")/g;

function decodeEntities(text: string): string {
  return text.replace(/&(#x[0-9a-fA-F]+|#\d+|amp|lt|gt|quot|apos);/g, (_, ref: string) => {
    if (ref.startsWith('#x')) return String.fromCodePoint(Number.parseInt(ref.slice(2), 16));
    if (ref.startsWith('#')) return String.fromCodePoint(Number.parseInt(ref.slice(1), 10));
    return { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" }[ref] ?? '';
  });
}

function attributesOf(text: string): Record<string, string> {
  const attributes: Record<string, string> = {};
  for (const m of text.matchAll(ATTRIBUTE)) attributes[m[1]!] = decodeEntities(m[2] ?? m[3] ?? '');
  return attributes;
}

/** Parses the domain XML libvirt gives a hook on stdin; throws when it has no UUID. */
export function parseDomainXml(xml: string): LibvirtDomain {
  const stack: string[] = [];
  const texts = new Map<string, string>();
  const serials: DomainSerial[] = [];
  let serial: { type: string; source: Record<string, string> | null; targetPort: number | null } | null =
    null;
  let last = 0;
  for (const m of xml.matchAll(TAG)) {
    const text = xml.slice(last, m.index);
    last = m.index + m[0].length;
    const path = stack.join('/');
    if (path === 'domain/uuid' || path === 'domain/name') texts.set(path, decodeEntities(text).trim());
    const name = m[2];
    if (name === undefined) continue; // a comment or a processing instruction
    if (m[1] === '/') {
      if (stack.pop() === 'serial' && stack.join('/') === 'domain/devices' && serial) {
        serials.push(serial);
        serial = null;
      }
      continue;
    }
    const attributes = attributesOf(m[3] ?? '');
    const parent = stack.join('/');
    if (name === 'serial' && parent === 'domain/devices') {
      serial = { type: attributes['type'] ?? '', source: null, targetPort: null };
      if (m[4] === '/') {
        serials.push(serial);
        serial = null;
        continue;
      }
    } else if (serial && parent === 'domain/devices/serial') {
      if (name === 'source' && serial.source === null) serial.source = attributes;
      if (name === 'target' && attributes['port'] !== undefined && /^\d+$/.test(attributes['port']))
        serial.targetPort = Number(attributes['port']);
    }
    if (m[4] !== '/') stack.push(name);
  }
  const uuid = texts.get('domain/uuid');
  if (!uuid) throw new Error('the domain XML has no <uuid>');
  return { uuid, name: texts.get('domain/name') ?? '', serials };
}
