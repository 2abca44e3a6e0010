// A describe block whose beforeAll throws: vitest marks its two tests skipped, not failed.
import {beforeAll, describe, expect, test} from 'vitest';

describe('suite with a broken setup', () => {
  beforeAll(() => {
    throw new Error('fixture: beforeAll fails');
  });
  test('skipped because setup failed (1)', () => expect(1).toBe(1));
  test('skipped because setup failed (2)', () => expect(1).toBe(1));
});

test('passes', () => expect(1).toBe(1));
