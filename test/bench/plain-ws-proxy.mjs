#!/usr/bin/env node
// The floor for a Node WebSocket proxy: each WebSocket client gets its own TCP
// connection to the target, binary frames one way and raw bytes the other, Nagle
// off on both sockets, no deflate, nothing else. The keystroke benchmark runs it
// beside consoled and websockify in front of the same echo guest.
//
//   node test/bench/plain-ws-proxy.mjs LISTEN_PORT TARGET_PORT   (prints "ready")
import { connect } from 'node:net';
import { WebSocketServer } from 'ws';

const [listenPort, targetPort] = process.argv.slice(2).map(Number);
const wss = new WebSocketServer({ port: listenPort, host: '127.0.0.1', perMessageDeflate: false });
wss.on('connection', (ws) => {
  const target = connect(targetPort, '127.0.0.1');
  target.setNoDelay(true);
  target.on('data', (chunk) => ws.send(chunk, { binary: true }));
  target.on('close', () => ws.close());
  target.on('error', () => ws.terminate());
  ws.on('message', (data) => target.write(data));
  ws.on('close', () => target.destroy());
});
wss.on('listening', () => process.stdout.write('ready\n'));
process.on('SIGTERM', () => process.exit(0)); // a clean exit, so that --cpu-prof writes its profile
