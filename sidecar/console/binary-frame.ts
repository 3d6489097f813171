/**
 * A WebSocket binary message as a server puts it on the wire (RFC 6455 section
 * 5.2: FIN, opcode 2, no mask, the payload length in 7, 16 or 64 bits), header and
 * payload in one buffer. A hub encodes each frame of output once per flush and
 * writes that same buffer to every viewer at the offset: one allocation and one
 * copy per frame instead of a header and a gathered write per viewer.
 */
export function encodeBinaryFrame(payload: Buffer): Buffer {
  const { frame, payloadAt } = allocBinaryFrame(payload.length);
  payload.copy(frame, payloadAt);
  return frame;
}

/**
 * A binary message of `length` payload bytes with its header written and its
 * payload, from `payloadAt` on, left to the caller to fill.
 */
export function allocBinaryFrame(length: number): { frame: Buffer; payloadAt: number } {
  const payloadAt = length < 126 ? 2 : length < 0x10000 ? 4 : 10;
  const frame = Buffer.allocUnsafe(payloadAt + length);
  frame[0] = 0x82; // FIN, binary
  if (payloadAt === 2) frame[1] = length;
  else if (payloadAt === 4) {
    frame[1] = 126;
    frame.writeUInt16BE(length, 2);
  } else {
    frame[1] = 127;
    frame.writeUInt32BE(Math.floor(length / 0x1_0000_0000), 2);
    frame.writeUInt32BE(length >>> 0, 6);
  }
  return { frame, payloadAt };
}
