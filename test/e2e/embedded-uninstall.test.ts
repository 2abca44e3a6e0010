import {promises as fs} from 'node:fs';
import path from 'node:path';

import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {cliEntry} from '../helpers/cli.js';
import {quickstartInstall, type EmbeddedInstall} from '../helpers/embedded-install.js';
import {findPgBinaries} from '../helpers/pg-cluster.js';
import {startPty} from '../helpers/pty.js';
import {missingComponent} from '../helpers/requirements.js';

const available = findPgBinaries() !== undefined || missingComponent('PostgreSQL', 'no binaries under /usr/lib/postgresql');
const DOMAIN = 'dforge.localhost';

async function exists(file: string): Promise<boolean> {
  return fs.stat(file).then(() => true, () => false);
}

async function running(install: EmbeddedInstall): Promise<boolean> {
  const status = await install.cli(['db', 'status', '--json']);
  return JSON.stringify(JSON.parse(status.stdout)).includes('"running":true');
}

/** A quickstart install with one backup of acme, so a purge has something to orphan. */
async function installWithBackup(): Promise<{install: EmbeddedInstall; backup: string}> {
  const install = await quickstartInstall();
  const r = await install.cli(['backup', '--tenant', 'acme']);
  if (r.code !== 0) throw new Error(`backup failed: ${r.stderr}`);
  const list = JSON.parse((await install.cli(['backup', 'list', '--tenant', 'acme', '--json'])).stdout) as {backups: Array<{location: string}>};
  return {install, backup: list.backups[0]!.location};
}

describe.skipIf(!available)('uninstall on an embedded (quickstart) install', () => {
  let install: EmbeddedInstall;
  let backup: string;
  beforeAll(async () => {
    ({install, backup} = await installWithBackup());
  });
  afterAll(async () => {
    await install?.cleanup();
  });
  const root = (): string => install.dir.root;

  it('--purge off a terminal without --confirm, or with a wrong one, exits 2 and removes nothing', async () => {
    const missing = await install.cli(['uninstall', '--purge']);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain(`--confirm ${DOMAIN}`);
    const wrong = await install.cli(['uninstall', '--purge', '--confirm', 'other.example.com']);
    expect(wrong.code).toBe(2);
    expect(wrong.stderr).toContain(`Re-run: dforge uninstall --purge --confirm ${DOMAIN}`);
    expect(await running(install)).toBe(true);
    for (const kept of ['dforge.yaml', 'secrets/master', 'pki', 'data/postgres/local-1']) expect(await exists(path.join(root(), kept)), kept).toBe(true);
  });

  it('without --purge stops PostgreSQL and keeps the data, the secrets and the config', async () => {
    const r = await install.cli(['uninstall', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const result = JSON.parse(r.stdout) as {target: string; stopped: string[]; purged: boolean; kept: string[]};
    expect(result).toMatchObject({target: 'embedded', stopped: ['local-1'], purged: false});
    expect(result.kept).toContain(path.join(root(), 'data', 'postgres', 'local-1'));
    expect(await running(install)).toBe(false);
    expect(await exists(path.join(root(), 'data', 'postgres', 'local-1', 'PG_VERSION'))).toBe(true);
    // Reversible: the cluster comes back on the same data.
    expect((await install.cli(['db', 'start'])).code).toBe(0);
    expect(await running(install)).toBe(true);
  });

  it('--export-master-key onto an existing file is refused before anything is removed', async () => {
    const existing = path.resolve(root(), '..', 'taken.json');
    await fs.writeFile(existing, 'operator notes\n');
    const r = await install.cli(['uninstall', '--purge', '--confirm', DOMAIN, '--export-master-key', existing]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('already exists');
    expect(await fs.readFile(existing, 'utf8')).toBe('operator notes\n');
    expect(await exists(path.join(root(), 'secrets', 'master'))).toBe(true);
    expect(await running(install)).toBe(true);
  });

  it('--purge --confirm exports the master key (0600), stops PostgreSQL, removes what dforge made and names the orphaned backups', async () => {
    const key = (await fs.readFile(path.join(root(), 'secrets', 'master', 'v1.key'), 'utf8')).trim();
    const exportFile = path.resolve(root(), '..', 'master-key.json');
    const r = await install.cli(['uninstall', '--purge', '--confirm', DOMAIN, '--export-master-key', exportFile, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const result = JSON.parse(r.stdout) as {purged: boolean; stopped: string[]; removed: string[]; orphanedBackups: string[]; masterKeyExport: {file: string; versions: number[]}};
    expect(result.purged).toBe(true);
    expect(result.stopped).toEqual(['local-1']);
    expect(result.orphanedBackups.some((b) => b.endsWith(backup))).toBe(true);
    expect(result.masterKeyExport).toEqual({file: exportFile, versions: [1]});
    const st = await fs.stat(exportFile);
    expect(st.mode & 0o777).toBe(0o600);
    expect((JSON.parse(await fs.readFile(exportFile, 'utf8')) as {DFORGE_MASTER_KEY: string}).DFORGE_MASTER_KEY).toBe(`1:${key}`);
    for (const gone of ['dforge.yaml', 'secrets', 'pki', 'data', 'run']) expect(await exists(path.join(root(), gone)), gone).toBe(false);
    // The backups stay where they are: readable with the exported key only.
    expect(await exists(path.join(root(), 'backups', 'local', backup))).toBe(true);
  });
});

describe.skipIf(!available)('uninstall --purge on a terminal', () => {
  let install: EmbeddedInstall;
  let backup: string;
  beforeAll(async () => {
    ({install, backup} = await installWithBackup());
  });
  afterAll(async () => {
    await install?.cleanup();
  });

  it('lists the backups it orphans, offers the master-key export, then asks for the domain', async () => {
    const root = install.dir.root;
    const exportFile = path.resolve(root, '..', 'exported-key.json');
    const session = startPty(`${process.execPath} ${cliEntry} uninstall --purge --dir ${root}`);
    await session.answer('Path (empty: no)', `${exportFile}\r`);
    await session.answer('Delete every database and secret', `${DOMAIN}\r`);
    const {code, output} = await session.exit;
    expect(code, output).toBe(0);
    expect(output).toContain('cannot be decrypted once the master key is deleted');
    expect(output).toContain(backup);
    expect(output).toContain(`exported master key version(s) 1 to ${exportFile}`);
    expect((await fs.stat(exportFile)).mode & 0o777).toBe(0o600);
    expect(await exists(path.join(root, 'secrets'))).toBe(false);
  });
});
