// A test module that throws while it is imported: vitest collects no test from it.
import {expect, test} from 'vitest';

throw new Error('fixture: this module fails to load');

test('never collected', () => expect(1).toBe(1));
