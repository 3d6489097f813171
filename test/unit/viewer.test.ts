/**
 * Viewer (sidecar/console/viewer.ts) on a real WebSocket pair, no daemon: output
 * pumped from the ring in frames of at most maxFrameBytes, positioned control
 * messages right after the byte before their offset (live and catching up), the skip
 * when the viewer is more than viewerBufferBytes behind, frames shared between
 * viewers at one offset, and input paused for two reasons at once.
 */
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { WebSocket, WebSocketServer } from 'ws';
import { OutputRing } from '../../sidecar/console/output-ring.js';
import { type FrameCache, Viewer, type ViewerLimits } from '../../sidecar/console/viewer.js';
import { waitFor } from '../support/wait.js';

/** What the client received, in order: binary frames as text, control messages parsed. */
type Received = { bytes: string } | { json: Record<string, unknown> };

interface Pair {
  readonly server: WebSocket;
  readonly client: WebSocket;
  readonly received: Received[];
}

const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
const clients: WebSocket[] = [];

afterEach(() => {
  for (const c of clients.splice(0)) c.terminate();
});

afterAll(async () => {
  await new Promise<void>((resolve) => wss.close(() => resolve()));
});

async function pair(): Promise<Pair> {
  await (wss.address() ? Promise.resolve() : once(wss, 'listening'));
  const { port } = wss.address() as AddressInfo;
  const accepted = once(wss, 'connection') as Promise<[WebSocket]>;
  const client = new WebSocket(`ws://127.0.0.1:${port}/`);
  clients.push(client);
  const received: Received[] = [];
  client.on('message', (data, isBinary) => {
    const buf = data as Buffer;
    received.push(isBinary ? { bytes: buf.toString('latin1') } : { json: JSON.parse(buf.toString('utf8')) });
  });
  const [[server]] = await Promise.all([accepted, once(client, 'open')]);
  return { server, client, received };
}

function viewer(ws: WebSocket, limits: Partial<ViewerLimits> = {}, onRoom = () => {}): Viewer {
  return new Viewer(
    ws,
    'g1',
    'v1',
    { mode: 'rw', name: 'alice', tokenId: 't1', remote: '127.0.0.1', origin: undefined },
    { viewerBufferBytes: 1 << 20, socketHighWaterBytes: 1 << 20, maxFrameBytes: 4, ...limits },
    onRoom,
  );
}

function ringWith(start: number, text: string): OutputRing {
  const ring = new OutputRing(start);
  ring.append(start, Buffer.from(text, 'latin1'));
  return ring;
}

