/**
 * Every error code consoled can return is documented.
 * README.md must have, for each code in `ERROR_CODES`, a line (a row of its error
 * table) naming the code and the HTTP status that goes with it.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ERROR_CODES, type ErrorCode } from '../../common/errors.js';
import { REPO_ROOT } from '../support/daemon.js';

const README = join(REPO_ROOT, 'README.md');

describe('error codes', () => {
  it('README.md exists', () => {
    expect(
      existsSync(README),
      `${README} is missing: it must document every error code (see common/errors.ts)`,
    ).toBe(true);
  });

  it.each(Object.keys(ERROR_CODES) as ErrorCode[])(
    '%s is documented in README.md with its HTTP status',
    (code) => {
      if (!existsSync(README)) throw new Error(`${README} is missing, so ${code} is not documented`);
      const lines = readFileSync(README, 'utf8').split('\n');
      const word = new RegExp(`(^|[^A-Z0-9_])${code}([^A-Z0-9_]|$)`);
      const mentions = lines.filter((l) => word.test(l));
      expect(mentions.length, `${code} does not appear in README.md`).toBeGreaterThan(0);
      const status = new RegExp(`\\b${ERROR_CODES[code].http}\\b`);
      expect(
        mentions.some((l) => status.test(l)),
        `no line of README.md names ${code} together with its HTTP status ${ERROR_CODES[code].http}`,
      ).toBe(true);
    },
  );
});
