import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import pg from 'pg';
import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {manifestLocation, type BackupManifest} from '../../src/backup/catalog.js';
import {parseHeader} from '../../src/backup/format.js';
import {rebuildCatalog} from '../../src/backup/manage.js';
import {restoreTenant} from '../../src/backup/restore.js';
import {restoreControl} from '../../src/backup/restore-control.js';
import {verifyBackup} from '../../src/backup/verify.js';
import type {ControlPlane} from '../../src/control/plane.js';
import {VerificationError} from '../../src/errors.js';
import {quickstartInstall, type EmbeddedInstall} from '../helpers/embedded-install.js';
import {findPgBinaries} from '../helpers/pg-cluster.js';
import {missingComponent} from '../helpers/requirements.js';

const available = findPgBinaries() !== undefined || missingComponent('PostgreSQL', 'no binaries under /usr/lib/postgresql');

/**
 * Someone who can write to the backup destination (but has no key) tries to make dforge accept,
 * restore or adopt bytes it did not write: a foreign tenant's file under another id, an older file
 * in place of a newer one, a copy with no manifest, and every single header byte flipped.
 */
describe.skipIf(!available)('backups are bound to what the catalog says', () => {
  let install: EmbeddedInstall;
  let plane: ControlPlane;
  let scratch: string;
  const root = (): string => path.join(install.dir.root, 'backups', 'local');

  const backup = async (slug: string): Promise<{id: string; location: string}> => {
    const r = await install.cli(['backup', '--tenant', slug, '--json']);
    expect(r.code, r.stderr).toBe(0);
    return JSON.parse(r.stdout) as {id: string; location: string};
  };
  const catalogIds = async (): Promise<string[]> => (await plane.control.query<{id: string}>('SELECT id FROM backups ORDER BY id')).rows.map((r) => r.id);
  const databases = async (): Promise<string[]> => (await plane.control.query<{datname: string}>('SELECT datname FROM pg_database ORDER BY 1')).rows.map((r) => r.datname);
  const rows = (slug: string): Promise<unknown[]> => install.asTenant(slug, async (c) => (await c.query('SELECT * FROM crm.marker ORDER BY 1')).rows);
  const rejected = async (p: Promise<unknown>): Promise<unknown> =>
    p.then(
      () => undefined,
      (e: unknown) => e,
    );

  beforeAll(async () => {
    install = await quickstartInstall();
    scratch = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-tamper-'));
    for (const slug of ['acme', 'globex']) await install.asTenant(slug, (c) => c.query(`CREATE TABLE crm.marker (v text); INSERT INTO crm.marker VALUES ('${slug} v1')`));
    expect((await install.cli(['tenant', 'create', 'initech'])).code).toBe(0);
    await install.asTenant('initech', (c) => c.query("CREATE TABLE crm.marker (v text); INSERT INTO crm.marker VALUES ('initech v1')"));
    plane = await install.plane();
  });
  afterAll(async () => {
    await plane?.close();
    await install?.cleanup();
    await fs.rm(scratch, {recursive: true, force: true});
  });

  it('a foreign file under another id: verify, restore and rebuild-catalog exit 6; nothing adopted or restored', async () => {
    const globex = await backup('globex');
    const initech = await backup('initech');
    const initechFile = path.join(root(), initech.location);
    const original = await fs.readFile(initechFile);
    const originalManifest = await fs.readFile(`${initechFile}.manifest.json`);
    const before = {dbs: await databases(), initech: await rows('initech')};
    // globex's file, with globex's manifest rewritten to claim initech's id, in initech's place.
    const foreign = await fs.readFile(path.join(root(), globex.location));
    const manifest = JSON.parse(await fs.readFile(path.join(root(), manifestLocation(globex.location)), 'utf8')) as BackupManifest;
    const lie = {...manifest, backupId: initech.id, tenant: 'initech', keyId: 'dek/initech', location: initech.location};
    await fs.writeFile(initechFile, foreign);
    await fs.writeFile(`${initechFile}.manifest.json`, JSON.stringify(lie));
    try {
      const v = await install.cli(['backup', 'verify', initech.id, '--deep']);
      expect(v.code, v.stderr).toBe(6);
      expect(v.stderr).toMatch(/is not the backup its catalog entry describes/);
      const r = await install.cli(['restore', '--tenant', 'initech', '--from', initech.id, '--confirm', 'initech']);
      expect(r.code, r.stderr).toBe(6);
      // The same lie under an id the catalog does not know: rebuild-catalog must not adopt it.
      const fakeId = initech.id.replace(/-[0-9a-f]{6}$/, '-ffffff');
      const fakeLocation = `initech/${fakeId}.dfb`;
      await fs.writeFile(path.join(root(), fakeLocation), foreign);
      await fs.writeFile(path.join(root(), manifestLocation(fakeLocation)), JSON.stringify({...lie, backupId: fakeId, location: fakeLocation}));
      const rb = await install.cli(['backup', 'rebuild-catalog', '--json']);
      expect(rb.code, rb.stdout).toBe(6);
      const entries = JSON.parse(rb.stdout).error.data.entries as Array<{location: string; status: string}>;
      expect(entries.find((e) => e.location === fakeLocation)?.status).toBe('tampered');
      expect(await catalogIds()).not.toContain(fakeId);
      await fs.rm(path.join(root(), fakeLocation));
      await fs.rm(path.join(root(), manifestLocation(fakeLocation)));
    } finally {
      await fs.writeFile(initechFile, original);
      await fs.writeFile(`${initechFile}.manifest.json`, originalManifest);
    }
    expect(await databases()).toEqual(before.dbs);
    expect(await rows('initech')).toEqual(before.initech);
  });

  it('an older file in place of a newer one (replay): verify, restore and rebuild-catalog exit 6', async () => {
    const older = await backup('acme');
    await install.asTenant('acme', (c) => c.query("INSERT INTO crm.marker VALUES ('acme v2')"));
    const newer = await backup('acme');
    const newerFile = path.join(root(), newer.location);
    const saved = {file: await fs.readFile(newerFile), manifest: await fs.readFile(`${newerFile}.manifest.json`)};
    const live = await rows('acme');
    const dbs = await databases();
    await fs.copyFile(path.join(root(), older.location), newerFile);
    try {
      for (const manifest of ['kept', 'replayed'] as const) {
        if (manifest === 'replayed') await fs.copyFile(path.join(root(), manifestLocation(older.location)), `${newerFile}.manifest.json`);
        const v = await install.cli(['backup', 'verify', newer.id, '--deep']);
        expect(v.code, `${manifest}: ${v.stderr}`).toBe(6);
        const r = await install.cli(['restore', '--tenant', 'acme', '--from', newer.id, '--confirm', 'acme']);
        expect(r.code, `${manifest}: ${r.stderr}`).toBe(6);
      }
      // With the catalog entry gone (as after restore --control), rebuild must not adopt the replay.
      const row = (await plane.control.query('DELETE FROM backups WHERE id = $1 RETURNING *', [newer.id])).rows[0] as Record<string, unknown>;
      const rb = await install.cli(['backup', 'rebuild-catalog', '--json']);
      expect(rb.code, rb.stdout).toBe(6);
      expect(await catalogIds()).not.toContain(newer.id);
      await fs.writeFile(newerFile, saved.file);
      await fs.writeFile(`${newerFile}.manifest.json`, saved.manifest);
      // The genuine file is adopted again, so the refusal above was about the bytes.
      const again = await install.cli(['backup', 'rebuild-catalog', '--json']);
      expect(again.code, again.stdout).toBe(0);
      expect(await catalogIds()).toContain(row.id);
    } finally {
      await fs.writeFile(newerFile, saved.file);
      await fs.writeFile(`${newerFile}.manifest.json`, saved.manifest);
    }
    expect(await rows('acme')).toEqual(live);
    expect(await databases()).toEqual(dbs);
  });

  it('a copy with no manifest is authenticated, never waved through: a flipped body byte exits 6, a clean copy verifies', async () => {
    const b = await backup('acme');
    const bytes = await fs.readFile(path.join(root(), b.location));
    const clean = path.join(scratch, 'clean-copy.dfb');
    await fs.writeFile(clean, bytes);
    const ok = await install.cli(['backup', 'verify', clean, '--json']);
    expect(ok.code, ok.stderr).toBe(0);
    expect(JSON.parse(ok.stdout).checks).toEqual(['header-authenticated', 'bound-to-catalog', 'digest-matches-catalog']);
    const flipped = Buffer.from(bytes);
    flipped[bytes.length - 100]! ^= 0x01;
    const bad = path.join(scratch, 'flipped-copy.dfb');
    await fs.writeFile(bad, flipped);
    expect((await install.cli(['backup', 'verify', bad])).code).toBe(6);
    expect((await install.cli(['backup', 'verify', bad, '--deep'])).code).toBe(6);
    const dbs = await databases();
    expect((await install.cli(['restore', '--tenant', 'acme', '--from', bad, '--confirm', 'acme'])).code).toBe(6);
    expect(await databases()).toEqual(dbs);
    // Dropped into the destination under another name, with no manifest: not adopted.
    const copyLocation = `acme/${b.id}-copy.dfb`;
    await fs.writeFile(path.join(root(), copyLocation), bytes);
    try {
      const rb = await install.cli(['backup', 'rebuild-catalog', '--json']);
      expect(rb.code, rb.stdout).toBe(6);
      expect((JSON.parse(rb.stdout).error.data.entries as Array<{location: string; status: string}>).find((e) => e.location === copyLocation)?.status).toBe('tampered');
    } finally {
      await fs.rm(path.join(root(), copyLocation));
    }
    // A file that is no catalog backup and has no manifest: every chunk is decrypted.
    await plane.control.query('DELETE FROM backups WHERE id = $1', [b.id]);
    const alone = await install.cli(['backup', 'verify', clean, '--json']);
    expect(alone.code, alone.stderr).toBe(0);
    expect(JSON.parse(alone.stdout).checks).toEqual(['header-authenticated', 'body-authenticated']);
    expect((await install.cli(['backup', 'rebuild-catalog'])).code).toBe(0);
    expect(await catalogIds()).toContain(b.id);
  });

  it('every header byte flipped, one at a time: verify, restore and rebuild-catalog each fail with VerificationError', {timeout: 600_000}, async () => {
    const cataloged = await backup('acme');
    const orphan = await backup('acme');
    await plane.control.query('DELETE FROM backups WHERE id = $1', [orphan.id]);
    const files = {cataloged: path.join(root(), cataloged.location), orphan: path.join(root(), orphan.location)};
    const originals = {cataloged: await fs.readFile(files.cataloged), orphan: await fs.readFile(files.orphan)};
    const headerLength = parseHeader(originals.cataloged, 'x').length;
    expect(parseHeader(originals.orphan, 'x').length).toBe(headerLength);
    const loose = path.join(scratch, 'loose.dfb');
    const dbs = await databases();
    const live = await rows('acme');
    const escaped: string[] = [];
    const expectVerification = (err: unknown, what: string): void => {
      if (!(err instanceof VerificationError)) escaped.push(`${what}: ${err === undefined ? 'accepted' : `${(err as Error).constructor.name}: ${(err as Error).message}`}`);
    };
    try {
      for (let i = 0; i < headerLength; i++) {
        const flip = (b: Buffer): Buffer => {
          const t = Buffer.from(b);
          t[i]! ^= 0x01;
          return t;
        };
        await fs.writeFile(files.cataloged, flip(originals.cataloged));
        await fs.writeFile(files.orphan, flip(originals.orphan));
        await fs.writeFile(loose, flip(originals.cataloged));
        expectVerification(await rejected(verifyBackup(plane, cataloged.id, {deep: false})), `byte ${i}, verify by id`);
        expectVerification(await rejected(verifyBackup(plane, loose, {deep: false})), `byte ${i}, verify a loose copy`);
        expectVerification(await rejected(restoreTenant(plane, {tenant: 'acme', from: cataloged.id, confirm: 'acme'})), `byte ${i}, restore by id`);
        expectVerification(await rejected(restoreTenant(plane, {tenant: 'acme', from: loose, confirm: 'acme'})), `byte ${i}, restore a loose copy`);
        const rebuilt = await rebuildCatalog(plane);
        const entry = rebuilt.entries.find((e) => e.location === orphan.location);
        if (entry?.status !== 'tampered') escaped.push(`byte ${i}, rebuild-catalog: ${entry?.status ?? 'not looked at'}`);
      }
    } finally {
      await fs.writeFile(files.cataloged, originals.cataloged);
      await fs.writeFile(files.orphan, originals.orphan);
    }
    expect(escaped, `${headerLength} header bytes`).toEqual([]);
    expect(await catalogIds()).not.toContain(orphan.id);
    expect(await databases()).toEqual(dbs);
    expect(await rows('acme')).toEqual(live);
    // A handful through the CLI: exit 6 for each.
    for (const i of [3, 8, 11, 20, headerLength - 60, headerLength - 1]) {
      const t = Buffer.from(originals.cataloged);
      t[i]! ^= 0x01;
      await fs.writeFile(loose, t);
      const v = await install.cli(['backup', 'verify', loose]);
      expect(v.code, `byte ${i}: ${v.stderr}`).toBe(6);
      const r = await install.cli(['restore', '--tenant', 'acme', '--from', loose, '--confirm', 'acme']);
      expect(r.code, `byte ${i}: ${r.stderr}`).toBe(6);
    }
    // Untouched, both are accepted: the failures above were the flips.
    expect((await verifyBackup(plane, cataloged.id, {deep: true})).checks).toContain('dump-readable');
    expect((await rebuildCatalog(plane)).entries.find((e) => e.location === orphan.location)?.status).toBe('added');
  });

  it('restore --control picks the newest control backup by authenticated time: a forged or copied candidate stops it with exit 6', async () => {
    expect((await install.cli(['backup', '--all'])).code).toBe(0);
    const controlDir = path.join(root(), '_control');
    const genuine = (await fs.readdir(controlDir)).filter((f) => f.endsWith('.dfb')).sort();
    const bytes = await fs.readFile(path.join(controlDir, genuine.at(-1)!));
    const dbs = await databases();
    // A copy of a genuine control backup under a newer-looking name, and one whose creation time
    // was pushed into the future (same length, so only authentication can tell).
    const forged = Buffer.from(bytes.toString('latin1').replace(/"createdAt":"20(\d\d)/, '"createdAt":"29$1'), 'latin1');
    expect(forged.equals(bytes)).toBe(false);
    for (const [name, content] of [
      ['29991231T000000Z-_control-000000.dfb', bytes],
      [genuine.at(-1)!.replace(/^\d{4}/, '2999'), forged],
    ] as const) {
      await fs.writeFile(path.join(controlDir, name), content);
      try {
        const err = await rejected(restoreControl(install.dir, {confirm: 'dforge_control'}));
        expect(err, name).toBeInstanceOf(VerificationError);
        const r = await install.cli(['restore', '--control', '--confirm', 'dforge_control']);
        expect(r.code, r.stderr).toBe(6);
      } finally {
        await fs.rm(path.join(controlDir, name));
      }
    }
    expect(await databases()).toEqual(dbs);
  });

  it('verify --all prints a line per backup and a summary, and exits 6 when one is tampered', async () => {
    const b = await backup('globex');
    const file = path.join(root(), b.location);
    const original = await fs.readFile(file);
    const t = Buffer.from(original);
    t[original.length - 10]! ^= 0x01;
    await fs.writeFile(file, t);
    try {
      const r = await install.cli(['backup', 'verify', '--all']);
      expect(r.code, r.stderr).toBe(6);
      const lines = r.stdout.trim().split('\n');
      expect(lines).toHaveLength((await catalogIds()).length);
      expect(lines.filter((l) => l.includes('\ttampered'))).toEqual([expect.stringMatching(new RegExp(`^${b.id}\\tglobex\\ttampered\\t`))]);
      expect(r.stderr).toMatch(/verified \d+ backup\(s\): \d+ ok, 1 tampered, 0 not checked/);
    } finally {
      await fs.writeFile(file, original);
    }
    expect((await install.cli(['backup', 'verify', '--all', '--deep'])).code).toBe(0);
  });
});

describe.skipIf(!available)('backup locks cron can rely on', () => {
  let install: EmbeddedInstall;
  beforeAll(async () => {
    install = await quickstartInstall();
  });
  afterAll(async () => {
    await install?.cleanup();
  });

  /** A session on dforge_control that holds backup locks, announced as a dforge run would. */
  const holder = async (announce: string, keys: string[]): Promise<pg.Client> => {
    const plane = await install.plane();
    const password = (await plane.keys.sealed.get('postgres/local-1/provisioner')).toString();
    await plane.close();
    const c = new pg.Client(install.clientConfig('dforge_provisioner', password, 'dforge_control', {application_name: announce}));
    await c.connect();
    for (const k of keys) await c.query("SELECT pg_advisory_lock(hashtext('dforge.backup'), hashtext($1))", [k]);
    return c;
  };
  const backupIds = async (): Promise<string[]> => (JSON.parse((await install.cli(['backup', 'list', '--json'])).stdout) as {backups: Array<{id: string}>}).backups.map((b) => b.id);

  it('an overlapping backup --all exits 5 at once naming the holder; the first run completes with no duplicates', {timeout: 120_000}, async () => {
    // The first run is held inside pg_dump of acme by a table lock, so the overlap is certain.
    await install.asTenant('acme', (c) => c.query('CREATE TABLE crm.big (v int)'));
    const plane = await install.plane();
    const password = await install.tenantPassword(plane, 'acme');
    await plane.close();
    const blocker = new pg.Client(install.clientConfig('tenant_acme', password, 'tenant_acme'));
    await blocker.connect();
    await blocker.query('BEGIN; LOCK TABLE crm.big IN ACCESS EXCLUSIVE MODE');
    const before = await backupIds();
    const first = install.cli(['backup', '--all', '--json']);
    const watcher = await holder('test watcher', []);
    for (let i = 0; i < 200; i++) {
      const held = await watcher.query("SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND objid = hashtext('*all')::oid AND granted");
      if (held.rowCount === 1) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    const second = await install.cli(['backup', '--all', '--json']);
    await blocker.query('ROLLBACK');
    await blocker.end();
    await watcher.end();
    expect(second.code, second.stdout).toBe(5);
    const error = JSON.parse(second.stdout).error;
    expect(error.message).toMatch(/^another backup --all run is under way: pid \d+ on \S+ \(backup --all\), running since \d{4}-/);
    expect(error.data.holder).toMatchObject({command: 'backup --all', host: os.hostname()});
    const done = await first;
    expect(done.code, done.stderr).toBe(0);
    const added = (await backupIds()).filter((id) => !before.includes(id));
    const tenants = added.map((id) => id.replace(/^\d{8}T\d{6}Z-/, '').replace(/-[0-9a-f]{6}$/, ''));
    expect(tenants.sort()).toEqual(['_control', 'acme', 'globex']);
  });

  it('a tenant locked by a concurrent backup --tenant is reported locked, names its holder, and does not make --all exit 4', async () => {
    const c = await holder('dforge 4242@elsewhere backup --tenant acme', ['acme']);
    try {
      const one = await install.cli(['backup', '--tenant', 'acme']);
      expect(one.code).toBe(5);
      expect(one.stderr).toContain('another run is backing up acme: pid 4242 on elsewhere (backup --tenant acme), running since');
      const all = await install.cli(['backup', '--all', '--json']);
      expect(all.code, all.stderr).toBe(0);
      const outcomes = (JSON.parse(all.stdout) as {tenants: Array<{tenant: string; status: string; holder?: {pid: number}}>}).tenants;
      expect(outcomes.find((o) => o.tenant === 'acme')).toMatchObject({status: 'locked', holder: {pid: 4242}});
      expect(outcomes.find((o) => o.tenant === 'globex')?.status).toBe('ok');
    } finally {
      await c.end();
    }
  });

  it('a run that finds every tenant locked exits 5', async () => {
    const c = await holder('dforge 4343@elsewhere backup --tenant', ['acme', 'globex']);
    try {
      const all = await install.cli(['backup', '--all']);
      expect(all.code, all.stderr).toBe(5);
      expect(all.stderr).toMatch(/every tenant was locked by other runs/);
    } finally {
      await c.end();
    }
  });
});
