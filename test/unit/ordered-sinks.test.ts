/**
 * OrderedSinks (common/ordered-sinks.ts), the fixed order of the byte path: stages are
 * called in their declared order whatever the order of connecting, a sink that
 * disconnects during a call still gets that call (and no later one), and an unknown
 * stage is refused.
 */
import { describe, expect, it } from 'vitest';
import { OrderedSinks } from '../../common/ordered-sinks.js';

type Sink = (seen: string[]) => void;

describe('OrderedSinks', () => {
  it('calls stages in their declared order, whatever the order they connected in', () => {
    const sinks = new OrderedSinks<'first' | 'second' | 'third', Sink>(['first', 'second', 'third']);
    sinks.connect('third', (seen) => seen.push('third'));
    sinks.connect('first', (seen) => seen.push('first a'));
    sinks.connect('second', (seen) => seen.push('second'));
    sinks.connect('first', (seen) => seen.push('first b'));
    const seen: string[] = [];
    sinks.each((sink) => sink(seen));
    expect(seen).toEqual(['first a', 'first b', 'second', 'third']);
    expect(sinks.size).toBe(4);
  });

  it('lets a sink disconnect during a call: the call goes on, the next one skips it', () => {
    const sinks = new OrderedSinks<'a' | 'b', Sink>(['a', 'b']);
    const stop = sinks.connect('a', (seen) => {
      seen.push('a');
      stop();
    });
    sinks.connect('b', (seen) => seen.push('b'));
    const first: string[] = [];
    sinks.each((sink) => sink(first));
    expect(first).toEqual(['a', 'b']);
    const second: string[] = [];
    sinks.each((sink) => sink(second));
    expect(second).toEqual(['b']);
    stop(); // a second disconnect is harmless
    expect(sinks.size).toBe(1);
  });

  it('refuses a stage it was not given', () => {
    const sinks = new OrderedSinks<string, Sink>(['a']);
    expect(() => sinks.connect('z', () => undefined)).toThrow(/unknown stage z/);
  });
});
