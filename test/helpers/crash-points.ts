import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {expect} from 'vitest';

import type {CliResult} from './cli.js';

/**
 * Kills an operation at every crash point it has (src/state/crash-point.ts), one run per point.
 *
 * `run(env)` starts the operation with the given extra environment. The helper first runs it once
 * with a trace to learn its steps, then, for k = 1..K: `prepare()` (fresh or reset state), a run
 * killed at step k, and `recover(step)`, which re-runs or resumes and asserts the invariants. It
 * returns, and prints, which steps were killed at, so a test can require that every one was.
 */
export async function crashAtEveryStep(options: {
  readonly name: string;
  readonly prepare: () => Promise<void>;
  readonly run: (env: NodeJS.ProcessEnv) => Promise<CliResult>;
  readonly recover: (step: string, k: number) => Promise<void>;
}): Promise<{steps: string[]; killedAt: string[]}> {
  const traceDir = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-crash-trace-'));
  try {
    await options.prepare();
    const traceFile = path.join(traceDir, 'full.trace');
    const full = await options.run({DFORGE_CRASH_TRACE: traceFile});
    expect(full.code, `${options.name}: the uninterrupted run failed: ${full.stderr}`).toBe(0);
    const steps = await readTrace(traceFile);
    expect(steps.length, `${options.name}: no crash points were reached`).toBeGreaterThan(0);

    const killedAt: string[] = [];
    for (let k = 1; k <= steps.length; k++) {
      await options.prepare();
      const trial = path.join(traceDir, `k${k}.trace`);
      const result = await options.run({DFORGE_CRASH_AT: String(k), DFORGE_CRASH_TRACE: trial});
      const reached = await readTrace(trial);
      expect(result.signal, `${options.name}: expected a SIGKILL at step ${k} (${steps[k - 1]}), got exit ${result.code}: ${result.stderr}`).toBe('SIGKILL');
      const step = reached[k - 1]!;
      killedAt.push(step);
      await options.recover(step, k);
    }
    const distinct = [...new Set(killedAt)];
    process.stderr.write(`crash points, ${options.name}: killed at ${distinct.length} of ${new Set(steps).size} distinct steps (${steps.length} points): ${distinct.join(', ')}\n`);
    return {steps, killedAt};
  } finally {
    await fs.rm(traceDir, {recursive: true, force: true});
  }
}

async function readTrace(file: string): Promise<string[]> {
  const text = await fs.readFile(file, 'utf8').catch(() => '');
  return text
    .split('\n')
    .filter(Boolean)
    .map((line) => line.split('\t')[1]!);
}
