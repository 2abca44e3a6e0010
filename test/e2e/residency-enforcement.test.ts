import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {tenantsRuntimeDir} from '../../src/runtime/tenant-catalog.js';
import {multiRegionInstall, type MultiRegionInstall} from '../helpers/multi-region.js';
import {findPgBinaries} from '../helpers/pg-cluster.js';
import {missingComponent} from '../helpers/requirements.js';

const available = findPgBinaries() !== undefined || missingComponent('PostgreSQL', 'no binaries under /usr/lib/postgresql');

/** Every file under a directory, relative, sorted (missing directory: none). */
async function filesUnder(dir: string): Promise<string[]> {
  const entries = await fs.readdir(dir, {recursive: true, withFileTypes: true}).catch(() => []);
  return entries.filter((e) => e.isFile()).map((e) => path.relative(dir, path.join(e.parentPath, e.name))).sort();
}

/**
 * Every path that would put a tenant's data outside its region, driven by a careless operator on a
 * real two-region install (eu: eu-1, eu-2, eu-local; us: us-1, us-local): refused with exit 1,
 * naming the tenant, both regions and the flag, with nothing changed anywhere; then allowed once
 * with --allow-cross-region --reason, leaving exactly one residency.cross-region ops-log entry.
 */
describe.skipIf(!available)('residency enforcement', () => {
  let install: MultiRegionInstall;
  let scratch: string;
  let backupId: string;
  /** ustenant's backup taken, with the approval, to eu-local. */
  let euBackupId: string;

  /** What a refused crossing must leave as it was. */
  const snapshot = async (): Promise<unknown> => {
    const plane = await install.plane();
    try {
      const tenants = (await plane.control.query('SELECT slug, region, cluster, status FROM tenants ORDER BY slug')).rows;
      const backups = (await plane.control.query('SELECT id FROM backups ORDER BY id')).rows;
      return {
        databases: {eu1: await install.databasesOn('eu-1'), eu2: await install.databasesOn('eu-2'), us1: await install.databasesOn('us-1')},
        tenants,
        backups,
        crossings: (await crossings()).length,
        files: {eu: await filesUnder(install.destinationDirs['eu-local']!), us: await filesUnder(install.destinationDirs['us-local']!), scratch: await filesUnder(scratch)},
      };
    } finally {
      await plane.close();
    }
  };

  const crossings = async (): Promise<Array<{target: string; details: Record<string, unknown>}>> => {
    const plane = await install.plane();
    try {
      return (await plane.control.query<{target: string; details: Record<string, unknown>}>("SELECT target, details FROM ops_log WHERE action = 'residency.cross-region' ORDER BY seq")).rows;
    } finally {
      await plane.close();
    }
  };

  /** Runs the command without approval (refused, nothing changed), then with it (one recorded crossing). */
  const refusedThenApproved = async (args: string[], operation: string, direction = {fromRegion: 'us', fromJurisdiction: 'US', toRegion: 'eu', toJurisdiction: 'EU'}): Promise<{stdout: string}> => {
    const before = await snapshot();
    const refused = await install.cli(args);
    expect(refused.code, refused.stderr).toBe(1);
    // With --json the error is the JSON on stdout; without, the message on stderr.
    const said = refused.stdout + refused.stderr;
    for (const text of ['ustenant', 'us (US)', 'eu (EU)', '--allow-cross-region', 'nothing was changed']) expect(said).toContain(text);
    expect(await snapshot()).toEqual(before);

    const reason = `DPA-2026-14 ${operation} approved by legal`;
    const earlier = (await crossings()).length;
    const allowed = await install.cli([...args, '--allow-cross-region', '--reason', reason]);
    expect(allowed.code, allowed.stderr).toBe(0);
    const entries = (await crossings()).slice(earlier);
    expect(entries).toHaveLength(1);
    expect(entries[0]!.target).toBe('tenant:ustenant');
    expect(entries[0]!.details).toMatchObject({operation, ...direction, reason});
    return allowed;
  };

  beforeAll(async () => {
    install = await multiRegionInstall();
    scratch = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-residency-'));
    const created = await install.cli(['tenant', 'create', 'ustenant', '--region', 'us', '--json']);
    expect(created.code, created.stderr).toBe(0);
    await install.asTenant('ustenant', (c) => c.query("CREATE TABLE crm.notes (id int PRIMARY KEY, body text); SELECT audit.attach_all(); INSERT INTO crm.notes VALUES (1, 'stays in us')"));
    const backup = await install.cli(['backup', '--tenant', 'ustenant', '--json']);
    expect(backup.code, backup.stderr).toBe(0);
    backupId = (JSON.parse(backup.stdout) as {id: string}).id;
  }, 240_000);

  afterAll(async () => {
    await install?.cleanup();
    if (scratch) await fs.rm(scratch, {recursive: true, force: true});
  });

  it('approval flags are all or nothing: --reason alone, the flag alone, and with backup --all, restore --control or --undo are usage errors', async () => {
    const before = await snapshot();
    const reasonOnly = await install.cli(['backup', '--tenant', 'ustenant', '--destination', 'eu-local', '--reason', 'because we can']);
    expect(reasonOnly.code).toBe(2);
    expect(reasonOnly.stderr).toContain('--allow-cross-region');
    const flagOnly = await install.cli(['backup', '--tenant', 'ustenant', '--destination', 'eu-local', '--allow-cross-region']);
    expect(flagOnly.code).toBe(2);
    expect(flagOnly.stderr).toContain('--reason');
    const all = await install.cli(['backup', '--all', '--allow-cross-region', '--reason', 'DPA-2026-14']);
    expect(all.code).toBe(2);
    expect(all.stderr).toContain('--all');
    for (const mode of [['--control', '--confirm', 'dforge_control'], ['--undo', 'ustenant', '--confirm', 'ustenant']]) {
      const r = await install.cli(['restore', ...mode, '--allow-cross-region', '--reason', 'DPA-2026-14']);
      expect(r.code, mode.join(' ')).toBe(2);
      expect(r.stderr).toContain('apply to restore --tenant only');
    }
    expect(await snapshot()).toEqual(before);
  }, 120_000);

  it('a backup to another region is refused, then taken with the approval, recorded before the dump', async () => {
    const {stdout} = await refusedThenApproved(['backup', '--tenant', 'ustenant', '--destination', 'eu-local', '--json'], 'backup');
    const record = JSON.parse(stdout) as {id: string; destination: string; region: string; location: string};
    // The file is of the region it lives in, so verify, restore and prune find it there.
    expect(record).toMatchObject({destination: 'eu-local', region: 'eu'});
    euBackupId = record.id;
    const verified = await install.cli(['backup', 'verify', record.id]);
    expect(verified.code, verified.stderr).toBe(0);
    expect(await filesUnder(install.destinationDirs['eu-local']!)).toContain(record.location);
    // The tenant's own region needs no approval and records nothing.
    const earlier = (await crossings()).length;
    expect((await install.cli(['backup', '--tenant', 'ustenant', '--destination', 'us-local'])).code).toBe(0);
    expect(await crossings()).toHaveLength(earlier);
  }, 120_000);

  it('restore --as into another region is refused, then made there with the approval; by default the copy stays in the backup region', async () => {
    await refusedThenApproved(['restore', '--tenant', 'ustenant', '--from', backupId, '--as', 'uscopy-eu', '--to-region', 'eu', '--json'], 'restore-as');
    const plane = await install.plane();
    try {
      expect((await plane.tenants.get('uscopy-eu')).region).toBe('eu');
    } finally {
      await plane.close();
    }
    expect(await install.asTenant('uscopy-eu', async (c) => (await c.query('SELECT body FROM crm.notes')).rows)).toEqual([{body: 'stays in us'}]);

    const earlier = (await crossings()).length;
    const local = await install.cli(['restore', '--tenant', 'ustenant', '--from', backupId, '--as', 'uscopy-us']);
    expect(local.code, local.stderr).toBe(0);
    const again = await install.plane();
    try {
      expect((await again.tenants.get('uscopy-us')).region).toBe('us');
    } finally {
      await again.close();
    }
    expect(await crossings()).toHaveLength(earlier);
  }, 240_000);

  it('a restore in place into another region is refused, pointing at tenant move', async () => {
    const before = await snapshot();
    for (const approval of [[], ['--allow-cross-region', '--reason', 'DPA-2026-14 move it']]) {
      const refused = await install.cli(['restore', '--tenant', 'ustenant', '--from', backupId, '--to-region', 'eu', '--confirm', 'ustenant', ...approval]);
      expect(refused.code).toBe(1);
      expect(refused.stderr).toContain('dforge tenant move ustenant --to-region eu');
    }
    const undeclared = await install.cli(['restore', '--tenant', 'ustenant', '--from', backupId, '--to-region', 'mars', '--confirm', 'ustenant']);
    expect(undeclared.code).toBe(2);
    expect(undeclared.stderr).toContain('region mars is not declared');
    expect(await snapshot()).toEqual(before);
  }, 120_000);

  it('a restore in place from a backup stored in another region is a crossing back: refused, then taken with the approval', async () => {
    await refusedThenApproved(['restore', '--tenant', 'ustenant', '--from', euBackupId, '--confirm', 'ustenant', '--json'], 'restore', {fromRegion: 'eu', fromJurisdiction: 'EU', toRegion: 'us', toJurisdiction: 'US'});
    expect(await install.asTenant('ustenant', async (c) => (await c.query('SELECT body FROM crm.notes')).rows)).toEqual([{body: 'stays in us'}]);
  }, 240_000);

  it('a us backup file copied by hand into eu-local is not the backup its header describes: exit 6, approval or not, nothing created', async () => {
    const location = path.join('ustenant', `${backupId}.dfb`);
    const planted = path.join(install.destinationDirs['eu-local']!, location);
    await fs.copyFile(path.join(install.destinationDirs['us-local']!, location), planted);
    try {
      const before = await snapshot();
      const approval = ['--allow-cross-region', '--reason', 'DPA-2026-14 planted copy'];
      const inPlace = await install.cli(['restore', '--tenant', 'ustenant', '--from', planted, '--confirm', 'ustenant', ...approval]);
      expect(inPlace.code, inPlace.stderr).toBe(6);
      expect(inPlace.stderr).toContain('region eu (the file is of region us)');
      const asCopy = await install.cli(['restore', '--tenant', 'ustenant', '--from', planted, '--as', 'planted', '--to-region', 'eu', ...approval]);
      expect(asCopy.code, asCopy.stderr).toBe(6);
      expect(await snapshot()).toEqual(before);
    } finally {
      await fs.rm(planted);
    }
  }, 120_000);

  it("audit export of a tenant of another region than the operator's is refused, then written with the approval; the ops log exports freely", async () => {
    const out = path.join(scratch, 'ustenant-changes.jsonl');
    await refusedThenApproved(['audit', 'export', '--tenant', 'ustenant', '--format', 'jsonl', '--out', out], 'export');
    expect(await fs.readFile(out, 'utf8')).toContain('stays in us');

    const earlier = (await crossings()).length;
    const ops = await install.cli(['audit', 'export', '--ops', '--format', 'jsonl', '--out', path.join(scratch, 'ops.jsonl')]);
    expect(ops.code, ops.stderr).toBe(0);
    expect(await crossings()).toHaveLength(earlier);
  }, 120_000);

  it("audit tail of a tenant of another region shows nothing without the approval (redirected, it would be a file), then shows its changes with it", async () => {
    const shown = await refusedThenApproved(['audit', 'tail', '--tenant', 'ustenant', '--json'], 'export');
    expect(shown.stdout).toContain('stays in us');
  }, 120_000);

  it('an export to a directory that does not exist is refused before any crossing is recorded', async () => {
    const earlier = (await crossings()).length;
    const r = await install.cli(['audit', 'export', '--tenant', 'ustenant', '--format', 'jsonl', '--out', path.join(scratch, 'missing', 'x.jsonl'), '--allow-cross-region', '--reason', 'never happens']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('does not exist or is not writable; nothing was exported');
    expect(await crossings()).toHaveLength(earlier);
  }, 60_000);

  it('backup decrypt of another region’s backup is refused before the question, then written with the approval', async () => {
    const out = path.join(scratch, 'ustenant.dump');
    await refusedThenApproved(['backup', 'decrypt', backupId, '--out', out, '--confirm', backupId], 'export');
    expect((await fs.stat(out)).size).toBeGreaterThan(0);
  }, 120_000);

  it('backup decrypt --from-control-backup of another region’s backup is refused, and the re-run it suggests keeps --from-control-backup', async () => {
    const all = await install.cli(['backup', '--all', '--json']);
    expect(all.code, all.stderr).toBe(0);
    const control = (JSON.parse(all.stdout) as {control: {location: string; region: string}[]}).control.find((c) => c.region === 'us')!;
    const tenant = (JSON.parse((await install.cli(['backup', 'list', '--tenant', 'ustenant', '--json'])).stdout) as {backups: {id: string; location: string}[]}).backups.find((b) => b.id === backupId)!;
    const controlFile = path.join(install.destinationDirs['us-local']!, control.location);
    const file = path.join(install.destinationDirs['us-local']!, tenant.location);
    const out = path.join(scratch, 'ustenant-offline.dump');
    const r = await install.cli(['backup', 'decrypt', file, '--from-control-backup', controlFile, '--out', out, '--confirm', backupId, '--json']);
    expect(r.code).toBe(1);
    const error = (JSON.parse(r.stdout) as {error: {message: string; nextSteps: string[]}}).error;
    expect(error.message).toContain('out of region us (US) into region eu (EU)');
    expect(error.nextSteps.join('\n')).toContain(`dforge backup decrypt ${file} --from-control-backup ${controlFile} --out ${out} --confirm ${backupId} --allow-cross-region --reason`);
    await expect(fs.stat(out)).rejects.toThrow(/ENOENT/);
  }, 180_000);

  it('operatorRegion must be a declared region', async () => {
    await install.editConfig((config) => {
      config.operatorRegion = 'mars';
    });
    try {
      const status = await install.cli(['backup', 'list']);
      expect(status.code).not.toBe(0);
      expect(status.stderr).toContain('operatorRegion "mars" is not declared');
    } finally {
      await install.editConfig((config) => {
        delete config.operatorRegion;
      });
    }
  }, 60_000);

  it('a tenant whose cluster dforge.yaml now declares in another region fails closed on every data path, until the file is put back', async () => {
    const created = await install.cli(['tenant', 'create', 'hooli', '--region', 'eu', '--cluster', 'eu-2', '--json']);
    expect(created.code, created.stderr).toBe(0);
    const query = async (sql: string): Promise<unknown[]> => {
      const plane = await install.plane();
      try {
        return (await plane.control.query(sql)).rows;
      } finally {
        await plane.close();
      }
    };
    const cluster = (JSON.parse(created.stdout) as {cluster: string}).cluster;
    // eu-1 holds dforge_control and stays; hooli is on the other eu cluster, the one an edit can move.
    expect(cluster).toBe('eu-2');
    // The careless edit: eu-2 (and hooli's database with it) declared in region us.
    await install.editConfig((c) => {
      c.regions.eu.clusters = c.regions.eu.clusters.filter((x: {name: string}) => x.name !== 'eu-2');
      c.regions.us.clusters.push({name: 'eu-2', kind: 'embedded', port: install.ports['eu-2']});
    });
    try {
      const out = path.join(scratch, 'hooli.jsonl');
      for (const args of [
        ['backup', '--tenant', 'hooli'],
        ['backup', '--tenant', 'hooli', '--destination', 'us-local', '--allow-cross-region', '--reason', 'it is in us now anyway'],
        ['audit', 'export', '--tenant', 'hooli', '--format', 'jsonl', '--out', out],
        ['tenant', 'show', 'hooli'],
        ['tenant', 'rotate-credentials', 'hooli'],
      ]) {
        const r = await install.cli(args);
        expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(1);
        expect(r.stderr).toContain('tenant hooli is pinned to region eu on cluster eu-2, but dforge.yaml declares cluster eu-2 in region us');
      }
      const all = await install.cli(['backup', '--all', '--json']);
      expect(all.code).toBe(4);
      expect(all.stderr).toContain('tenant hooli is pinned to region eu on cluster eu-2');
      // The other tenants were backed up; nothing of hooli's was written anywhere.
      expect(await query("SELECT id FROM backups WHERE tenant = 'hooli'")).toEqual([]);
      expect([...(await filesUnder(install.destinationDirs['eu-local']!)), ...(await filesUnder(install.destinationDirs['us-local']!))].filter((f) => f.startsWith('hooli/') && f.endsWith('.dfb'))).toEqual([]);
      await expect(fs.stat(out)).rejects.toThrow();
      // The app is never pointed at it either: the next catalog leaves it out.
      expect((await install.cli(['tenant', 'create', 'pied-piper', '--region', 'eu'])).code).toBe(0);
      const catalog = JSON.parse(await fs.readFile(path.join(tenantsRuntimeDir(install.dir), 'catalog.json'), 'utf8')) as {tenants: {slug: string}[]};
      expect(catalog.tenants.map((t) => t.slug)).toContain('pied-piper');
      expect(catalog.tenants.map((t) => t.slug)).not.toContain('hooli');
    } finally {
      await install.editConfig((c) => {
        c.regions.us.clusters = c.regions.us.clusters.filter((x: {name: string}) => x.name !== 'eu-2');
        c.regions.eu.clusters.push({name: 'eu-2', kind: 'embedded', port: install.ports['eu-2']});
      });
    }
    expect((await install.cli(['backup', '--tenant', 'hooli'])).code).toBe(0);
  });
});
