import {promises as fs} from 'node:fs';
import path from 'node:path';

import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {runCli} from '../helpers/cli.js';
import {crashAtEveryStep} from '../helpers/crash-points.js';
import {quickstartInstall, type EmbeddedInstall} from '../helpers/embedded-install.js';
import {findPgBinaries} from '../helpers/pg-cluster.js';
import {missingComponent} from '../helpers/requirements.js';

const available = findPgBinaries() !== undefined || missingComponent('PostgreSQL', 'no binaries under /usr/lib/postgresql');

/** Kills `backup --tenant` and `restore` right after each durable step, then checks and reruns. */
describe.skipIf(!available)('backup and restore killed at every durable step', () => {
  let install: EmbeddedInstall;
  const dir = (): string => path.join(install.dir.root, 'backups', 'local', 'acme');
  const catalog = async (): Promise<Array<{id: string; location: string; size: number}>> =>
    (JSON.parse((await install.cli(['backup', 'list', '--tenant', 'acme', '--json'])).stdout) as {backups: Array<{id: string; location: string; size: number}>}).backups;
  const marker = (): Promise<unknown[]> => install.asTenant('acme', async (c) => (await c.query('SELECT v FROM crm.marker ORDER BY v')).rows);
  const databases = async (): Promise<string[]> => {
    const plane = await install.plane();
    try {
      return (await plane.control.query<{datname: string}>("SELECT datname FROM pg_database WHERE datname LIKE 'tenant_acme%' ORDER BY 1")).rows.map((r) => r.datname);
    } finally {
      await plane.close();
    }
  };

  beforeAll(async () => {
    install = await quickstartInstall();
    await install.asTenant('acme', (c) => c.query("CREATE TABLE crm.marker (v text); INSERT INTO crm.marker VALUES ('backed up')"));
  });
  afterAll(async () => {
    await install?.cleanup();
  });

  it('backup --tenant: no partial file passes as a backup, the catalog lists only whole files, a rerun succeeds', {timeout: 600_000}, async () => {
    const result = await crashAtEveryStep({
      name: 'backup --tenant',
      prepare: async () => undefined,
      run: (env) => runCli(['backup', '--tenant', 'acme', '--dir', install.dir.root], {env}),
      recover: async (step) => {
        // Only *.partial may be unfinished, and nothing lists it as a backup.
        const files = await fs.readdir(dir());
        const listed = await catalog();
        for (const b of listed) {
          const size = await fs.stat(path.join(install.dir.root, 'backups', 'local', b.location)).then((s) => s.size, () => -1);
          expect(size, `${step}: catalog lists ${b.location}`).toBe(b.size);
        }
        for (const f of files.filter((x) => x.endsWith('.dfb'))) {
          const v = await install.cli(['backup', 'verify', path.join(dir(), f)]);
          expect(v.code, `${step}: ${f} is complete or absent: ${v.stderr}`).toBe(0);
        }
        // A complete file the kill left out of the catalog is adopted, authenticated.
        const rebuilt = await install.cli(['backup', 'rebuild-catalog', '--json']);
        expect(rebuilt.code, `${step}: ${rebuilt.stdout}`).toBe(0);
        for (const f of files.filter((x) => x.endsWith('.dfb'))) expect((await catalog()).map((b) => b.location), step).toContain(`acme/${f}`);
        const rerun = await install.cli(['backup', '--tenant', 'acme']);
        expect(rerun.code, `${step}: ${rerun.stderr}`).toBe(0);
        expect((await fs.readdir(dir())).filter((f) => f.endsWith('.partial')), step).toEqual([]);
      },
    });
    expect(new Set(result.killedAt)).toEqual(new Set(result.steps));
    expect(new Set(result.steps)).toEqual(new Set(['backup.partial-written', 'backup.renamed', 'backup.manifest-written', 'backup.cataloged', 'backup.last-success-marked', 'ops-log.entry-committed', 'ops-log.head-anchored']));
  });

  it('restore: the live database is untouched until the swap, and a rerun succeeds', {timeout: 600_000}, async () => {
    const backupId = (await catalog())[0]!.id;
    const restored = [{v: 'backed up'}];
    const result = await crashAtEveryStep({
      name: 'restore --tenant',
      // A row written after the backup tells the live database from the restored one.
      prepare: async () => {
        await install.asTenant('acme', (c) => c.query("DELETE FROM crm.marker WHERE v = 'live only'; INSERT INTO crm.marker VALUES ('live only')"));
      },
      run: (env) => runCli(['restore', '--tenant', 'acme', '--from', backupId, '--drop-previous', '--confirm', 'acme', '--dir', install.dir.root], {env}),
      recover: async (step) => {
        // The restore's ops-log record is written once it is done.
        const swapped = step === 'restore.swap-committed' || step === 'restore.previous-dropped' || step.startsWith('ops-log.');
        expect(await marker(), step).toEqual(swapped ? restored : [{v: 'backed up'}, {v: 'live only'}]);
        const rerun = await install.cli(['restore', '--tenant', 'acme', '--from', backupId, '--drop-previous', '--confirm', 'acme']);
        expect(rerun.code, `${step}: ${rerun.stderr}`).toBe(0);
        expect(await marker(), step).toEqual(restored);
        // Nothing of the killed run is left but, killed between swap and drop, the previous
        // database it kept (as restore without --drop-previous would; prune drops it later).
        expect((await databases()).filter((d) => !d.startsWith('tenant_acme__pre_restore_')), step).toEqual(['tenant_acme']);
        const plane = await install.plane();
        try {
          expect((await plane.control.query("SELECT rolname FROM pg_roles WHERE rolname LIKE 'tenant_acme%restore%'")).rows, step).toEqual([]);
        } finally {
          await plane.close();
        }
      },
    });
    expect(new Set(result.killedAt)).toEqual(new Set(result.steps));
    expect(new Set(result.steps)).toEqual(
      new Set(['restore.scratch-created', 'restore.restore-role-created', 'restore.scratch-prepared', 'restore.loaded', 'restore.shaped', 'restore.restore-role-dropped', 'restore.swap-committed', 'restore.previous-dropped', 'ops-log.entry-committed', 'ops-log.head-anchored']),
    );
  });
});
