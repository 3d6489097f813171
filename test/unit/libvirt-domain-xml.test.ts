/**
 * cli/libvirt-domain-xml.ts and cli/libvirt-serials.ts on the live XML libvirt 9.0 handed
 * a `started` hook (trimmed to the parts that matter, comments and `<console>` kept, as
 * libvirt writes them).
 */
import { describe, expect, it } from 'vitest';
import { parseDomainXml } from '../../cli/libvirt-domain-xml.js';
import { serialGuests } from '../../cli/libvirt-serials.js';

const UUID = '6f1f6a4e-1111-4222-8333-944455556666';

const LIVE_XML = `<domain type='qemu' id='1'>
  <name>consoled-probe</name>
  <uuid>${UUID}</uuid>
  <!-- a comment with <serial type='tcp'> in it -->
  <os>
    <cmdline>console=ttyS0 quiet &amp; more</cmdline>
  </os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <serial type='tcp'>
      <source mode='bind' host='127.0.0.1' service='45123' tls='no'/>
      <protocol type='raw'/>
      <log file='/tmp/lvprobe/serial.log'/>
      <target type='isa-serial' port='0'>
        <model name='isa-serial'/>
      </target>
      <alias name='serial0'/>
    </serial>
    <serial type='pty'>
      <source path='/dev/pts/0'/>
      <target type='isa-serial' port='1'>
        <model name='isa-serial'/>
      </target>
      <alias name='serial1'/>
    </serial>
    <serial type="unix">
      <source mode="bind" path="/run/a &amp; b.sock"/>
      <target port="2"/>
    </serial>
    <serial type='tcp'>
      <source mode='connect' host='10.0.0.1' service='4000'/>
      <target port='3'/>
    </serial>
    <serial type='file'>
      <source path='/var/log/x.log'/>
    </serial>
    <console type='tcp'>
      <source mode='bind' host='127.0.0.1' service='45123' tls='no'/>
      <target type='serial' port='0'/>
    </console>
  </devices>
</domain>
`;

describe('parseDomainXml', () => {
  it('finds the UUID, the name and every <serial> (not the <console>, not in comments)', () => {
    const domain = parseDomainXml(LIVE_XML);
    expect(domain.uuid).toBe(UUID);
    expect(domain.name).toBe('consoled-probe');
    expect(domain.serials.map((s) => s.type)).toEqual(['tcp', 'pty', 'unix', 'tcp', 'file']);
    expect(domain.serials[0]).toEqual({
      type: 'tcp',
      source: { mode: 'bind', host: '127.0.0.1', service: '45123', tls: 'no' },
      targetPort: 0,
    });
    expect(domain.serials[2]!.source).toEqual({ mode: 'bind', path: '/run/a & b.sock' });
  });

  it('refuses a document without a UUID', () => {
    expect(() => parseDomainXml('<domain><name>x</name></domain>')).toThrow(/no <uuid>/);
  });

  it('takes a self-closed <serial/> and an inactive pty without a path', () => {
    const domain = parseDomainXml(
      `<domain><uuid>${UUID}</uuid><devices><serial type='pty'/><serial type='pty'><target port='1'/></serial></devices></domain>`,
    );
    expect(domain.serials).toEqual([
      { type: 'pty', source: null, targetPort: null },
      { type: 'pty', source: null, targetPort: 1 },
    ]);
  });
});

describe('serialGuests', () => {
  it('names the first serial by the UUID and the others <uuid>-serialN, skipping what is not captured', () => {
    const guests = serialGuests(parseDomainXml(LIVE_XML));
    expect(guests.map((g) => g.id)).toEqual([
      UUID,
      `${UUID}-serial1`,
      `${UUID}-serial2`,
      `${UUID}-serial3`,
      `${UUID}-serial4`,
    ]);
    expect(guests[0]!.source).toEqual({ type: 'tcp', host: '127.0.0.1', port: 45123 });
    expect(guests[1]!.source).toEqual({ type: 'pty', path: '/dev/pts/0' });
    expect(guests[2]!.source).toEqual({ type: 'unix', path: '/run/a & b.sock' });
    expect(guests[3]!.source).toBeNull();
    expect(guests[3]!.skipped).toMatch(/mode connect/);
    expect(guests[4]!.skipped).toMatch(/file is not captured/);
  });

  it('dials a wildcard bind on loopback', () => {
    const guests = serialGuests(
      parseDomainXml(
        `<domain><uuid>${UUID}</uuid><devices><serial type='tcp'><source mode='bind' host='0.0.0.0' service='5000'/></serial></devices></domain>`,
      ),
    );
    expect(guests[0]!.source).toEqual({ type: 'tcp', host: '127.0.0.1', port: 5000 });
  });
});
