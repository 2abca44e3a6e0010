import {execFileSync} from 'node:child_process';
import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {runCli} from '../helpers/cli.js';
import {missingComponent} from '../helpers/requirements.js';

const available = process.getuid?.() === 0 || missingComponent('root', 'mounting a small tmpfs to fill needs root');

describe.skipIf(!available)('a full disk', () => {
  let mountPoint: string;
  beforeAll(async () => {
    mountPoint = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-full-'));
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', mountPoint]);
  });
  afterAll(async () => {
    execFileSync('umount', [mountPoint]);
    await fs.rm(mountPoint, {recursive: true, force: true});
  });

  it('fails with an actionable message and leaves every existing file intact', async () => {
    const dir = path.join(mountPoint, 'install');
    expect((await runCli(['config', 'init', '--dir', dir, '--domain', 'dforge.example.com'])).code).toBe(0);
    const before = new Map<string, string>();
    for (const name of ['dforge.yaml', 'dforge.schema.json']) before.set(name, await fs.readFile(path.join(dir, name), 'utf8'));

    // Fill the file system to the last byte.
    const filler = await fs.open(path.join(mountPoint, 'filler'), 'w');
    try {
      const block = Buffer.alloc(4096, 1);
      for (;;) await filler.write(block);
    } catch (err) {
      expect((err as NodeJS.ErrnoException).code).toBe('ENOSPC');
    } finally {
      await filler.close();
    }

    const result = await runCli(['config', 'init', '--dir', dir, '--domain', 'dforge.example.com']);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/^Error: no space left .*(unchanged|nothing was changed)/m);
    expect(result.stderr).toMatch(/What to do:\n\s+- Free space \(check with: df -h \//);
    for (const [name, content] of before) expect(await fs.readFile(path.join(dir, name), 'utf8')).toBe(content);
    expect((await fs.readdir(dir)).filter((f) => f.endsWith('.tmp'))).toEqual([]);
    expect(await fs.readdir(path.join(dir, '.locks'))).toEqual([]);
  });
});
