/**
 * encodeBinaryFrame (sidecar/console/binary-frame.ts): messages encoded by hand and
 * written to a real server-side socket reach a real `ws` client whole, at every
 * length encoding (7-bit, 16-bit, 64-bit) and across their boundaries.
 */
import { once } from 'node:events';
import type { AddressInfo, Socket } from 'node:net';
import { afterAll, describe, expect, it } from 'vitest';
import { WebSocket, WebSocketServer } from 'ws';
import { encodeBinaryFrame } from '../../sidecar/console/binary-frame.js';
import { waitFor } from '../support/wait.js';

const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });

afterAll(async () => {
  await new Promise<void>((resolve) => wss.close(() => resolve()));
});

describe('encodeBinaryFrame', () => {
  it('heads a payload with FIN, opcode 2 and the shortest length encoding', () => {
    expect([...encodeBinaryFrame(Buffer.from('hi'))]).toEqual([0x82, 2, 0x68, 0x69]);
    expect([...encodeBinaryFrame(Buffer.alloc(126)).subarray(0, 4)]).toEqual([0x82, 126, 0, 126]);
    expect([...encodeBinaryFrame(Buffer.alloc(65536)).subarray(0, 10)]).toEqual([
      0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0,
    ]);
  });

  it('is read back whole by a ws client at every length encoding', async () => {
    if (!wss.address()) await once(wss, 'listening');
    const { port } = wss.address() as AddressInfo;
    const accepted = once(wss, 'connection') as Promise<[WebSocket, { socket: Socket }]>;
    const client = new WebSocket(`ws://127.0.0.1:${port}/`);
    const received: Buffer[] = [];
    client.on('message', (data, isBinary) => {
      expect(isBinary).toBe(true);
      received.push(data as Buffer);
    });
    const [[, req]] = await Promise.all([accepted, once(client, 'open')]);
    const lengths = [1, 125, 126, 127, 65535, 65536, 200_000];
    const payloads = lengths.map((n, i) => Buffer.alloc(n, 0x41 + i));
    for (const payload of payloads) req.socket.write(encodeBinaryFrame(payload));
    await waitFor('every message arrived', () => received.length === payloads.length);
    expect(received.map((b) => b.length)).toEqual(lengths);
    expect(received.every((b, i) => b.equals(payloads[i]!))).toBe(true);
    client.terminate();
  });
});
