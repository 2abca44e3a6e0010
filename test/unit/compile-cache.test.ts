import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {enableUserCompileCache} from '../../src/cli/compile-cache.js';

// Only refusals are tested in-process: enabling the cache is process-wide, so that case runs the
// CLI (test/e2e/cli.test.ts).
let root: string;
beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-compile-cache-'));
});
afterAll(async () => {
  await fs.rm(root, {recursive: true, force: true});
});

const home = async (name: string, mode = 0o700): Promise<string> => {
  const dir = path.join(root, name);
  await fs.mkdir(dir, {mode});
  await fs.chmod(dir, mode);
  return dir;
};

describe('compile cache directory', () => {
  it('is not used when HOME is empty (it would land in the working directory)', () => {
    expect(enableUserCompileCache(() => '')).toBeUndefined();
  });

  it('is not used in a home another user owns (HOME kept across sudo)', async () => {
    const other = await home('other');
    await fs.chown(other, 4242, 4242);
    expect(enableUserCompileCache(() => other)).toBeUndefined();
    expect(await fs.readdir(other)).toEqual([]);
  });

  it('is not used in a home that group or others can write', async () => {
    const open = await home('open', 0o775);
    expect(enableUserCompileCache(() => open)).toBeUndefined();
    expect(await fs.readdir(open)).toEqual([]);
  });

  it('is not used through a symlink someone put in its path', async () => {
    const mine = await home('mine');
    const elsewhere = await home('elsewhere');
    await fs.symlink(elsewhere, path.join(mine, '.cache'));
    expect(enableUserCompileCache(() => mine)).toBeUndefined();
    expect(await fs.readdir(elsewhere)).toEqual([]);
  });

  it('is not used when the home cannot be found at all', () => {
    expect(
      enableUserCompileCache(() => {
        throw new Error('ENOENT: no such file or directory, uv_os_homedir');
      }),
    ).toBeUndefined();
  });
});
