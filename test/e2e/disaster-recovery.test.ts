import {promises as fs} from 'node:fs';
import path from 'node:path';

import pg from 'pg';
import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {quickstartInstall, type EmbeddedInstall} from '../helpers/embedded-install.js';
import {findPgBinaries} from '../helpers/pg-cluster.js';
import {missingComponent} from '../helpers/requirements.js';

const available = findPgBinaries() !== undefined || missingComponent('PostgreSQL', 'no binaries under /usr/lib/postgresql');

/**
 * The disaster drill: the cluster and its data directory are destroyed. With only the install
 * directory's keys and the backup destination, a fresh cluster, `restore --control`, then each
 * tenant brings everything back.
 */
describe.skipIf(!available)('disaster drill', () => {
  let install: EmbeddedInstall;
  beforeAll(async () => {
    install = await quickstartInstall();
  });
  afterAll(async () => {
    await install?.cleanup();
  });

  const sql = <T extends pg.QueryResultRow>(slug: string, query: string): Promise<T[]> => install.asTenant(slug, async (c) => (await c.query<T>(query)).rows);
  const fingerprint = (slug: string): Promise<unknown[]> =>
    sql(slug, "SELECT 'crm' AS t, md5(string_agg(c::text, '|' ORDER BY id)) AS sum, count(*) AS n FROM crm.customers c UNION ALL SELECT 'audit', md5(string_agg(l.operation || l.table_name, '|' ORDER BY id)), count(*) FROM audit.change_log l");

  it('rebuilds the registry, keys, catalog and every tenant from the destination and the master key alone', async () => {
    for (const slug of ['acme', 'globex']) {
      await sql(slug, `CREATE TABLE crm.customers (id int PRIMARY KEY, name text); SELECT audit.attach_all(); INSERT INTO crm.customers SELECT g, '${slug} customer ' || g FROM generate_series(1, 2000) g`);
    }
    const before = {acme: await fingerprint('acme'), globex: await fingerprint('globex')};
    const backed = await install.cli(['backup', '--all', '--json']);
    expect(backed.code, backed.stderr).toBe(0);
    const tenantsBefore = JSON.parse((await install.cli(['tenant', 'list', '--json'])).stdout);

    // The disaster: the server is killed and its whole data directory is gone.
    expect((await install.cli(['db', 'stop', '--immediate'])).code).toBe(0);
    await fs.rm(path.join(install.dir.root, 'data'), {recursive: true, force: true});
    const lost = await install.cli(['tenant', 'list']);
    expect(lost.code).toBe(1);

    // A fresh cluster, then the control database, then each tenant.
    const init = await install.cli(['db', 'init', '--json']);
    expect(init.code, init.stderr).toBe(0);
    expect(JSON.parse(init.stdout)[0]).toMatchObject({initialised: true});
    const control = await install.cli(['restore', '--control', '--json']);
    expect(control.code, control.stderr).toBe(0);
    const restoredControl = JSON.parse(control.stdout) as {tenants: number; backupId: string; catalog: {entries: Array<{status: string; backupId?: string}>}};
    expect(restoredControl).toMatchObject({tenants: 2});
    // The control backups themselves were written after their dump, so completing the catalog
    // adopts exactly them, each authenticated; nothing is refused.
    expect(restoredControl.catalog.entries.map((e) => e.status)).toEqual(['added']);
    expect(restoredControl.catalog.entries[0]!.backupId).toBe(restoredControl.backupId);
    expect(JSON.parse((await install.cli(['tenant', 'list', '--json'])).stdout)).toEqual(tenantsBefore);
    // Every backup the rebuilt catalog lists is bound to its file and decrypts to a readable dump.
    const verified = await install.cli(['backup', 'verify', '--all', '--deep', '--json']);
    expect(verified.code, verified.stdout).toBe(0);
    expect(JSON.parse(verified.stdout)).toMatchObject({tampered: 0, errors: 0});

    const catalog = JSON.parse((await install.cli(['backup', 'list', '--json'])).stdout) as {backups: Array<{id: string; tenant: string; kind: string}>};
    for (const slug of ['acme', 'globex'] as const) {
      const newest = catalog.backups.find((b) => b.kind === 'tenant' && b.tenant === slug);
      expect(newest, `a backup of ${slug} in the rebuilt catalog`).toBeDefined();
      const restored = await install.cli(['restore', '--tenant', slug, '--from', newest!.id, '--json']);
      expect(restored.code, restored.stderr).toBe(0);
      expect(JSON.parse(restored.stdout)).toMatchObject({previousDatabase: null});
      expect(await fingerprint(slug)).toEqual(before[slug]);
    }
    // The restored install is whole: isolation holds, keys are intact, the ops log chain verifies.
    const show = JSON.parse((await install.cli(['tenant', 'show', 'acme', '--json'])).stdout);
    expect(show).toMatchObject({status: 'active', publicCanConnect: false, roleCanLogin: true, activeDataKeyVersion: 1});
    expect((await install.cli(['audit', 'verify'])).code).toBe(0);
    expect((await install.cli(['backup', '--all'])).code).toBe(0);
  });
});
