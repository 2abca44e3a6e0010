import {describe, expect, it} from 'vitest';

import {UserError} from '../../src/errors.js';
import type {PreflightCheck, PreflightContext} from '../../src/preflight/check.js';
import {runChecks} from '../../src/preflight/runner.js';

// The runner never touches the context; the checks below are plain functions.
const ctx = {} as PreflightContext;

describe('preflight runner', () => {
  it('reports every check in order, whatever fails, and a hanging check cannot hang the run', async () => {
    let aborted = false;
    const checks: PreflightCheck[] = [
      {id: 'a.hangs', title: 'Hangs', timeoutMs: 50, run: (_, signal) => new Promise(() => signal.addEventListener('abort', () => (aborted = true)))},
      {id: 'b.throws', title: 'Throws', run: async () => Promise.reject(new UserError('engine not found', {nextSteps: ['Install it.']}))},
      {id: 'c.breaks', title: 'Breaks', run: async () => Promise.reject(new TypeError('x is undefined'))},
      {id: 'd.passes', title: 'Passes', run: async () => ({status: 'pass', detail: 'fine'})},
    ];
    const started = Date.now();
    const results = await runChecks(checks, ctx);
    expect(Date.now() - started).toBeLessThan(2_000);
    expect(results.map((r) => [r.id, r.status])).toEqual([
      ['a.hangs', 'fail'],
      ['b.throws', 'fail'],
      ['c.breaks', 'fail'],
      ['d.passes', 'pass'],
    ]);
    expect(aborted).toBe(true);
    expect(results[0]).toMatchObject({detail: 'no answer within 0.05 s', remedy: expect.stringContaining('a.hangs check does not finish')});
    expect(results[1]).toMatchObject({detail: 'engine not found', remedy: 'Install it.'});
    expect(results[2]).toMatchObject({detail: expect.stringContaining('x is undefined'), remedy: expect.stringContaining('bug')});
    expect(results[3]).toMatchObject({remedy: null});
  });

  it('runs the checks concurrently', async () => {
    const slow = (id: string): PreflightCheck => ({id, title: id, run: () => new Promise((resolve) => setTimeout(() => resolve({status: 'pass', detail: id}), 200))});
    const started = Date.now();
    await runChecks([slow('a'), slow('b'), slow('c'), slow('d')], ctx);
    expect(Date.now() - started).toBeLessThan(600);
  });
});
