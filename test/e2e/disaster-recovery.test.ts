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

  it('rebuilds the registry, keys, catalog and every tenant from the destination and the master key alone, right after a master rotation', async () => {
    for (const slug of ['acme', 'globex']) {
      await sql(slug, `CREATE TABLE crm.customers (id int PRIMARY KEY, name text); SELECT audit.attach_all(); INSERT INTO crm.customers SELECT g, '${slug} customer ' || g FROM generate_series(1, 2000) g`);
    }
    const before = {acme: await fingerprint('acme'), globex: await fingerprint('globex')};
    const backed = await install.cli(['backup', '--all', '--json']);
    expect(backed.code, backed.stderr).toBe(0);
    const tenantsBefore = JSON.parse((await install.cli(['tenant', 'list', '--json'])).stdout);

    // The README's rotation, then at once the drill: the control backup is under the retired
    // version, which stays decrypt-only because that backup needs it.
    const rotated = await install.cli(['keys', 'rotate', '--master', '--json']);
    expect(rotated.code, rotated.stderr).toBe(0);
    expect(JSON.parse(rotated.stdout).master).toMatchObject({from: 1, to: 2, destroyed: [], kept: [expect.objectContaining({version: 1})]});
    const afterRotation = await install.cli(['backup', 'verify', '--all', '--deep', '--json']);
    expect(afterRotation.code, afterRotation.stdout + afterRotation.stderr).toBe(0);
    expect(JSON.parse(afterRotation.stdout)).toMatchObject({tampered: 0, errors: 0});

    // The disaster: the server is killed and its whole data directory is gone.
    expect((await install.cli(['db', 'stop', '--immediate'])).code).toBe(0);
    await fs.rm(path.join(install.dir.root, 'data'), {recursive: true, force: true});
    const lost = await install.cli(['tenant', 'list']);
    expect(lost.code).toBe(1);

    // A fresh cluster, then the control database, then each tenant.
    const init = await install.cli(['db', 'init', '--json']);
    expect(init.code, init.stderr).toBe(0);
    expect(JSON.parse(init.stdout).clusters[0]).toMatchObject({initialised: true});
    const control = await install.cli(['restore', '--control', '--confirm', 'dforge_control', '--json']);
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
      const restored = await install.cli(['restore', '--tenant', slug, '--from', newest!.id, '--confirm', slug, '--json']);
      expect(restored.code, restored.stderr).toBe(0);
      expect(JSON.parse(restored.stdout)).toMatchObject({previousDatabase: null});
      expect(await fingerprint(slug)).toEqual(before[slug]);
    }
    // The restored install is whole: isolation holds, keys are intact, the ops log chain verifies.
    const show = JSON.parse((await install.cli(['tenant', 'show', 'acme', '--json'])).stdout);
    expect(show).toMatchObject({status: 'active', publicCanConnect: false, roleCanLogin: true, activeDataKeyVersion: 1});
    const audit = await install.cli(['audit', 'verify', '--json']);
    expect(audit.code, audit.stderr).toBe(0);

    // The next backup --all takes a control backup under v2: the v1 one is obsolete and goes, v1
    // is destroyed, and what the restored dforge_control still had under v1 is re-wrapped first.
    const next = await install.cli(['backup', '--all', '--json']);
    expect(next.code, next.stderr).toBe(0);
    expect(JSON.parse(next.stdout).keys).toMatchObject({destroyed: [1], removedControlBackups: [restoredControl.backupId]});
    const status = JSON.parse((await install.cli(['keys', 'status', '--json'])).stdout);
    expect(status.master.versions.find((v: {version: number}) => v.version === 1)).toMatchObject({state: 'retired', materialPresent: false});
    const finalVerify = await install.cli(['backup', 'verify', '--all', '--deep', '--json']);
    expect(finalVerify.code, finalVerify.stdout + finalVerify.stderr).toBe(0);
    for (const slug of ['acme', 'globex'] as const) expect(await fingerprint(slug)).toEqual(before[slug]);

    // What an auditor reads: the restore of dforge_control, each tenant's restore, the backups
    // and the verifies; a dry-run prune changed nothing, so it adds nothing.
    const tail = async (): Promise<Array<{action: string; target: string; outcome: string}>> => JSON.parse((await install.cli(['audit', 'tail', '--limit', '200', '--json'])).stdout).entries;
    const log = await tail();
    const actions = log.map((e) => `${e.action} ${e.target} ${e.outcome}`);
    expect(actions).toEqual(
      expect.arrayContaining(['restore.control control ok', 'restore.tenant tenant:acme ok', 'restore.tenant tenant:globex ok', 'backup.run tenant:acme ok', 'backup.run control ok', 'backup.verify backups ok']),
    );
    expect((await install.cli(['backup', 'prune', '--dry-run'])).code).toBe(0);
    expect(await tail()).toEqual(log);
    expect((await install.cli(['audit', 'verify'])).code).toBe(0);
  });
});
