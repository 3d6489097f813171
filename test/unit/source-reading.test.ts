/**
 * Pausing a source's reading (sources/source.ts `pauseReading`/`resumeReading`), on a
 * real TCP connection: reasons are counted, so two holders compose (reading resumes only
 * when neither holds it), and bytes sent meanwhile wait in the kernel, none lost.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { type Cleanups, connectedTcpSource } from '../support/tcp-source.js';
import { sleep, waitFor } from '../support/wait.js';

const cleanups: Cleanups = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});

describe('Source reading holds', () => {
  it('resumes only when every reason let go, and loses nothing held meanwhile', async () => {
    // Held before the connection: it starts paused.
    const {
      source,
      guest,
      reads: received,
    } = await connectedTcpSource(cleanups, (source) => source.pauseReading('overflow'));

    guest.write('first');
    // A sleep: nothing is read while paused, so there is no event to wait for; 300 ms
    // is many times what a read of a ready socket takes.
    await sleep(300);
    expect(received.length).toBe(0);
    source.pauseReading('handover');
    source.resumeReading('overflow');
    guest.write(' second');
    await sleep(300); // a sleep, as above
    expect(received.length).toBe(0); // 'handover' still holds it
    expect(source.readingPaused).toBe(true);
    source.resumeReading('handover');
    expect(source.readingPaused).toBe(false);
    await waitFor('the held bytes', () => Buffer.concat(received).toString() === 'first second');
    // Letting go of a reason nobody holds changes nothing.
    source.resumeReading('overflow');
    expect(source.readingPaused).toBe(false);
  });
});
