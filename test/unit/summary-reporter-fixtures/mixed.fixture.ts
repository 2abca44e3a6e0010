// A file-level afterAll that throws, one failing test, one skipped test, and an error thrown
// from a timer after its test passed (vitest reports it as an unhandled error).
import {afterAll, expect, test} from 'vitest';

afterAll(() => {
  throw new Error('fixture: afterAll fails');
});

test('passes', () => expect(1).toBe(1));
test('fails', () => expect(1).toBe(2));
test.skip('skipped', () => expect(1).toBe(1));
test('passes, then throws from a timer', async () => {
  setTimeout(() => {
    throw new Error('fixture: unhandled error');
  }, 1);
  await new Promise((resolve) => setTimeout(resolve, 100));
});
