import {promises as fs} from 'node:fs';
import path from 'node:path';

import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {masterDir} from '../../src/secrets/master-key.js';
import {quickstartInstall, type EmbeddedInstall} from '../helpers/embedded-install.js';
import {findPgBinaries} from '../helpers/pg-cluster.js';
import {missingComponent} from '../helpers/requirements.js';

const available = findPgBinaries() !== undefined || missingComponent('PostgreSQL', 'no binaries under /usr/lib/postgresql');

describe.skipIf(!available)('a master key file others can read is refused', () => {
  let install: EmbeddedInstall;
  let keyFile: string;

  beforeAll(async () => {
    install = await quickstartInstall();
    keyFile = path.join(masterDir(install.dir), 'v1.key');
  });

  afterAll(async () => {
    await install?.cleanup();
  });

  it('quickstart writes it 0600 in 0700 directories', async () => {
    expect((await fs.stat(keyFile)).mode & 0o777).toBe(0o600);
    expect((await fs.stat(masterDir(install.dir))).mode & 0o777).toBe(0o700);
    expect((await fs.stat(install.dir.secretsDir)).mode & 0o777).toBe(0o700);
  });

  it('0644: the command is refused with the chmod to run, and nothing is changed', async () => {
    const before = await fs.readFile(keyFile);
    await fs.chmod(keyFile, 0o644);
    try {
      const r = await install.cli(['tenant', 'create', 'initech']);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(`refusing to use the master key ${keyFile}`);
      expect(r.stderr).toContain('mode 0644');
      expect(r.stderr).toContain(`chmod 600 ${keyFile}`);
      expect(r.stderr).toContain('dforge keys rotate --master');
      const json = await install.cli(['tenant', 'list', '--json']);
      expect(json.code).toBe(1);
      expect(JSON.parse(json.stdout)).toMatchObject({error: {data: {file: keyFile, loose: [{path: keyFile, mode: '0644'}]}}});
      // Refused, not repaired: the mode and the key are the operator's to fix.
      expect((await fs.stat(keyFile)).mode & 0o777).toBe(0o644);
      expect(await fs.readFile(keyFile)).toEqual(before);
    } finally {
      await fs.chmod(keyFile, 0o600);
    }
    const list = await install.cli(['tenant', 'list', '--json']);
    expect(list.code).toBe(0);
    expect(list.stdout).not.toContain('initech');
  });

  it('a loose master directory is named with its own chmod', async () => {
    const dir = masterDir(install.dir);
    await fs.chmod(dir, 0o755);
    try {
      const r = await install.cli(['tenant', 'list']);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(`chmod 700 ${dir}`);
      expect(r.stderr).not.toContain('chmod 600');
    } finally {
      await fs.chmod(dir, 0o700);
    }
    expect((await install.cli(['tenant', 'list'])).code).toBe(0);
  });

  it('a `..data` link does not excuse a copied projection or a planted link in a loose directory', async () => {
    const dir = masterDir(install.dir);
    const original = await fs.readFile(keyFile);
    // What kubectl cp or tar of a projected Secret leaves: the links and 0644 files.
    const projected = path.join(dir, '..2026_11_28');
    await fs.mkdir(projected);
    await fs.writeFile(path.join(projected, 'v1.key'), original, {mode: 0o644});
    await fs.symlink('..2026_11_28', path.join(dir, '..data'));
    await fs.rename(keyFile, `${keyFile}.aside`);
    await fs.symlink(path.join('..data', 'v1.key'), keyFile);
    try {
      const copied = await install.cli(['tenant', 'list']);
      expect(copied.code).toBe(1);
      expect(copied.stderr).toContain('chmod 600');
      // The kubelet's own shape (0440, a directory only its owner writes) is accepted...
      await fs.chmod(path.join(projected, 'v1.key'), 0o440);
      expect((await install.cli(['tenant', 'list'])).code).toBe(0);
      // ...but not once others can write the directory and so could have planted the link.
      await fs.chmod(dir, 0o777);
      const planted = await install.cli(['tenant', 'list']);
      expect(planted.code).toBe(1);
      expect(planted.stderr).toContain(`chmod 700 ${dir}`);
    } finally {
      await fs.chmod(dir, 0o700);
      await fs.rm(keyFile);
      await fs.rm(path.join(dir, '..data'));
      await fs.rm(projected, {recursive: true});
      await fs.rename(`${keyFile}.aside`, keyFile);
    }
    expect(await fs.readFile(keyFile)).toEqual(original);
    expect((await install.cli(['tenant', 'list'])).code).toBe(0);
  });
});