describe('Viewer', () => {
  it('sends the ring from its cursor in frames of maxFrameBytes, with a positioned message right after its byte', async () => {
    const p = await pair();
    const v = viewer(p.server);
    const ring = ringWith(100, 'abcdefghij');
    v.goLive(102);
    v.sendAfter(105, { type: 'boot', boot: 2, offset: 105 });
    expect(v.pump(ring, new Map(), Date.now())).toBe(3);
    await waitFor('four messages', () => p.received.length === 4);
    expect(p.received).toEqual([
      { bytes: 'cde' },
      { json: { type: 'boot', boot: 2, offset: 105 } },
      { bytes: 'fghi' },
      { bytes: 'j' },
    ]);
    expect(v.next).toBe(110);
    expect(v.stats).toMatchObject({ bytesSent: 8, framesSent: 3, skippedBytes: 0 });
  });

  it('a message positioned at or before the cursor goes out at once; one past the ring waits for its byte', async () => {
    const p = await pair();
    const v = viewer(p.server);
    const ring = ringWith(0, 'xy');
    v.goLive(2);
    v.sendAfter(1, { type: 'boot', boot: 1, offset: 1 });
    v.sendAfter(3, { type: 'boot', boot: 2, offset: 3 });
    await waitFor('the due message', () => p.received.length === 1);
    ring.append(2, Buffer.from('z'));
    v.pump(ring, new Map(), Date.now());
    await waitFor('the byte and the message after it', () => p.received.length === 3);
    expect(p.received).toEqual([
      { json: { type: 'boot', boot: 1, offset: 1 } },
      { bytes: 'z' },
      { json: { type: 'boot', boot: 2, offset: 3 } },
    ]);
  });

  it('viewers at the same offset share one encoded frame from the cache', async () => {
    const [p1, p2] = [await pair(), await pair()];
    const [v1, v2] = [viewer(p1.server), viewer(p2.server)];
    const ring = ringWith(0, 'abcd');
    const cache: FrameCache = new Map();
    v1.goLive(0);
    v2.goLive(0);
    v1.pump(ring, cache, Date.now());
    const frame = cache.get(0);
    expect(frame?.wire).toEqual(Buffer.from([0x82, 4, ...Buffer.from('abcd')]));
    v2.pump(ring, cache, Date.now());
    expect(cache.get(0)).toBe(frame);
    await waitFor('both viewers got the frame', () => p1.received.length === 1 && p2.received.length === 1);
    expect(p2.received).toEqual([{ bytes: 'abcd' }]);
  });

  it('a viewer whose socket has no room and is more than viewerBufferBytes behind skips to the ring end and is told', async () => {
    const p = await pair();
    const v = viewer(p.server, { socketHighWaterBytes: 0, viewerBufferBytes: 5 });
    const ring = ringWith(0, 'abcdefgh');
    v.goLive(1);
    v.sendAfter(4, { type: 'boot', boot: 3, offset: 4 });
    expect(v.pump(ring, new Map(), 1234)).toBe(0);
    await waitFor('the skip and the message it passed', () => p.received.length === 2);
    expect(p.received).toEqual([
      { json: { type: 'skipped', bytes: 7, offset: 8 } },
      { json: { type: 'boot', boot: 3, offset: 4 } },
    ]);
    expect(v.next).toBe(8);
    expect(v.behindSinceMs).toBe(1234);
    expect(v.stats).toMatchObject({ skippedBytes: 7, skipEpisodes: 1, bytesSent: 0 });
  });

  it('stops at a full socket and calls onRoom once the client has read it down', async () => {
    const p = await pair();
    // Larger than what loopback took in one write here (4 MiB frames once all went at once).
    const frame = 16 << 20;
    const ring = new OutputRing(0);
    ring.append(0, Buffer.alloc(3 * frame, 0x61));
    let rooms = 0;
    // onRoom pumps again, as the hub does.
    const v = viewer(
      p.server,
      { socketHighWaterBytes: 1, maxFrameBytes: frame, viewerBufferBytes: 64 << 20 },
      () => {
        rooms++;
        v.pump(ring, new Map(), Date.now());
      },
    );
    v.goLive(0);
    // Loopback takes a few hundred KiB at once, not 16 MiB: the first frame leaves the socket over its mark.
    expect(v.pump(ring, new Map(), Date.now())).toBe(1);
    expect(v.hasRoom).toBe(false);
    expect(v.behindSinceMs).not.toBeNull();
    await waitFor('every frame, sent as room came', () => p.received.length === 3);
    expect(rooms).toBeGreaterThanOrEqual(1);
    expect(v.next).toBe(3 * frame);
    expect(p.received.every((r) => 'bytes' in r && r.bytes.length === frame)).toBe(true);
    expect(v.stats.skippedBytes).toBe(0);
    expect(v.behindSinceMs).toBeNull();
  });

  it('a viewer whose cursor fell out of the ring skips to its end before sending', async () => {
    const p = await pair();
    const v = viewer(p.server);
    const ring = ringWith(50, 'tail');
    v.goLive(10);
    v.pump(ring, new Map(), Date.now());
    await waitFor('the skip', () => p.received.length === 1);
    expect(p.received).toEqual([{ json: { type: 'skipped', bytes: 44, offset: 54 } }]);
  });

  it('catching up splits the log bytes around a positioned message; goLive then hands it to the ring', async () => {
    const p = await pair();
    const v = viewer(p.server);
    expect(v.state).toBe('catching-up');
    v.sendAfter(13, { type: 'boot', boot: 4, offset: 13 });
    await v.sendCatchUp(10, Buffer.from('012345'));
    await waitFor('three messages', () => p.received.length === 3);
    expect(p.received).toEqual([
      { bytes: '012' },
      { json: { type: 'boot', boot: 4, offset: 13 } },
      { bytes: '345' },
    ]);
    v.goLive(16);
    expect(v.state).toBe('live');
  });

  it('input stays paused while either reason holds, and the socket is read again when both are lifted', async () => {
    const p = await pair();
    const v = viewer(p.server);
    const got: string[] = [];
    p.server.on('message', (data) => got.push(String(data)));
    expect(v.pauseInput('guest')).toBe(true);
    expect(v.pauseInput('guest')).toBe(false);
    expect(v.pauseInput('rate')).toBe(true);
    expect(p.server.isPaused).toBe(true);
    p.client.send('held');
    v.resumeInput('guest');
    expect(p.server.isPaused).toBe(true);
    expect(v.inputPauses).toEqual(['rate']);
    // A frame sent after the resume: it can only arrive after the held one, so the
    // held one's arrival is the signal that reading started again.
    v.resumeInput('rate');
    expect(p.server.isPaused).toBe(false);
    p.client.send('after');
    await waitFor('both frames', () => got.length === 2);
    expect(got).toEqual(['held', 'after']);
  });

  it('after markClosed nothing is pumped and a catch-up waiting for room returns', async () => {
    const p = await pair();
    let rooms = 0;
    const v = viewer(p.server, { socketHighWaterBytes: 0 }, () => rooms++);
    const waiting = v.sendCatchUp(0, Buffer.from('abc'));
    v.markClosed();
    await waiting;
    expect(v.state).toBe('closed');
    expect(v.open).toBe(false);
    v.goLive(0);
    expect(v.state).toBe('closed');
    expect(v.pump(ringWith(0, 'more'), new Map(), Date.now())).toBe(0);
    expect(rooms).toBe(0);
  });
});
