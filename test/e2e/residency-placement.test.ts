import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {findPgBinaries} from '../helpers/pg-cluster.js';
import {multiRegionInstall, type MultiRegionInstall} from '../helpers/multi-region.js';
import {missingComponent} from '../helpers/requirements.js';

const available = findPgBinaries() !== undefined || missingComponent('PostgreSQL', 'no binaries under /usr/lib/postgresql');

interface Listed {
  slug: string;
  region: string;
  cluster: string;
  status: string;
}

/**
 * Placement on a real two-region install: eu with eu-1 (capacity 12, already holding acme and
 * globex) and eu-2 (capacity 6), us with us-1 (capacity 5). Each test builds on the registry the
 * previous ones left, in order.
 */
describe.skipIf(!available)('tenant placement by capacity (e2e)', () => {
  let install: MultiRegionInstall;
  beforeAll(async () => {
    install = await multiRegionInstall({capacity: {'eu-1': 12, 'eu-2': 6, 'us-1': 5}});
  }, 120_000);
  afterAll(async () => {
    await install?.cleanup();
  });

  const tenants = async (): Promise<Listed[]> => {
    const r = await install.cli(['tenant', 'list', '--json']);
    expect(r.code).toBe(0);
    return (JSON.parse(r.stdout) as {tenants: Listed[]}).tenants;
  };
  /** The registry and every cluster's databases: what a refusal must leave unchanged. */
  const snapshot = async (): Promise<unknown> => ({
    tenants: await tenants(),
    databases: {'eu-1': await install.databasesOn('eu-1'), 'eu-2': await install.databasesOn('eu-2'), 'us-1': await install.databasesOn('us-1')},
  });
  const failure = (stdout: string): {code: string; message: string; nextSteps: string[]; data: Record<string, unknown>} =>
    (JSON.parse(stdout) as {error: {code: string; message: string; nextSteps: string[]; data: Record<string, unknown>}}).error;

  it('refuses a create without --region when the install has two regions (exit 2), registering nothing', async () => {
    const before = await snapshot();
    const r = await install.cli(['tenant', 'create', 'nowhere', '--json']);
    expect(r.code).toBe(2);
    expect(failure(r.stdout).message).toMatch(/needs --region: this install has 2 regions \(eu, us\)/);
    expect(failure(r.stdout).nextSteps).toContain('dforge tenant create nowhere --region eu');
    expect(await snapshot()).toEqual(before);
  });

  it('refuses an unknown cluster or region (exit 2, as tenant move does), naming the declared ones, and changes nothing', async () => {
    const before = await snapshot();
    const r = await install.cli(['tenant', 'create', 'ghost', '--cluster', 'eu-9', '--json']);
    expect(r.code).toBe(2);
    const error = failure(r.stdout);
    expect(error.message).toMatch(/no cluster eu-9/);
    expect(error.nextSteps.join('\n')).toMatch(/eu-1, eu-2 \(region eu\); us-1 \(region us\)/);
    const region = await install.cli(['tenant', 'create', 'ghost', '--region', 'ap', '--json']);
    expect(region.code).toBe(2);
    expect(failure(region.stdout).message).toMatch(/region ap is not declared/);
    expect(await snapshot()).toEqual(before);
  });

  it('refuses --cluster of another region with no override: the database always lives in its region', async () => {
    const before = await snapshot();
    const r = await install.cli(['tenant', 'create', 'crosser', '--region', 'eu', '--cluster', 'us-1', '--json']);
    expect(r.code).toBe(1);
    const error = failure(r.stdout);
    expect(error.code).toBe('CrossRegionError');
    expect(error.message).toMatch(/cluster us-1 is in region us, not eu/);
    expect(error.message).toMatch(/no flag overrides this/);
    expect(error.nextSteps[0]).toBe('Pin it to region us: dforge tenant create crosser --region us --cluster us-1');
    expect(error.data).toMatchObject({tenant: 'crosser', cluster: 'us-1', clusterRegion: 'us', requestedRegion: 'eu', operation: 'placement'});
    // The cross-region approval flags are not accepted here at all.
    const waived = await install.cli(['tenant', 'create', 'crosser', '--region', 'eu', '--cluster', 'us-1', '--allow-cross-region', '--reason', 'try it', '--json']);
    expect(waived.code).toBe(2);
    expect(await snapshot()).toEqual(before);
  });

  it('places 20 tenants over eu (eu-1 cap 12, eu-2 cap 6) and us by free capacity, each database on the cluster the registry names', async () => {
    const placed: Array<{slug: string; cluster: string; reason: string}> = [];
    for (let i = 1; i <= 16; i++) {
      const slug = `eu-t${String(i).padStart(2, '0')}`;
      const r = await install.cli(['tenant', 'create', slug, '--region', 'eu', '--json']);
      expect(r.code, r.stderr).toBe(0);
      const out = JSON.parse(r.stdout) as {cluster: string; placement: {cluster: string; reason: string}};
      expect(out.placement.cluster).toBe(out.cluster);
      placed.push({slug, cluster: out.cluster, reason: out.placement.reason});
    }
    for (let i = 1; i <= 3; i++) {
      const r = await install.cli(['tenant', 'create', `us-t${i}`, '--region', 'us', '--json']);
      expect(r.code, r.stderr).toBe(0);
      const out = JSON.parse(r.stdout) as {cluster: string; placement: {reason: string}};
      placed.push({slug: `us-t${i}`, cluster: out.cluster, reason: out.placement.reason});
    }
    // --cluster alone implies its region.
    const pinned = await install.cli(['tenant', 'create', 'us-t4', '--cluster', 'us-1', '--json']);
    expect(pinned.code, pinned.stderr).toBe(0);
    const pinnedOut = JSON.parse(pinned.stdout) as {region: string; cluster: string; placement: {reason: string; used: number; capacity: number}};
    expect(pinnedOut).toMatchObject({region: 'us', cluster: 'us-1', placement: {reason: 'requested with --cluster (3/5 used)', used: 3, capacity: 5}});
    placed.push({slug: 'us-t4', cluster: pinnedOut.cluster, reason: pinnedOut.placement.reason});

    // eu-1 starts with 10 free (acme, globex), eu-2 with 6: eu-1 takes four, then the two
    // alternate (a tie in free slots goes to the cluster with fewer tenants) until both are full.
    const alternate = ['eu-2', 'eu-1'];
    const expected = [
      ...['eu-1', 'eu-1', 'eu-1', 'eu-1'],
      ...Array.from({length: 12}, (_, i) => alternate[i % 2]!),
      ...['us-1', 'us-1', 'us-1', 'us-1'],
    ];
    expect(placed.map((p) => p.cluster)).toEqual(expected);
    expect(placed[0]!.reason).toBe('most free capacity in region eu (2/12 used)');
    expect(placed[4]!.reason).toBe('most free capacity in region eu (0/6 used)');
    expect(placed[15]!.reason).toBe('most free capacity in region eu (11/12 used)');

    const listed = await tenants();
    const count = (cluster: string): number => listed.filter((t) => t.cluster === cluster).length;
    expect({'eu-1': count('eu-1'), 'eu-2': count('eu-2'), 'us-1': count('us-1')}).toEqual({'eu-1': 12, 'eu-2': 6, 'us-1': 4});
    for (const p of placed) expect(listed.find((t) => t.slug === p.slug)).toMatchObject({cluster: p.cluster, region: p.cluster.slice(0, 2), status: 'active'});

    // Each database is really on the cluster the registry says, and on no other.
    const databases = {'eu-1': await install.databasesOn('eu-1'), 'eu-2': await install.databasesOn('eu-2'), 'us-1': await install.databasesOn('us-1')};
    for (const t of listed) {
      for (const [cluster, names] of Object.entries(databases)) expect(names.includes(`tenant_${t.slug.replaceAll('-', '_')}`), `${t.slug} on ${cluster}`).toBe(cluster === t.cluster);
    }
    // The tenant really works there: its own role on its own database.
    expect(await install.asTenant('eu-t05', async (c) => (await c.query<{db: string}>('SELECT current_database() AS db')).rows[0]!.db)).toBe('tenant_eu_t05');

    const show = await install.cli(['tenant', 'show', 'eu-t05']);
    expect(show.stdout).toMatch(/region \/ cluster\s+eu \/ eu-2/);
    const table = await install.cli(['tenant', 'list']);
    expect(table.stdout).toMatch(/eu-t05\s+active\s+eu\s+eu-2/);
  }, 300_000);

  it('refuses a create in a full region, naming each cluster\'s load and what to do, registering nothing', async () => {
    const before = await snapshot();
    const r = await install.cli(['tenant', 'create', 'overflow', '--region', 'eu', '--json']);
    expect(r.code).toBe(1);
    const error = failure(r.stdout);
    expect(error.message).toBe('cannot place tenant overflow: every cluster of region eu is full (eu-1 12/12 used, eu-2 6/6 used); nothing was changed');
    expect(error.nextSteps.join('\n')).toMatch(/Raise maxTenants of eu-1 or eu-2 in dforge\.yaml \(regions\.eu\.clusters\)/);
    expect(error.nextSteps.join('\n')).toMatch(/add a cluster to region eu/);
    expect(error.nextSteps.join('\n')).toMatch(/another region/);
    expect(error.data).toMatchObject({region: 'eu', clusters: [{cluster: 'eu-1', used: 12, capacity: 12}, {cluster: 'eu-2', used: 6, capacity: 6}]});
    expect(await snapshot()).toEqual(before);
  });

  it('refuses --cluster on a cluster at capacity, pointing at placement', async () => {
    const before = await snapshot();
    const r = await install.cli(['tenant', 'create', 'squeeze', '--cluster', 'eu-2', '--json']);
    expect(r.code).toBe(1);
    const error = failure(r.stdout);
    expect(error.message).toBe('cannot place tenant squeeze: cluster eu-2 is full (eu-2 6/6 used); nothing was changed');
    expect(error.nextSteps.join('\n')).toMatch(/Raise maxTenants of eu-2/);
    expect(await snapshot()).toEqual(before);
  });

  it('counts provisioning and deleting tenants against capacity', async () => {
    // Raising eu-2's capacity by two opens two slots; rows left 'provisioning' by a crashed create
    // and 'deleting' by a crashed delete may still have their databases, so they take both.
    await install.editConfig((config) => {
      config.regions.eu.clusters[1].maxTenants = 8;
    });
    const registry = async (sql: string): Promise<void> => {
      const plane = await install.plane();
      try {
        await plane.control.query(sql);
      } finally {
        await plane.close();
      }
    };
    await registry(
      "INSERT INTO tenants (slug, region, cluster, role_name, database_name, status, connection_limit) VALUES ('halfmade', 'eu', 'eu-2', 'tenant_halfmade', 'tenant_halfmade', 'provisioning', 20), ('halfgone', 'eu', 'eu-2', 'tenant_halfgone', 'tenant_halfgone', 'deleting', 20)",
    );
    const refused = await install.cli(['tenant', 'create', 'late', '--region', 'eu', '--json']);
    expect(refused.code).toBe(1);
    expect(failure(refused.stdout).message).toMatch(/eu-2 8\/8 used/);
    // Once the stale rows are gone the slots are free again: the refusal was theirs.
    await registry("DELETE FROM tenants WHERE slug IN ('halfmade', 'halfgone')");
    const placed = await install.cli(['tenant', 'create', 'late', '--region', 'eu', '--json']);
    expect(placed.code, placed.stderr).toBe(0);
    expect(JSON.parse(placed.stdout)).toMatchObject({cluster: 'eu-2', placement: {reason: 'most free capacity in region eu (6/8 used)'}});
  });

  it('two concurrent creates racing for us-1\'s last slot give exactly one tenant', async () => {
    const before = await install.databasesOn('us-1');
    // The test holds region us's placement lock, starts both runs, waits until both are queued
    // behind it, then lets go: the two picks are as close as they can get, and only the lock
    // keeps the second from counting the slot before the first's row is in.
    const holder = await install.plane();
    await holder.control.query("SELECT pg_advisory_lock(hashtext('dforge.placement'), hashtext('us'))");
    const runs = Promise.all([
      install.cli(['tenant', 'create', 'race-a', '--region', 'us', '--json']),
      install.cli(['tenant', 'create', 'race-b', '--cluster', 'us-1', '--json']),
    ]);
    try {
      const deadline = Date.now() + 60_000;
      for (;;) {
        const waiting = await holder.control.query<{n: string}>("SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND NOT granted");
        if (Number(waiting.rows[0]!.n) === 2) break;
        if (Date.now() > deadline) throw new Error('the two creates never queued behind the region placement lock');
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    } finally {
      await holder.control.query("SELECT pg_advisory_unlock(hashtext('dforge.placement'), hashtext('us'))");
      await holder.close();
    }
    const [a, b] = await runs;
    expect([a.code, b.code].sort()).toEqual([0, 1]);
    const loser = a.code === 1 ? a : b;
    expect(failure(loser.stdout).message).toMatch(/us-1 5\/5 used/);
    const listed = await tenants();
    const winners = listed.filter((t) => t.slug === 'race-a' || t.slug === 'race-b');
    expect(winners).toHaveLength(1);
    expect(listed.filter((t) => t.cluster === 'us-1')).toHaveLength(5);
    const after = await install.databasesOn('us-1');
    expect(after.filter((d) => !before.includes(d))).toEqual([`tenant_${winners[0]!.slug.replace('-', '_')}`]);
  }, 120_000);
});
