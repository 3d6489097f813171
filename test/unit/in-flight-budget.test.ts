/**
 * The host's bound on bytes in flight (store/replication/in-flight-budget.ts): a guest
 * with appends under way sends another only within the bound; a guest with none may
 * always send one, so no guest waits on the others.
 */
import { describe, expect, it } from 'vitest';
import { InFlightBudget } from '../../store/replication/in-flight-budget.js';

describe('in-flight budget', () => {
  it('allows within the bound, and always a guest with nothing in flight', () => {
    const budget = new InFlightBudget(100);
    expect(budget.allows(1, 100)).toBe(true);
    budget.take(60);
    expect(budget.allows(1, 40)).toBe(true);
    expect(budget.allows(1, 41)).toBe(false);
    expect(budget.allows(0, 1000)).toBe(true);
    budget.take(1000);
    expect(budget.used).toBe(1060);
    budget.give(1000);
    budget.give(60);
    expect(budget.used).toBe(0);
    expect(budget.allows(3, 100)).toBe(true);
  });
});
