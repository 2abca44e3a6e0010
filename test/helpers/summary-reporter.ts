import type {Reporter, SerializedError, TestModule} from 'vitest/node';

export interface SummaryCounts {
  passed: number;
  /** Failed tests plus every error that is not a test's own: see summarize(). */
  failed: number;
  skipped: number;
  /** The part of `failed` that no test result carries: load, hook and unhandled errors. */
  runErrors: number;
}

/**
 * Counts a run the way a reader of "N failed" expects: a file that throws at import, or a
 * beforeAll/afterAll that throws, leaves no failed test behind (the file has no tests, or its
 * tests are marked skipped), and an unhandled error belongs to no test at all. Each such error is
 * one failure, so a run is only "0 failed" when nothing failed.
 */
export function summarize(modules: ReadonlyArray<TestModule>, unhandledErrors: ReadonlyArray<SerializedError>): SummaryCounts {
  const counts = {passed: 0, failed: 0, skipped: 0, runErrors: unhandledErrors.length};
  for (const mod of modules) {
    // Errors at import, in collection, and in file-level hooks.
    counts.runErrors += mod.errors().length;
    // Errors in a describe block's beforeAll/afterAll; its tests are then reported as skipped.
    for (const suite of mod.children.allSuites()) counts.runErrors += suite.errors().length;
    for (const test of mod.children.allTests()) {
      const state = test.result().state;
      if (state === 'passed') counts.passed++;
      else if (state === 'failed') counts.failed++;
      else counts.skipped++;
    }
  }
  counts.failed += counts.runErrors;
  return counts;
}

/**
 * Ends the run with one plain line, "vitest: N passed, N failed, N skipped", that log readers
 * and CI can parse without knowing vitest's decorated summary.
 */
export default class SummaryReporter implements Reporter {
  private readonly write: (line: string) => void;

  /** vitest constructs reporters named in the config with their options object, or none. */
  constructor(options: {write?: (line: string) => void} = {}) {
    this.write = options.write ?? ((line) => process.stdout.write(line));
  }

  onTestRunEnd(modules: ReadonlyArray<TestModule>, unhandledErrors: ReadonlyArray<SerializedError>): void {
    const c = summarize(modules, unhandledErrors);
    const detail = c.runErrors > 0 ? ` (${c.runErrors} of the failures are load, hook or unhandled errors, not tests)` : '';
    this.write(`vitest: ${c.passed} passed, ${c.failed} failed, ${c.skipped} skipped${detail}\n`);
  }
}
