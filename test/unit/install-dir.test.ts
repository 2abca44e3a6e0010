import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {afterEach, beforeEach, describe, expect, it} from 'vitest';

import {UserError} from '../../src/errors.js';
import {writeFileAtomic} from '../../src/state/atomic-file.js';
import {InstallDir} from '../../src/state/install-dir.js';

let root: string;
beforeEach(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-dir-'));
});
afterEach(async () => {
  await fs.rm(root, {recursive: true, force: true});
});

const modeOf = async (p: string): Promise<number> => (await fs.stat(p)).mode & 0o777;

describe('InstallDir', () => {
  it('lays out secrets/ 0700 and corrects a loosened mode on re-run', async () => {
    const dir = new InstallDir(path.join(root, 'install'));
    await dir.ensureLayout();
    expect(await modeOf(dir.secretsDir)).toBe(0o700);
    expect(await modeOf(dir.runtimeDir)).toBe(0o700);
    expect(await modeOf(dir.renderedDir)).toBe(0o755);
    await fs.chmod(dir.secretsDir, 0o755);
    await dir.ensureLayout();
    expect(await modeOf(dir.secretsDir)).toBe(0o700);
  });

  it('writes secrets 0600 in 0700 directories, whatever the umask', async () => {
    const dir = new InstallDir(root);
    const previous = process.umask(0o000);
    try {
      const file = await dir.writeSecret('postgres/eu-1-admin', 'not-a-real-secret');
      expect(await modeOf(file)).toBe(0o600);
      expect(await modeOf(path.dirname(file))).toBe(0o700);
      expect(await dir.auditSecretPermissions()).toEqual([]);
    } finally {
      process.umask(previous);
    }
  });

  it('reports secret files and directories with loose modes', async () => {
    const dir = new InstallDir(root);
    const file = await dir.writeSecret('master/v1', 'x');
    await fs.chmod(file, 0o644);
    expect(await dir.auditSecretPermissions()).toEqual([{path: file, mode: '0644', expected: '0600'}]);
  });

  it.each(['../escape', 'a/../../b', '/etc/passwd', 'UPPER', '', 'a//b'])('refuses the secret name %j', (name) => {
    expect(() => new InstallDir(root).secretPath(name)).toThrow(UserError);
  });
});

describe('writeFileAtomic', () => {
  it('replaces content and leaves no temp file behind', async () => {
    const file = path.join(root, 'state.json');
    await writeFileAtomic(file, 'one');
    await writeFileAtomic(file, 'two', {mode: 0o600});
    expect(await fs.readFile(file, 'utf8')).toBe('two');
    expect(await modeOf(file)).toBe(0o600);
    expect(await fs.readdir(root)).toEqual(['state.json']);
  });

  it('keeps the previous version when the write fails, and cleans up', async () => {
    const file = path.join(root, 'state.json');
    await writeFileAtomic(file, 'old');
    await fs.mkdir(path.join(root, 'blocker'));
    // Renaming a file over a directory fails after the temp file was fully written.
    await expect(writeFileAtomic(path.join(root, 'blocker'), 'new')).rejects.toThrow();
    expect(await fs.readFile(file, 'utf8')).toBe('old');
    expect((await fs.readdir(root)).sort()).toEqual(['blocker', 'state.json']);
  });
});
