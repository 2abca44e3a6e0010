import {execFile as execFileCb} from 'node:child_process';
import {createHash} from 'node:crypto';
import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {promisify} from 'node:util';

import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {quickstartInstall, type EmbeddedInstall} from '../helpers/embedded-install.js';
import {clusterAccess, type ClusterAccess} from '../helpers/hostile-tenant.js';
import {findPgBinaries} from '../helpers/pg-cluster.js';
import {missingComponent} from '../helpers/requirements.js';

const execFile = promisify(execFileCb);
const bins = findPgBinaries();
const available = bins !== undefined || missingComponent('PostgreSQL', 'no binaries under /usr/lib/postgresql');

const SEED_SQL = `
CREATE TABLE crm.customers (id int PRIMARY KEY, name text, notes text);
INSERT INTO crm.customers SELECT g, 'customer ' || g, CASE WHEN g % 7 = 0 THEN E'tab\\there — ünïcode ✓' END FROM generate_series(1, 3000) g;
SELECT audit.attach_all();
`;
const FINGERPRINT_SQL = "SELECT md5(string_agg(c::text, '|' ORDER BY id)) AS sum, count(*) AS n FROM crm.customers c";

/**
 * The emergency decrypt path: a plain pg_dump file an operator can take to another tool, written
 * only from a backup whose every byte authenticates, and from a control backup when dforge_control
 * (the whole cluster) is gone.
 */
