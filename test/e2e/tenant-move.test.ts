import {promises as fs} from 'node:fs';
import path from 'node:path';

import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {openControlPlane} from '../../src/control/plane.js';
import {connectOverSocket} from '../../src/postgres/connect.js';
import {EMBEDDED_SUPERUSER} from '../../src/postgres/embedded-install.js';
import {tenantsRuntimeDir} from '../../src/runtime/tenant-catalog.js';
import {runCli, type CliResult} from '../helpers/cli.js';
import {crashAtEveryStep} from '../helpers/crash-points.js';
import {findPgBinaries} from '../helpers/pg-cluster.js';
import {multiRegionInstall, type MultiRegionInstall} from '../helpers/multi-region.js';
import {missingComponent} from '../helpers/requirements.js';

const available = findPgBinaries() !== undefined || missingComponent('PostgreSQL', 'no binaries under /usr/lib/postgresql');
const CLUSTERS = ['eu-1', 'eu-2', 'us-1'];

/**
 * Tenant moves on one real two-region install (eu: eu-1, eu-2; us: us-1). Each case uses its own
 * cheap tenant, so the cases do not depend on each other's order.
 */
describe.skipIf(!available)('tenant move (e2e)', () => {
  let install: MultiRegionInstall;
  beforeAll(async () => {
    install = await multiRegionInstall();
  }, 180_000);
  afterAll(async () => {
    await install?.cleanup();
  });

  const cli = (args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliResult> => runCli([...args, '--dir', install.dir.root], {env});
  const failure = (stdout: string): {message: string; nextSteps: string[]; data: Record<string, unknown>} => (JSON.parse(stdout) as {error: {message: string; nextSteps: string[]; data: Record<string, unknown>}}).error;
  const dbOf = (slug: string): string => `tenant_${slug.replaceAll('-', '_')}`;

  /** Every cluster's databases of the tenant, and whether its role there may log in. */
  const presence = async (slug: string): Promise<Record<string, {database: boolean; role: boolean | null}>> => {
    const plane = await openControlPlane(install.dir);
    try {
      const out: Record<string, {database: boolean; role: boolean | null}> = {};
      for (const cluster of CLUSTERS) {
        const c = await plane.provisionerOn(cluster);
        try {
          const db = await c.query('SELECT 1 FROM pg_database WHERE datname = $1', [dbOf(slug)]);
          const role = await c.query<{rolcanlogin: boolean}>('SELECT rolcanlogin FROM pg_roles WHERE rolname = $1', [dbOf(slug)]);
          out[cluster] = {database: db.rowCount === 1, role: role.rowCount === 1 ? role.rows[0]!.rolcanlogin : null};
        } finally {
          await c.end();
        }
      }
      return out;
    } finally {
      await plane.close();
    }
  };
  /** Clusters where the tenant's database exists and its role may log in: exactly one, always. */
  const live = async (slug: string): Promise<string[]> => Object.entries(await presence(slug)).filter(([, p]) => p.database && p.role === true).map(([c]) => c);
  /** Any database or role of the tenant (restore scratch and roles included) on a cluster. */
  const leftovers = async (slug: string, cluster: string): Promise<string[]> => {
    const plane = await openControlPlane(install.dir);
    try {
      const c = await plane.provisionerOn(cluster);
      try {
        const r = await c.query<{name: string}>("SELECT datname AS name FROM pg_database WHERE datname LIKE $1 || '%' UNION ALL SELECT rolname FROM pg_roles WHERE rolname LIKE $1 || '%'", [dbOf(slug)]);
        return r.rows.map((x) => x.name).sort();
      } finally {
        await c.end();
      }
    } finally {
      await plane.close();
    }
  };
  const registry = async (slug: string): Promise<{region: string; cluster: string}> => {
    const r = await cli(['tenant', 'show', slug, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const t = JSON.parse(r.stdout) as {region: string; cluster: string};
    return {region: t.region, cluster: t.cluster};
  };
  /** A tenant on eu-1 with rows in two module tables and the change log. */
  const tenantWithRows = async (slug: string): Promise<void> => {
    const r = await cli(['tenant', 'create', slug, '--cluster', 'eu-1', '--json']);
    expect(r.code, r.stderr).toBe(0);
    await install.asTenant(slug, async (c) => {
      await c.query('CREATE TABLE crm.contacts (id serial PRIMARY KEY, name text NOT NULL, note jsonb)');
      await c.query("INSERT INTO crm.contacts (name, note) SELECT 'contact ' || g, jsonb_build_object('n', g) FROM generate_series(1, 300) g");
      await c.query('CREATE TABLE hr.staff (id bigint PRIMARY KEY, salary numeric(12,2))');
      await c.query('INSERT INTO hr.staff SELECT g, g * 1000.5 FROM generate_series(1, 50) g');
      // json and point have no hash function: their columns are hashed by their text, the others through their types' hash functions.
      await c.query("CREATE TABLE crm.shapes (id int PRIMARY KEY, doc json, at point); INSERT INTO crm.shapes SELECT g, json_build_object('g', g), point(g, -g) FROM generate_series(1, 20) g");
    });
  };
  const checksum = (slug: string): Promise<string[]> =>
    install.asTenant(slug, async (c) => {
      const out: string[] = [];
      for (const t of ['crm.contacts', 'hr.staff']) out.push((await c.query<{m: string}>(`SELECT count(*) || ':' || md5(string_agg(t::text, ',' ORDER BY t::text)) AS m FROM ${t} AS t`)).rows[0]!.m);
      return out;
    });

  it('hostile tenant: code its dump carries (a CHECK constraint calling its own function) runs during the load as its restore role, never as anything more powerful', async () => {
    await tenantWithRows('hostile-fn');
    const role = dbOf('hostile-fn');
    await install.asTenant('hostile-fn', async (c) => {
      // Raises (failing the load) if evaluated in any session but the tenant's own or its restore role's.
      await c.query(`CREATE FUNCTION crm.who_runs_me(i int) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
        BEGIN
          IF session_user::text NOT IN ('${role}', '${role}__restore') OR current_user::text NOT IN ('${role}', '${role}__restore') THEN
            RAISE EXCEPTION 'tenant code ran as session % / current %', session_user, current_user;
          END IF;
          RETURN true;
        END $$`);
      await c.query('CREATE TABLE crm.guarded (id int PRIMARY KEY CHECK (crm.who_runs_me(id)))');
      await c.query('INSERT INTO crm.guarded SELECT generate_series(1, 20)');
    });
    const r = await cli(['tenant', 'move', 'hostile-fn', '--to-cluster', 'eu-2', '--json']);
    expect(r.code, r.stderr + r.stdout).toBe(0);
    expect(await live('hostile-fn')).toEqual(['eu-2']);
    expect(await install.asTenant('hostile-fn', async (c) => (await c.query<{n: number}>('SELECT count(*)::int AS n FROM crm.guarded')).rows[0]!.n)).toBe(20);
    // The database and the login role share the name; the restore role and its scratch database are gone.
    expect(await leftovers('hostile-fn', 'eu-2')).toEqual([role, role, `${role}__owner`]);
  }, 120_000);

  it('refuses a move to another region without --allow-cross-region (exit 1), naming tenant, regions and flag; nothing changes on any cluster', async () => {
    await tenantWithRows('hostile-eu');
    const before = await Promise.all(CLUSTERS.map((c) => install.databasesOn(c)));
    const r = await cli(['tenant', 'move', 'hostile-eu', '--to-region', 'us', '--json']);
    expect(r.code).toBe(1);
    const err = failure(r.stdout);
    expect(err.message).toMatch(/data of tenant hostile-eu out of region eu \(EU\) into region us \(US\)/);
    expect(err.nextSteps.join('\n')).toContain('--allow-cross-region --reason');
    expect(await Promise.all(CLUSTERS.map((c) => install.databasesOn(c)))).toEqual(before);
    expect(await registry('hostile-eu')).toEqual({region: 'eu', cluster: 'eu-1'});
    expect(await live('hostile-eu')).toEqual(['eu-1']);
    const status = await cli(['tenant', 'move', 'hostile-eu', '--status', '--json']);
    expect(JSON.parse(status.stdout).move).toBeNull();
  }, 120_000);

  it('refuses a target that already holds the tenant database, naming it; and a purge without --confirm (exit 2)', async () => {
    await tenantWithRows('squatted');
    const plane = await openControlPlane(install.dir);
    try {
      const c = await plane.provisionerOn('eu-2');
      await c.query(`CREATE DATABASE ${dbOf('squatted')}`);
      await c.end();
    } finally {
      await plane.close();
    }
    const r = await cli(['tenant', 'move', 'squatted', '--to-cluster', 'eu-2', '--json']);
    expect(r.code).toBe(1);
    expect(failure(r.stdout).message).toContain(`cluster eu-2 already holds database ${dbOf('squatted')}`);
    expect(await registry('squatted')).toEqual({region: 'eu', cluster: 'eu-1'});
    expect(await live('squatted')).toEqual(['eu-1']);
    const purge = await cli(['tenant', 'move', 'squatted', '--purge-source', '--json']);
    expect(purge.code).toBe(2);
  }, 120_000);

  it('moves eu-1 -> eu-2 with the same rows and checksums; the tenant logs in on eu-2 with its own credentials; the source stays NOLOGIN until --purge-source', async () => {
    await tenantWithRows('mover');
    const before = await checksum('mover');
    const r = await cli(['tenant', 'move', 'mover', '--to-cluster', 'eu-2', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as {move: {state: string; toCluster: string}; checksums: {table: string; rows: number}[]};
    expect(out.move.state).toBe('done');
    expect(out.checksums.find((t) => t.table === 'crm.contacts')?.rows).toBe(300);
    expect(await registry('mover')).toEqual({region: 'eu', cluster: 'eu-2'});
    expect(await checksum('mover')).toEqual(before);
    expect(await live('mover')).toEqual(['eu-2']);
    expect((await presence('mover'))['eu-1']).toEqual({database: true, role: false});
    // The app catalog was republished: it names eu-2's port.
    const catalog = JSON.parse(await fs.readFile(path.join(tenantsRuntimeDir(install.dir), 'catalog.json'), 'utf8')) as {tenants: {slug: string; port: number}[]};
    expect(catalog.tenants.find((t) => t.slug === 'mover')?.port).toBe(install.ports['eu-2']);
    const purge = await cli(['tenant', 'move', 'mover', '--purge-source', '--confirm', 'mover', '--json']);
    expect(purge.code, purge.stderr).toBe(0);
    expect(await leftovers('mover', 'eu-1')).toEqual([]);
    expect(await checksum('mover')).toEqual(before);
  }, 180_000);

  it('moves eu -> us with --allow-cross-region --reason, leaving one residency.cross-region ops-log entry', async () => {
    await tenantWithRows('emigrant');
    const before = await checksum('emigrant');
    const r = await cli(['tenant', 'move', 'emigrant', '--to-region', 'us', '--allow-cross-region', '--reason', 'DPA-2026-14 customer request', '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(await registry('emigrant')).toEqual({region: 'us', cluster: 'us-1'});
    expect(await checksum('emigrant')).toEqual(before);
    expect(await live('emigrant')).toEqual(['us-1']);
    const plane = await openControlPlane(install.dir);
    try {
      const rows = await plane.control.query<{details: {reason: string; operation: string}}>("SELECT details FROM ops_log WHERE action = 'residency.cross-region' AND target LIKE '%emigrant%'");
      expect(rows.rows.map((x) => [x.details.operation, x.details.reason])).toEqual([['move', 'DPA-2026-14 customer request']]);
    } finally {
      await plane.close();
    }
  }, 180_000);
  it('--purge-source after a move out of eu deletes its eu backups and crypto-shreds the one it cannot reach; the backup made in us still restores', async () => {
    await tenantWithRows('leaver');
    const oldDir = path.join(install.dir.root, 'eu-old-backups');
    await install.editConfig((config) => config.regions.eu.backup.destinations.push({name: 'eu-old', kind: 'local', path: oldDir}));
    const backup = async (args: string[]): Promise<{id: string; location: string}> => {
      const r = await cli(['backup', '--tenant', 'leaver', ...args, '--json']);
      expect(r.code, r.stdout).toBe(0);
      return JSON.parse(r.stdout) as {id: string; location: string};
    };
    const inEu = await backup([]);
    const inOld = await backup(['--destination', 'eu-old']);
    // The operator retires eu-old: dforge can no longer reach it to delete what it holds.
    await install.editConfig((config) => (config.regions.eu.backup.destinations = config.regions.eu.backup.destinations.filter((d: {name: string}) => d.name !== 'eu-old')));
    const moved = await cli(['tenant', 'move', 'leaver', '--to-region', 'us', '--allow-cross-region', '--reason', 'contract moved to the US entity', '--json']);
    expect(moved.code, moved.stderr).toBe(0);
    expect((JSON.parse(moved.stdout) as {move: {keyRotatedTo: number}}).move.keyRotatedTo).toBe(2);
    const inUs = await backup([]);
    const before = await checksum('leaver');

    const r = await cli(['tenant', 'move', 'leaver', '--purge-source', '--confirm', 'leaver', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const purged = JSON.parse(r.stdout) as {backupsDeleted: string[]; backupsShredded: string[]; keyVersionsDestroyed: number[]; retained: unknown[]; move: {sourcePurgedAt: string | null}};
    expect(purged).toMatchObject({backupsDeleted: [inEu.id], backupsShredded: [inOld.id], keyVersionsDestroyed: [1], retained: []});
    expect(purged.move.sourcePurgedAt).not.toBeNull();
    expect(await leftovers('leaver', 'eu-1')).toEqual([]);
    const list = JSON.parse((await cli(['backup', 'list', '--tenant', 'leaver', '--json'])).stdout) as {backups: {id: string}[]};
    expect(list.backups.map((b) => b.id)).toEqual([inUs.id]);
    await expect(fs.stat(path.join(install.destinationDirs['eu-local']!, inEu.location))).rejects.toThrow(/ENOENT/);
    // The file left in eu-old is ciphertext nobody can open any more.
    const shredded = path.join(oldDir, inOld.location);
    await fs.stat(shredded);
    const open = await cli(['restore', '--tenant', 'leaver', '--from', shredded, '--as', 'leaver-eu-copy', '--allow-cross-region', '--reason', 'test', '--json']);
    expect(open.code).not.toBe(0);
    expect(failure(open.stdout).message).toMatch(/v1 does not exist/);
    // The us backup is under the rotated key: it still restores, with the same rows.
    const back = await cli(['restore', '--tenant', 'leaver', '--from', inUs.id, '--as', 'leaver-copy', '--json']);
    expect(back.code, back.stderr).toBe(0);
    expect(await checksum('leaver-copy')).toEqual(before);
    // The auditor's record names the move with both regions, its approval and the purge.
    const md = await cli(['residency', 'report', '--format', 'md']);
    expect(md.code, md.stderr).toBe(0);
    const row = md.stdout.split('\n').find((l) => l.startsWith('| #') && l.includes('| leaver |'));
    expect(row).toMatch(/eu \(EU\) \/ eu-1 \| us \(US\) \/ us-1 \| done \| contract moved to the US entity \|/);
    expect(row).not.toMatch(/\| - \|$/);
  }, 240_000);

  it('--purge-source that can neither delete a source-region backup nor destroy its key version stops with exit 4, keeps it listed, and finishes on the rerun once the operator removes it', async () => {
    await tenantWithRows('keeper');
    const backup = async (args: string[]): Promise<{id: string; location: string}> => {
      const r = await cli(['backup', '--tenant', 'keeper', ...args, '--json']);
      expect(r.code, r.stdout).toBe(0);
      return JSON.parse(r.stdout) as {id: string; location: string};
    };
    const inEu = await backup([]);
    // An approved copy in us under the same key version: that version can't be destroyed.
    await backup(['--destination', 'us-local', '--allow-cross-region', '--reason', 'DR copy approved by legal']);
    expect((await cli(['tenant', 'move', 'keeper', '--to-region', 'us', '--allow-cross-region', '--reason', 'customer moved', '--json'])).code).toBe(0);
    // The eu copy can't be deleted: its place now holds a directory.
    const file = path.join(install.destinationDirs['eu-local']!, inEu.location);
    await fs.rm(file);
    await fs.mkdir(file);
    await fs.writeFile(path.join(file, 'x'), 'x');

    const r = await cli(['tenant', 'move', 'keeper', '--purge-source', '--confirm', 'keeper', '--json']);
    expect(r.code).toBe(4);
    const error = failure(r.stdout);
    expect(error.message).toContain(inEu.id);
    expect(error.message).toContain('also opens a backup outside the region');
    const listed = (JSON.parse((await cli(['backup', 'list', '--tenant', 'keeper', '--json'])).stdout) as {backups: {id: string}[]}).backups.map((b) => b.id);
    expect(listed).toContain(inEu.id);
    expect((JSON.parse((await cli(['tenant', 'move', 'keeper', '--status', '--json'])).stdout) as {move: {sourcePurgedAt: string | null}}).move.sourcePurgedAt).toBeNull();

    await fs.rm(file, {recursive: true});
    const again = await cli(['tenant', 'move', 'keeper', '--purge-source', '--confirm', 'keeper', '--json']);
    expect(again.code, again.stdout).toBe(0);
    expect(JSON.parse(again.stdout)).toMatchObject({backupsDeleted: [inEu.id], retained: []});
    expect((JSON.parse((await cli(['tenant', 'move', 'keeper', '--status', '--json'])).stdout) as {move: {sourcePurgedAt: string | null}}).move.sourcePurgedAt).not.toBeNull();
  }, 240_000);

  it('after two moves, --purge-source purges the newest source first and the older one on the next run; then there is nothing left to purge', async () => {
    await tenantWithRows('nomad');
    const before = await checksum('nomad');
    expect((await cli(['tenant', 'move', 'nomad', '--to-cluster', 'eu-2', '--json'])).code).toBe(0);
    expect((await cli(['tenant', 'move', 'nomad', '--to-region', 'us', '--allow-cross-region', '--reason', 'customer moved', '--json'])).code).toBe(0);
    const purge = async (): Promise<CliResult> => cli(['tenant', 'move', 'nomad', '--purge-source', '--confirm', 'nomad', '--json']);
    const first = await purge();
    expect(first.code, first.stdout).toBe(0);
    expect(JSON.parse(first.stdout)).toMatchObject({cluster: 'eu-2', dropped: [dbOf('nomad')]});
    expect(await leftovers('nomad', 'eu-2')).toEqual([]);
    expect((await presence('nomad'))['eu-1']).toEqual({database: true, role: false});
    const second = await purge();
    expect(second.code, second.stdout).toBe(0);
    expect(JSON.parse(second.stdout)).toMatchObject({cluster: 'eu-1', dropped: [dbOf('nomad')]});
    expect(await leftovers('nomad', 'eu-1')).toEqual([]);
    const third = await purge();
    expect(third.code).toBe(1);
    expect(failure(third.stdout).message).toContain('the source of every finished move of tenant nomad is already purged');
    expect(await live('nomad')).toEqual(['us-1']);
    expect(await checksum('nomad')).toEqual(before);
  }, 240_000);

  it('a copy changed on the target before verification is caught (exit 6, naming the table); the registry stays on the source and --rollback brings it back', async () => {
    // Where the move makes its copy durable, counted from a full run of the same shape.
    await tenantWithRows('traced');
    const trace = path.join(install.dir.root, 'move-trace.txt');
    expect((await cli(['tenant', 'move', 'traced', '--to-cluster', 'eu-2', '--json'], {DFORGE_CRASH_TRACE: trace})).code).toBe(0);
    const copied = (await fs.readFile(trace, 'utf8')).split('\n').find((l) => l.endsWith('\ttenant.move.copied'))!.split('\t')[0]!;

    await tenantWithRows('forged');
    const before = await checksum('forged');
    expect((await cli(['tenant', 'move', 'forged', '--to-cluster', 'eu-2', '--json'], {DFORGE_CRASH_AT: copied})).code).not.toBe(0);
    expect(await journalState('forged')).toBe('copied');
    // While the move is open, the app's catalog marks the tenant read-only (its role can't log in).
    const entry = async (): Promise<{port: number; moving?: boolean} | undefined> =>
      (JSON.parse(await fs.readFile(path.join(tenantsRuntimeDir(install.dir), 'catalog.json'), 'utf8')) as {tenants: {slug: string; port: number; moving?: boolean}[]}).tenants.find((t) => t.slug === 'forged');
    expect(await entry()).toMatchObject({port: install.ports['eu-1'], moving: true});
    // Someone with the target's superuser changes one row of the copy.
    const plane = await openControlPlane(install.dir);
    const password = (await plane.keys.sealed.get('postgres/eu-2/superuser')).toString('utf8');
    await plane.close();
    const c = await connectOverSocket(path.join(install.dir.root, 'run/postgres/eu-2'), install.ports['eu-2']!, {user: EMBEDDED_SUPERUSER, password, database: dbOf('forged')});
    try {
      await c.query("UPDATE crm.contacts SET name = 'forged' WHERE id = 7");
    } finally {
      await c.end();
    }
    const r = await cli(['tenant', 'move', 'forged', '--resume', '--json']);
    expect(r.code).toBe(6);
    expect(failure(r.stdout).message).toMatch(/differs from its source on eu-1 \(tables: [^)]*crm\.contacts\); the registry still names eu-1/);
    expect(await registry('forged')).toEqual({region: 'eu', cluster: 'eu-1'});
    expect((await cli(['tenant', 'move', 'forged', '--rollback', '--json'])).code).toBe(0);
    expect(await live('forged')).toEqual(['eu-1']);
    expect(await entry()).toEqual(expect.not.objectContaining({moving: true}));
    expect((await entry())?.port).toBe(install.ports['eu-1']);
    expect(await checksum('forged')).toEqual(before);
  }, 180_000);

  /** The state the journal shows for the tenant's open or last move. */
  const journalState = async (slug: string): Promise<string | null> => {
    const r = await cli(['tenant', 'move', slug, '--status', '--json']);
    expect(r.code, r.stderr).toBe(0);
    return (JSON.parse(r.stdout) as {move: {state: string} | null}).move?.state ?? null;
  };

  it('a kill at every journal step, then --resume, ends with exactly one live database, on the target, with the same rows', async () => {
    let n = 0;
    let slug = '';
    let before: string[] = [];
    await crashAtEveryStep({
      name: 'tenant move, then --resume',
      prepare: async () => {
        slug = `kr-${++n}`;
        await tenantWithRows(slug);
        before = await checksum(slug);
      },
      run: (env) => cli(['tenant', 'move', slug, '--to-cluster', 'eu-2', '--json'], env),
      recover: async (step) => {
        if ((await journalState(slug)) !== 'done') {
          const r = await cli(['tenant', 'move', slug, '--resume', '--json']);
          expect(r.code, `${step}: ${r.stderr}`).toBe(0);
        }
        expect(await journalState(slug), step).toBe('done');
        expect(await live(slug), step).toEqual(['eu-2']);
        expect(await registry(slug), step).toEqual({region: 'eu', cluster: 'eu-2'});
        expect(await checksum(slug), step).toEqual(before);
        expect((await presence(slug))['eu-1'], step).toEqual({database: true, role: false});
      },
    });
  }, 600_000);

  it('across regions: a kill at every step (the data-key rotation before cutover included), then --resume, ends on us-1 with the same rows and one recorded rotation', async () => {
    let n = 0;
    let slug = '';
    let before: string[] = [];
    await crashAtEveryStep({
      name: 'tenant move across regions, then --resume',
      prepare: async () => {
        slug = `kx-${++n}`;
        await tenantWithRows(slug);
        before = await checksum(slug);
      },
      run: (env) => cli(['tenant', 'move', slug, '--to-region', 'us', '--allow-cross-region', '--reason', 'kill matrix', '--json'], env),
      recover: async (step) => {
        const open = await cli(['tenant', 'move', slug, '--status', '--json']);
        const state = (JSON.parse(open.stdout) as {move: {state: string} | null}).move?.state ?? null;
        // Killed before the journal row exists: nothing was planned, so nothing is resumed.
        if (state === null) {
          expect(await live(slug), step).toEqual(['eu-1']);
          return;
        }
        if (state !== 'done') expect((await cli(['tenant', 'move', slug, '--resume', '--json'])).code, step).toBe(0);
        const done = JSON.parse((await cli(['tenant', 'move', slug, '--status', '--json'])).stdout) as {move: {state: string; keyRotatedTo: number | null}};
        expect(done.move.state, step).toBe('done');
        expect(done.move.keyRotatedTo, step).toBeGreaterThanOrEqual(2);
        expect(await live(slug), step).toEqual(['us-1']);
        expect(await registry(slug), step).toEqual({region: 'us', cluster: 'us-1'});
        expect(await checksum(slug), step).toEqual(before);
      },
    });
  }, 600_000);

  it('a kill at every journal step, then --rollback, ends with exactly one live database and nothing of the tenant left on the target; past cutover the rollback is refused and --resume finishes', async () => {
    let n = 0;
    let slug = '';
    let before: string[] = [];
    await crashAtEveryStep({
      name: 'tenant move, then --rollback',
      prepare: async () => {
        slug = `kb-${++n}`;
        await tenantWithRows(slug);
        before = await checksum(slug);
      },
      run: (env) => cli(['tenant', 'move', slug, '--to-cluster', 'eu-2', '--json'], env),
      recover: async (step) => {
        const state = await journalState(slug);
        const r = await cli(['tenant', 'move', slug, '--rollback', '--json']);
        if (state === 'cutover' || state === 'done') {
          expect(r.code, step).toBe(1);
          expect(failure(r.stdout).message, step).toMatch(state === 'done' ? /no open move/ : /past cutover/);
          if (state === 'cutover') expect(failure(r.stdout).nextSteps.join('\n'), step).toContain(`dforge tenant move ${slug} --to-cluster eu-1`);
          if (state === 'cutover') expect((await cli(['tenant', 'move', slug, '--resume', '--json'])).code, step).toBe(0);
          expect(await live(slug), step).toEqual(['eu-2']);
        } else {
          expect(r.code, `${step}: ${r.stderr}`).toBe(0);
          expect(await journalState(slug), step).toBe('rolled-back');
          expect(await live(slug), step).toEqual(['eu-1']);
          expect(await registry(slug), step).toEqual({region: 'eu', cluster: 'eu-1'});
          expect(await leftovers(slug, 'eu-2'), step).toEqual([]);
        }
        expect(await checksum(slug), step).toEqual(before);
      },
    });
  }, 600_000);
});
