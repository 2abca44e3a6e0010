import {spawn} from 'node:child_process';
import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {pathToFileURL} from 'node:url';

import {afterEach, beforeEach, describe, expect, it} from 'vitest';

import {repoRoot} from '../helpers/cli.js';
import {onTermination} from '../../src/util/termination.js';

const moduleUrl = pathToFileURL(path.join(repoRoot, 'src', 'util', 'termination.ts')).href;

let scratch: string;
beforeEach(async () => {
  scratch = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-termination-'));
});
afterEach(async () => {
  await fs.rm(scratch, {recursive: true, force: true});
});

/**
 * Runs a small program that registers a cleanup writing `mark`, then does `then`; the module has
 * no imports, so Node runs its TypeScript source directly.
 */
async function program(then: string, signal?: NodeJS.Signals): Promise<{code: number | null; signal: NodeJS.Signals | null; mark: string | undefined}> {
  const mark = path.join(scratch, 'mark');
  const source = `
import {writeFileSync} from 'node:fs';
import {onTermination} from ${JSON.stringify(moduleUrl)};
const forget = onTermination((signal) => writeFileSync(${JSON.stringify(mark)}, String(signal)));
${then}
process.stdout.write('ready\\n');
setInterval(() => undefined, 1000);
`;
  const child = spawn(process.execPath, ['--input-type=module', '--no-warnings', '-e', source], {stdio: ['ignore', 'pipe', 'inherit']});
  if (signal) {
    await new Promise<void>((resolve) => child.stdout!.once('data', () => resolve()));
    child.kill(signal);
  }
  const [code, sig] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) => child.on('close', (c, s) => resolve([c, s])));
  return {code, signal: sig, mark: await fs.readFile(mark, 'utf8').catch(() => undefined)};
}

describe('onTermination', () => {
  it('listens only while something is registered', () => {
    const before = process.listenerCount('SIGTERM');
    const forgetA = onTermination(() => undefined);
    const forgetB = onTermination(() => undefined);
    expect(process.listenerCount('SIGTERM')).toBe(before + 1);
    expect(process.listenerCount('SIGINT')).toBeGreaterThan(0);
    forgetA();
    forgetA();
    expect(process.listenerCount('SIGTERM')).toBe(before + 1);
    forgetB();
    expect(process.listenerCount('SIGTERM')).toBe(before);
  });

  for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) {
    it(`on ${signal}: runs the cleanup, then the process dies of ${signal}`, async () => {
      expect(await program('', signal)).toEqual({code: null, signal, mark: signal});
    });
  }

  it('on process.exit(): runs the cleanup and keeps the exit code', async () => {
    expect(await program('process.exit(3);')).toEqual({code: 3, signal: null, mark: 'undefined'});
  });

  it('once forgotten: nothing runs and the default action applies', async () => {
    expect(await program('forget();', 'SIGTERM')).toEqual({code: null, signal: 'SIGTERM', mark: undefined});
  });
});