describe.skipIf(!available)('backup decrypt', () => {
  let install: EmbeddedInstall;
  let access: ClusterAccess;
  let scratch: string;
  let backupId: string;
  let backupFile: string;
  let controlFile: string;
  let source: unknown[];
  let onlineSha: string;
  let tenantPassword: string;

  const destination = (): string => path.join(install.dir.root, 'backups', 'local');
  const sha256 = async (file: string): Promise<string> => createHash('sha256').update(await fs.readFile(file)).digest('hex');
  const pgRestore = (args: string[], env: NodeJS.ProcessEnv = {}): Promise<{stdout: string}> => execFile(path.join(bins!.binDir, 'pg_restore'), args, {env: {PATH: process.env.PATH, LC_ALL: 'C', ...env}, maxBuffer: 64 * 1024 * 1024});

  beforeAll(async () => {
    install = await quickstartInstall();
    access = await clusterAccess(install);
    const plane = await install.plane();
    tenantPassword = await install.tenantPassword(plane, 'acme').finally(() => plane.close());
    scratch = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-decrypt-test-'));
    await install.asTenant('acme', (c) => c.query(SEED_SQL));
    source = await install.asTenant('acme', async (c) => (await c.query(FINGERPRINT_SQL)).rows);
    const backed = await install.cli(['backup', '--all', '--json']);
    expect(backed.code, backed.stderr).toBe(0);
    const list = JSON.parse((await install.cli(['backup', 'list', '--json'])).stdout) as {backups: Array<{id: string; tenant: string; kind: string; location: string}>};
    const acme = list.backups.find((b) => b.kind === 'tenant' && b.tenant === 'acme')!;
    const control = list.backups.find((b) => b.kind === 'control')!;
    backupId = acme.id;
    backupFile = path.join(destination(), acme.location);
    controlFile = path.join(destination(), control.location);
  }, 300_000);
  afterAll(async () => {
    await install?.cleanup();
    if (scratch) await fs.rm(scratch, {recursive: true, force: true});
  });

  it('without --confirm, a run with no terminal is a usage error (exit 2) that writes nothing and never waits', async () => {
    const out = path.join(scratch, 'unconfirmed.dump');
    const r = await install.cli(['backup', 'decrypt', backupId, '--out', out]);
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toContain('--confirm');
    expect(await fs.readdir(scratch)).toEqual([]);
    // A confirmation naming another backup or tenant is refused the same way.
    const wrong = await install.cli(['backup', 'decrypt', backupId, '--out', out, '--confirm', 'globex']);
    expect(wrong.code, wrong.stderr).toBe(2);
    expect(await fs.readdir(scratch)).toEqual([]);
  });

  it('writes a 0600 plain dump that pg_restore reads and restores to the source data, records it, and never overwrites', async () => {
    const out = path.join(scratch, 'acme.dump');
    const r = await install.cli(['backup', 'decrypt', backupId, '--out', out, '--confirm', backupId, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const result = JSON.parse(r.stdout) as {backupId: string; tenant: string; out: string; bytes: number; sha256: string; opsLogWritten: boolean};
    onlineSha = await sha256(out);
    expect(result).toMatchObject({backupId, tenant: 'acme', out, bytes: (await fs.stat(out)).size, sha256: onlineSha, opsLogWritten: true});
    expect((await fs.stat(out)).mode & 0o777).toBe(0o600);
    expect(await fs.readdir(scratch)).toEqual(['acme.dump']);

    const {stdout: toc} = await pgRestore(['--list', out]);
    expect(toc).toMatch(/TABLE DATA crm customers/);

    // Restored by the superuser over the unix socket into a scratch database: the same rows.
    const su = await access.superuser();
    try {
      await su.query('CREATE DATABASE decrypt_check');
    } finally {
      await su.end();
    }
    // Its event triggers call the install's dforge_guard schema, which a scratch database lacks.
    const listFile = path.join(scratch, 'restore.list');
    await fs.writeFile(listFile, toc.split('\n').filter((l) => !l.includes('EVENT TRIGGER')).join('\n'));
    await pgRestore(['--use-list', listFile, '--no-owner', '--no-privileges', '--exit-on-error', '--host', access.socketDir, '--port', String(install.port), '--username', 'dforge_admin', '--dbname', 'decrypt_check', out], {PGPASSWORD: access.superuserPassword});
    const check = await access.superuser('decrypt_check');
    try {
      expect((await check.query(FINGERPRINT_SQL)).rows).toEqual(source);
    } finally {
      await check.end();
    }

    // What an auditor reads: which backup went where, and the plain dump's digest.
    const tail = (JSON.parse((await install.cli(['audit', 'tail', '--limit', '20', '--json'])).stdout) as {entries: Array<{action: string; target: string; outcome: string; details: Record<string, unknown>}>}).entries;
    expect(tail.find((e) => e.action === 'backup.decrypt' && e.outcome === 'ok')).toMatchObject({target: `backup:${backupId}`, outcome: 'ok', details: {backupId, tenant: 'acme', out, sha256: onlineSha}});

    // The file exists: refused, and left as it was.
    const again = await install.cli(['backup', 'decrypt', backupId, '--out', out, '--confirm', 'acme']);
    expect(again.code).toBe(1);
    expect(again.stderr).toContain('already exists');
    expect(await sha256(out)).toBe(onlineSha);
  });

  it('a backup with one flipped byte in a chunk exits 6 and leaves no output and no temp file; the clean copy decrypts', async () => {
    const dir = await fs.mkdtemp(path.join(scratch, 'tamper-'));
    const bytes = await fs.readFile(backupFile);
    const flipped = Buffer.from(bytes);
    flipped[bytes.length - 100]! ^= 0x01;
    const bad = path.join(dir, 'flipped.dfb');
    await fs.writeFile(bad, flipped);
    const outDir = await fs.mkdtemp(path.join(scratch, 'out-'));
    const out = path.join(outDir, 'flipped.dump');
    const r = await install.cli(['backup', 'decrypt', bad, '--out', out, '--confirm', 'acme']);
    expect(r.code, r.stderr).toBe(6);
    expect(await fs.readdir(outDir)).toEqual([]);
    const log = (JSON.parse((await install.cli(['audit', 'tail', '--limit', '20', '--json'])).stdout) as {entries: Array<{action: string; target: string; outcome: string; details: Record<string, unknown>}>}).entries;
    expect(log.find((e) => e.action === 'backup.decrypt' && e.target === `backup:${bad}`)).toMatchObject({outcome: 'failed', details: {kind: 'verification'}});

    // Undone, the same file decrypts to the same dump: the failure was the flip.
    await fs.writeFile(bad, bytes);
    const ok = await install.cli(['backup', 'decrypt', bad, '--out', out, '--confirm', 'acme']);
    expect(ok.code, ok.stderr).toBe(0);
    expect(await sha256(out)).toBe(onlineSha);
  });

  it('--from-control-backup decrypts with the cluster gone, says the ops-log entry could not be written, and rejects tampering', async () => {
    expect((await install.cli(['db', 'stop', '--immediate'])).code).toBe(0);
    await fs.rm(path.join(install.dir.root, 'data'), {recursive: true, force: true});
    expect((await install.cli(['tenant', 'list'])).code).toBe(1);

    const outDir = await fs.mkdtemp(path.join(scratch, 'offline-'));
    const out = path.join(outDir, 'acme.dump');
    const unconfirmed = await install.cli(['backup', 'decrypt', backupFile, '--from-control-backup', controlFile, '--out', out]);
    expect(unconfirmed.code, unconfirmed.stderr).toBe(2);
    expect(await fs.readdir(outDir)).toEqual([]);

    // A control backup with a flipped chunk byte gives no key: exit 6, nothing written.
    const controlBytes = await fs.readFile(controlFile);
    const badControl = Buffer.from(controlBytes);
    badControl[controlBytes.length - 100]! ^= 0x01;
    const badControlFile = path.join(outDir, '..', 'bad-control.dfb');
    await fs.writeFile(badControlFile, badControl);
    const tampered = await install.cli(['backup', 'decrypt', backupFile, '--from-control-backup', badControlFile, '--out', out, '--confirm', 'acme']);
    expect(tampered.code, tampered.stderr).toBe(6);
    expect(await fs.readdir(outDir)).toEqual([]);

    const r = await install.cli(['backup', 'decrypt', backupFile, '--from-control-backup', controlFile, '--out', out, '--confirm', 'acme', '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain('could not be written');
    expect(JSON.parse(r.stdout)).toMatchObject({backupId, tenant: 'acme', opsLogWritten: false, sha256: onlineSha});
    expect((await fs.stat(out)).mode & 0o777).toBe(0o600);
    // The same backup gives byte for byte the dump the live path wrote (which restored to the source).
    expect(await sha256(out)).toBe(onlineSha);
    expect((await pgRestore(['--list', out])).stdout).toMatch(/TABLE DATA crm customers/);
  });

  it('no secret in any output', async () => {
    const all = install.outputs.join('\n');
    expect(all).not.toContain(access.superuserPassword);
    expect(all).not.toContain(access.provisionerPassword);
    expect(all).not.toContain(tenantPassword);
  });
});
