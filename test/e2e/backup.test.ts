import {execFile as execFileCb, spawn} from 'node:child_process';
import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {promisify} from 'node:util';

import pg from 'pg';
import {parse as parseYaml, stringify as stringifyYaml} from 'yaml';
import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {CHUNK_SIZE, parseHeader} from '../../src/backup/format.js';
import {scramVerifier} from '../../src/postgres/scram.js';
import {cliEntry, type CliResult} from '../helpers/cli.js';
import {quickstartInstall, type EmbeddedInstall} from '../helpers/embedded-install.js';
import {findPgBinaries} from '../helpers/pg-cluster.js';
import {missingComponent} from '../helpers/requirements.js';

const execFile = promisify(execFileCb);
const available = findPgBinaries() !== undefined || missingComponent('PostgreSQL', 'no binaries under /usr/lib/postgresql');

/** Module-schema data: pgbench-style tables (100k+ rows), large objects, unicode. */
const SEED_SQL = `
CREATE TABLE crm.accounts (aid int PRIMARY KEY, bid int NOT NULL, abalance int NOT NULL, filler char(84));
INSERT INTO crm.accounts SELECT g, g % 10, (g * 7919) % 100000, md5(g::text) FROM generate_series(1, 100000) g;
CREATE TABLE hr.employees (id serial PRIMARY KEY, name text NOT NULL, notes text);
INSERT INTO hr.employees (name, notes) VALUES ('Zoë Ångström', 'naïve café — 日本語 ✓'), ('Ωmega Ψ', E'line\\nbreak\\ttab'), ('😀 emoji', NULL);
CREATE TABLE fin.ledger (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, account int, amount numeric(14, 2), at timestamptz DEFAULT '2026-01-01');
INSERT INTO fin.ledger (account, amount) SELECT g % 1000, g * 1.25 FROM generate_series(1, 5000) g;
CREATE TABLE wms.documents (id int PRIMARY KEY, blob oid);
INSERT INTO wms.documents SELECT g, lo_from_bytea(0, convert_to(repeat('scan ' || g, 2000), 'UTF8')) FROM generate_series(1, 5) g;
CREATE VIEW crm.rich AS SELECT aid FROM crm.accounts WHERE abalance > 90000;
SELECT audit.attach_all();
`;

/** A checksum per table (every row, in key order) and per large object. */
const CHECKSUM_SQL = `
SELECT 'crm.accounts' AS t, md5(string_agg(a::text, '|' ORDER BY aid)) AS sum, count(*) AS n FROM crm.accounts a
UNION ALL SELECT 'hr.employees', md5(string_agg(e::text, '|' ORDER BY id)), count(*) FROM hr.employees e
UNION ALL SELECT 'fin.ledger', md5(string_agg(l::text, '|' ORDER BY id)), count(*) FROM fin.ledger l
UNION ALL SELECT 'wms.documents', md5(string_agg(d.id || ':' || md5(lo_get(d.blob)), '|' ORDER BY d.id)), count(*) FROM wms.documents d
ORDER BY 1`;

