// The run summary must not say "0 failed" when a file never loaded, a hook threw or vitest caught
// an unhandled error: none of those leave a failed test behind. This runs a real vitest on fixture
// files that fail in each of those ways and checks the line the reporter prints.
import path from 'node:path';
import {fileURLToPath} from 'node:url';

import {expect, test} from 'vitest';
import {startVitest, type Reporter, type SerializedError, type TestModule} from 'vitest/node';

import SummaryReporter, {summarize} from '../helpers/summary-reporter.js';

const fixtures = path.join(path.dirname(fileURLToPath(import.meta.url)), 'summary-reporter-fixtures');

test('load errors, hook errors and unhandled errors count as failures', async () => {
  const lines: string[] = [];
  let seen: {modules: ReadonlyArray<TestModule>; unhandled: ReadonlyArray<SerializedError>} | undefined;
  const capture: Reporter = {
    onTestRunEnd(modules, unhandled) {
      seen = {modules, unhandled};
    },
  };
  const exitCode = process.exitCode;
  try {
    const vitest = await startVitest('test', [], {
      root: fixtures,
      config: false,
      include: ['*.fixture.ts'],
      reporters: [new SummaryReporter({write: (line) => lines.push(line)}), capture],
      watch: false,
      pool: 'forks',
    });
    await vitest.close();
  } finally {
    // The inner run failed on purpose; that must not fail this process.
    process.exitCode = exitCode;
  }

  // 5 passed; failed: the failing test, the import error, the beforeAll error, the afterAll error
  // and the unhandled timer error; skipped: test.skip and the two tests under the broken beforeAll.
  expect(lines).toEqual(['vitest: 5 passed, 5 failed, 3 skipped (4 of the failures are load, hook or unhandled errors, not tests)\n']);

  // Each kind on its own, so one miscount cannot hide behind another.
  const byFile = new Map(seen!.modules.map((m) => [path.basename(m.moduleId), summarize([m], [])]));
  expect(byFile.get('import-throws.fixture.ts')).toEqual({passed: 0, failed: 1, skipped: 0, runErrors: 1});
  expect(byFile.get('before-all-throws.fixture.ts')).toEqual({passed: 1, failed: 1, skipped: 2, runErrors: 1});
  expect(byFile.get('mixed.fixture.ts')).toEqual({passed: 2, failed: 2, skipped: 1, runErrors: 1});
  expect(byFile.get('all-pass.fixture.ts')).toEqual({passed: 2, failed: 0, skipped: 0, runErrors: 0});
  expect(seen!.unhandled.map((e) => e.message)).toEqual(['fixture: unhandled error']);
  expect(summarize([], seen!.unhandled)).toEqual({passed: 0, failed: 1, skipped: 0, runErrors: 1});
});