describe.skipIf(!available)('encrypted backups and restores on the embedded data plane', () => {
  let install: EmbeddedInstall;
  let scratch: string;
  let backupId: string;
  let backupFile: string;
  let original: unknown[];

  const checksums = (slug: string): Promise<unknown[]> => install.asTenant(slug, async (c) => (await c.query(CHECKSUM_SQL)).rows);
  const databases = (): Promise<string[]> => install.databases();
  const catalogIds = async (): Promise<string[]> => (JSON.parse((await install.cli(['backup', 'list', '--json'])).stdout) as {backups: Array<{id: string}>}).backups.map((b) => b.id);

  beforeAll(async () => {
    install = await quickstartInstall();
    scratch = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-backup-test-'));
    await install.asTenant('acme', (c) => c.query(SEED_SQL));
    original = await checksums('acme');
    const r = await install.cli(['backup', '--tenant', 'acme', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const record = JSON.parse(r.stdout) as {id: string; location: string};
    backupId = record.id;
    backupFile = path.join(install.dir.root, 'backups', 'local', record.location);
  });
  afterAll(async () => {
    await install?.cleanup();
    await fs.rm(scratch, {recursive: true, force: true});
  });

  it('round trip: backup, restore --as a copy, every table and large object compares equal', async () => {
    expect((original as Array<{n: string}>).map((r) => Number(r.n))).toEqual([100_000, 5000, 3, 5]);
    const r = await install.cli(['restore', '--tenant', 'acme', '--from', backupId, '--as', 'acme-copy', '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({tenant: 'acme-copy', database: 'tenant_acme_copy', objects: {TABLE: 5, BLOB: 5}});
    expect(await checksums('acme-copy')).toEqual(original);
    // The copy has its own credentials and its own data key.
    const show = JSON.parse((await install.cli(['tenant', 'show', 'acme-copy', '--json'])).stdout);
    expect(show).toMatchObject({activeDataKeyVersion: 1, publicCanConnect: false});
    // Row changes in the restored copy are audited too: the triggers came back.
    const logged = await install.asTenant('acme-copy', async (c) => {
      await c.query("UPDATE hr.employees SET notes = 'changed' WHERE id = 1");
      return (await c.query("SELECT operation, before->>'notes' AS before, after->>'notes' AS after FROM audit.change_log WHERE table_name = 'employees' ORDER BY id DESC LIMIT 1")).rows[0];
    });
    expect(logged).toEqual({operation: 'UPDATE', before: 'naïve café — 日本語 ✓', after: 'changed'});
  });

  it('the file is encrypted (no plaintext), has a manifest, and verifies deep', async () => {
    const bytes = await fs.readFile(backupFile);
    expect(bytes.includes(Buffer.from('Ångström'))).toBe(false);
    expect(bytes.includes(Buffer.from('PGDMP'))).toBe(false);
    const manifest = JSON.parse(await fs.readFile(`${backupFile}.manifest.json`, 'utf8'));
    expect(manifest).toMatchObject({backupId, tenant: 'acme', size: bytes.length, keyId: 'dek/acme', keyVersion: 1});
    const v = await install.cli(['backup', 'verify', backupId, '--deep', '--json']);
    expect(v.code, v.stderr).toBe(0);
    expect(JSON.parse(v.stdout).objects).toMatchObject({TABLE: 5, 'TABLE DATA': 5, BLOB: 5});
  });

  /** Restores a tampered copy; it must exit 6 and leave every database as it was. */
  async function expectTamperRefused(bytes: Buffer, label: string): Promise<CliResult> {
    const file = path.join(scratch, `${label.replace(/\W+/g, '-')}.dfb`);
    await fs.writeFile(file, bytes);
    const before = await databases();
    const r = await install.cli(['restore', '--tenant', 'acme', '--from', file, '--confirm', 'acme']);
    expect(r.code, `${label}: ${r.stderr}`).toBe(6);
    expect(r.stderr).toMatch(/What to do:/);
    expect(await databases(), label).toEqual(before);
    await fs.rm(file);
    return r;
  }

  it('tamper suite: 100 flipped bytes, truncation, swapped chunks, edited header, wrong and missing keys: exit 6, nothing created', {timeout: 300_000}, async () => {
    const bytes = await fs.readFile(backupFile);
    const headerLength = parseHeader(bytes, 'x').length;
    const chunk = CHUNK_SIZE + 16;
    // Deterministic, spread over the whole file (every header byte is flipped in backup-tamper.test.ts).
    for (let n = 0; n < 100; n++) {
      const p = Math.floor((n * bytes.length) / 100) + (n % 7);
      const t = Buffer.from(bytes);
      t[p]! ^= 1 << n % 8;
      await expectTamperRefused(t, `flip at ${p}`);
    }
    expect((await expectTamperRefused(bytes.subarray(0, headerLength + 2 * chunk), 'truncated at a chunk boundary')).stderr).toMatch(/truncated or reordered/);
    await expectTamperRefused(bytes.subarray(0, headerLength + chunk + 777), 'truncated mid-chunk');
    const swapped = Buffer.concat([bytes.subarray(0, headerLength), bytes.subarray(headerLength + chunk, headerLength + 2 * chunk), bytes.subarray(headerLength, headerLength + chunk), bytes.subarray(headerLength + 2 * chunk)]);
    await expectTamperRefused(swapped, 'swapped chunks');
    // Same length, so the header still parses and only its authentication can catch the edit.
    const edited = Buffer.from(bytes.toString('latin1').replace('"cluster":"local-1"', '"cluster":"evil-01"'), 'latin1');
    expect(edited.equals(bytes)).toBe(false);
    expect((await expectTamperRefused(edited, 'edited header')).stderr).toMatch(/header failed authentication/);
    // The wrong tenant's key: the header is made to claim tenant gbex (same length). Its file key is
    // still wrapped by dek/acme, so it is refused as edited before any key is looked up.
    const otherKey = Buffer.from(bytes.toString('latin1').replace('"tenant":"acme"', '"tenant":"gbex"').replace('"keyId":"dek/acme"', '"keyId":"dek/gbex"'), 'latin1');
    expect((await install.cli(['tenant', 'create', 'gbex'])).code).toBe(0);
    const wrongKey = path.join(scratch, 'wrong-key.dfb');
    await fs.writeFile(wrongKey, otherKey);
    const before = await databases();
    const r = await install.cli(['restore', '--tenant', 'gbex', '--from', wrongKey, '--confirm', 'gbex']);
    expect(r.code, r.stderr).toBe(6);
    expect(r.stderr).toMatch(/its file key is wrapped by dek\/acme v1/);
    expect(await databases()).toEqual(before);
    // A missing key: the tenant was shredded, so its backups are unreadable everywhere.
    expect((await install.cli(['tenant', 'create', 'shredme'])).code).toBe(0);
    const shredBackup = JSON.parse((await install.cli(['backup', '--tenant', 'shredme', '--json'])).stdout) as {id: string};
    expect((await install.cli(['tenant', 'delete', 'shredme', '--confirm', 'shredme', '--shred'])).code).toBe(0);
    const missing = await install.cli(['restore', '--tenant', 'shredme', '--from', shredBackup.id, '--as', 'unshred']);
    expect(missing.code).toBe(6);
    expect(missing.stderr).toMatch(/data key dek\/shredme v1 does not exist/);
    expect((await install.cli(['tenant', 'show', 'unshred'])).code).toBe(1);
    expect(await checksums('acme')).toEqual(original);
  });

  it('isolation: no password in any argv during a backup, and pg_dump connects as the tenant role', async () => {
    const plane = await install.plane();
    const password = await install.tenantPassword(plane, 'acme');
    const seenArgs: string[] = [];
    const seenUsers = new Set<string>();
    const admin = new pg.Client(install.clientConfig('dforge_provisioner', (await plane.keys.sealed.get('postgres/local-1/provisioner')).toString(), 'postgres'));
    await admin.connect();
    await plane.close();
    const child = spawn(process.execPath, [cliEntry, 'backup', '--tenant', 'acme', '--dir', install.dir.root], {stdio: 'ignore'});
    let running = true;
    const exited = new Promise<void>((resolve) => child.on('exit', () => ((running = false), resolve())));
    while (running) {
      const {stdout} = await execFile('ps', ['-eo', 'args']);
      seenArgs.push(stdout);
      const rows = await admin.query<{usename: string}>("SELECT usename FROM pg_stat_activity WHERE datname = 'tenant_acme' AND application_name LIKE 'dforge-%'");
      for (const r of rows.rows) seenUsers.add(r.usename);
      await new Promise((r) => setTimeout(r, 10));
    }
    await exited;
    await admin.end();
    expect(seenArgs.some((a) => a.includes('pg_dump'))).toBe(true);
    for (const a of seenArgs) expect(a.includes(password)).toBe(false);
    expect([...seenUsers], `ps samples: ${seenArgs.length}`).toEqual(['tenant_acme']);
  });

  it('--all: one JSON line per tenant on stdout off a terminal, the control database too; a failing tenant makes exit 4 and names it', async () => {
    const ok = await install.cli(['backup', '--all', '--concurrency', '3']);
    expect(ok.code, ok.stderr).toBe(0);
    // Off a terminal (cron), stdout is one JSON object per line: a line per tenant, then the summary.
    const lines = ok.stdout.trim().split('\n').map((l) => JSON.parse(l)).filter((l) => l.event === 'backup');
    expect(lines.map((l) => l.tenant).sort()).toEqual(['acme', 'acme-copy', 'gbex', 'globex']);
    expect(lines.every((l) => l.status === 'ok')).toBe(true);
    // Break one tenant: its role can no longer log in with the sealed password.
    const plane = await install.plane();
    try {
      await plane.tenants.onTenantCluster('globex', (d) => d.roles.setPassword('tenant_globex', scramVerifier('not-the-sealed-one')));
    } finally {
      await plane.close();
    }
    const partial = await install.cli(['backup', '--all', '--json']);
    expect(partial.code).toBe(4);
    const error = JSON.parse(partial.stdout).error;
    expect(error.message).toMatch(/1 of 4 tenant backups failed: globex/);
    expect(error.data.tenants.filter((t: {status: string}) => t.status === 'ok').map((t: {tenant: string}) => t.tenant).sort()).toEqual(['acme', 'acme-copy', 'gbex']);
    expect((await install.cli(['tenant', 'rotate-credentials', 'globex'])).code).toBe(0);
    const list = JSON.parse((await install.cli(['backup', 'list', '--json'])).stdout) as {backups: Array<{kind: string}>; tenants: Array<{tenant: string; staleHours: number | null}>};
    expect(list.backups.some((b) => b.kind === 'control')).toBe(true);
    expect(list.tenants.find((t) => t.tenant === 'acme')?.staleHours).toBe(0);
  });

  it('an overlapping run exits 5 for the tenant it finds locked; --all skips it as locked, without damage', async () => {
    const plane = await install.plane();
    try {
      await plane.control.query("SELECT pg_advisory_lock(hashtext('dforge.backup'), hashtext('acme'))");
      const before = await catalogIds();
      const one = await install.cli(['backup', '--tenant', 'acme']);
      expect(one.code).toBe(5);
      expect(one.stderr).toContain('another run is backing up acme');
      const all = await install.cli(['backup', '--all', '--json']);
      expect(all.code, all.stdout).toBe(0);
      const outcomes = JSON.parse(all.stdout).tenants as Array<{tenant: string; status: string}>;
      expect(outcomes.find((o) => o.tenant === 'acme')?.status).toBe('locked');
      expect(outcomes.filter((o) => o.tenant !== 'acme').every((o) => o.status === 'ok')).toBe(true);
      expect((await catalogIds()).filter((id) => /-acme-[0-9a-f]{6}$/.test(id) && !before.includes(id))).toEqual([]);
    } finally {
      await plane.close();
    }
  });

  it('a destination of another region is refused: data does not leave its region', async () => {
    const original = await fs.readFile(install.dir.configFile, 'utf8');
    const config = parseYaml(original) as {regions: Record<string, Record<string, unknown>>};
    // Two regions need jurisdiction labels; the refusal names both.
    config.regions.local!.jurisdiction = 'EU';
    config.regions.us = {
      jurisdiction: 'US',
      clusters: [{name: 'us-1', kind: 'external', host: 'pg.us.example.test', admin: {secret: 'postgres/us-1-admin'}}],
      backup: {destinations: [{name: 'us-local', kind: 'local', path: path.join(install.dir.root, 'backups', 'us')}]},
    };
    await fs.writeFile(install.dir.configFile, stringifyYaml(config));
    try {
      const r = await install.cli(['backup', '--tenant', 'acme', '--destination', 'us-local']);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain('refusing backup to destination us-local: it would take data of tenant acme out of region local (EU) into region us (US); nothing was changed');
      expect(r.stderr).toContain('--allow-cross-region --reason');
      await expect(fs.stat(path.join(install.dir.root, 'backups', 'us'))).rejects.toThrow();
    } finally {
      await fs.writeFile(install.dir.configFile, original);
    }
  });

  it('prune keeps the newest verified backup, drops what the policy does not keep and old pre-restore databases', async () => {
    expect((await install.cli(['restore', '--tenant', 'globex', '--from', (await catalogIds()).find((id) => id.includes('-globex-'))!, '--confirm', 'globex'])).code).toBe(0);
    expect((await databases()).some((d) => d.startsWith('tenant_globex__pre_restore_'))).toBe(true);
    // The newest deep-verified acme backup is kept although it is not the newest backup.
    const acme = (JSON.parse((await install.cli(['backup', 'list', '--tenant', 'acme', '--json'])).stdout) as {backups: Array<{id: string; verifiedAt: string | null}>}).backups;
    const verifiedBefore = acme.find((b) => b.verifiedAt !== null)!.id;
    expect(verifiedBefore).not.toBe(acme[0]!.id);
    const dry = JSON.parse((await install.cli(['backup', 'prune', '--tenant', 'acme', '--keep-last', '1', '--keep-daily', '0', '--keep-weekly', '0', '--keep-monthly', '0', '--dry-run', '--json'])).stdout);
    expect([...dry.kept].sort()).toEqual([acme[0]!.id, verifiedBefore].sort());
    expect([...dry.deleted].sort()).toEqual(acme.map((b) => b.id).filter((id) => !dry.kept.includes(id)).sort());
    expect(dry.deleted.length).toBeGreaterThan(0);
    const idsBefore = await catalogIds();
    const real = JSON.parse((await install.cli(['backup', 'prune', '--keep-last', '1', '--keep-daily', '0', '--keep-weekly', '0', '--keep-monthly', '0', '--keep-pre-restore-hours', '0', '--json'])).stdout);
    expect(real.droppedDatabases.some((d: string) => d.startsWith('tenant_globex__pre_restore_'))).toBe(true);
    const idsAfter = await catalogIds();
    expect(idsAfter).toContain(verifiedBefore);
    expect(idsAfter.length).toBeLessThan(idsBefore.length);
    for (const id of real.deleted) await expect(fs.stat(path.join(install.dir.root, 'backups', 'local', 'acme', `${id}.dfb`))).rejects.toThrow();
    expect((await databases()).some((d) => d.startsWith('tenant_globex__pre_restore_'))).toBe(false);
  });

  it('tenant delete --final-backup takes a backup that stays restorable (its keys are kept)', async () => {
    expect((await install.cli(['tenant', 'create', 'leaving'])).code).toBe(0);
    const r = await install.cli(['tenant', 'delete', 'leaving', '--confirm', 'leaving', '--final-backup']);
    expect(r.code, r.stderr).toBe(0);
    const id = r.stderr.match(/final backup of leaving: (\S+)/)![1]!;
    const back = await install.cli(['restore', '--tenant', 'leaving', '--from', id, '--as', 'returning']);
    expect(back.code, back.stderr).toBe(0);
    expect((await install.cli(['tenant', 'delete', 'x', '--confirm', 'x', '--shred', '--final-backup'])).code).toBe(2);
  });

  it('schedule prints a cron line with the install directory and backup --all', async () => {
    const r = await install.cli(['backup', 'schedule']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`^15 2 \\* \\* \\* \\S+ \\S+node\\S* \\S+run\\.js backup --all --dir ${install.dir.root} --quiet$`, 'm'));
    expect(r.stdout).toContain(`DFORGE_HOME=${install.dir.root}`);
  });
});
