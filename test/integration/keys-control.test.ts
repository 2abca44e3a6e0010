/**
 * Master rotation and tenant create over a real control plane (dforge quickstart: embedded
 * PostgreSQL, dforge_control, a tenant), through the CLI:
 *  - each is killed at every durable step; after each kill every sealed secret, data key and
 *    dforge_control item still opens, and a rerun finishes;
 *  - a rotation keeps disaster recovery working: control backups under the old version still
 *    open (backup verify --all --deep exits 0) until fresh ones replace them and the old version
 *    is released.
 */
import {promises as fs} from 'node:fs';
import path from 'node:path';

import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {openControlPlane} from '../../src/control/plane.js';
import {tenantPasswordContext} from '../../src/control/keys-store.js';
import {openKeyServices} from '../../src/keys/context.js';
import {readKeyringState} from '../../src/secrets/master-key.js';
import {runCli} from '../helpers/cli.js';
import {crashAtEveryStep} from '../helpers/crash-points.js';
import {quickstartInstall, type EmbeddedInstall} from '../helpers/embedded-install.js';
import {findPgBinaries} from '../helpers/pg-cluster.js';
import {missingComponent} from '../helpers/requirements.js';

const available = findPgBinaries() !== undefined || missingComponent('PostgreSQL', 'no binaries under /usr/lib/postgresql');

/**
 * Every item the master key wraps, opened by fresh services: sealed files, the data-key file,
 * and in dforge_control every tenant data key, password and pending password.
 */
async function openEverything(install: EmbeddedInstall): Promise<Map<string, string>> {
  const keys = await openKeyServices(install.dir);
  const opened = new Map<string, string>();
  for (const name of await keys.sealed.list()) opened.set(`sealed ${name}`, (await keys.sealed.get(name)).toString('hex'));
  for (const r of await keys.dataKeyStore.list()) opened.set(`dek ${r.owner} v${r.version}`, (await keys.dataKeys.get(r.owner, r.version)).material.toString('hex'));
  const plane = await openControlPlane(install.dir);
  try {
    const deks = await plane.control.query<{owner: string; version: number}>('SELECT owner, version FROM data_keys ORDER BY 1, 2');
    for (const r of deks.rows) opened.set(`control dek ${r.owner} v${r.version}`, (await plane.dataKeys.get(r.owner, r.version)).material.toString('hex'));
    const creds = await plane.control.query<{slug: string; sealed_password: Buffer; pending_sealed_password: Buffer | null}>('SELECT slug, sealed_password, pending_sealed_password FROM tenant_credentials ORDER BY 1');
    for (const r of creds.rows) {
      opened.set(`control password ${r.slug}`, (await keys.keyring.unwrap(r.sealed_password, tenantPasswordContext(r.slug), `password of ${r.slug}`)).toString('hex'));
      if (r.pending_sealed_password) opened.set(`control pending ${r.slug}`, (await keys.keyring.unwrap(r.pending_sealed_password, tenantPasswordContext(r.slug), `pending password of ${r.slug}`)).toString('hex'));
    }
    // And the set the rotation itself re-wraps, through its own reader.
    await plane.wrappedKeys.verifyAll();
  } finally {
    await plane.close();
  }
  return opened;
}

async function versionsInUse(install: EmbeddedInstall): Promise<Set<number>> {
  const keys = await openKeyServices(install.dir);
  const versions = new Set<number>();
  for (const name of await keys.sealed.list()) versions.add(await keys.sealed.versionOf(name));
  for (const r of await keys.dataKeyStore.list()) versions.add(keys.keyring.versionOf(r.wrapped, 'dek'));
  const plane = await openControlPlane(install.dir);
  try {
    for (const [v] of await plane.wrappedKeys.countByVersion()) versions.add(v);
  } finally {
    await plane.close();
  }
  return versions;
}

describe.skipIf(!available)('master keys over a real control plane', () => {
  let install: EmbeddedInstall;
  beforeAll(async () => {
    install = await quickstartInstall();
    // A data key in the install's own file store too, so every set has something to re-wrap.
    const keys = await openKeyServices(install.dir);
    await keys.dataKeys.create('install-local');
    // A pending tenant password (a rotate-credentials killed mid-way) is re-wrapped as well.
    const plane = await openControlPlane(install.dir);
    try {
      const pending = await keys.keyring.withWrites('test', async () => {
        const blob = await keys.keyring.wrap(Buffer.from('a pending password'), tenantPasswordContext('acme'));
        await plane.control.query('UPDATE tenant_credentials SET pending_sealed_password = $1 WHERE slug = $2', [blob, 'acme']);
        return blob;
      });
      expect(pending.length).toBeGreaterThan(0);
    } finally {
      await plane.close();
    }
  }, 180_000);
  afterAll(async () => {
    await install?.cleanup();
  });

  it('master rotation killed at every durable step (files and dforge_control): everything opens, a rerun finishes', async () => {
    const expected = await openEverything(install);
    expect([...expected.keys()].some((k) => k.startsWith('control pending acme'))).toBe(true);
    const {steps, killedAt} = await crashAtEveryStep({
      name: 'keys rotate --master (with dforge_control)',
      // Each trial starts from the state the previous rerun left: one finished rotation later.
      prepare: async () => undefined,
      run: (env) => runCli(['keys', 'rotate', '--master', '--dir', install.dir.root], {env}),
      recover: async (step) => {
        expect(await openEverything(install), `killed after ${step}`).toEqual(expected);
        const rerun = await install.cli(['keys', 'rotate', '--master', '--json']);
        expect(rerun.code, `rerun after a kill at ${step}: ${rerun.stderr}`).toBe(0);
        expect(await openEverything(install)).toEqual(expected);
        const state = await readKeyringState(install.dir);
        expect(state?.rotation).toBeUndefined();
        const active = state!.versions.find((v) => v.state === 'active')!.version;
        expect(await versionsInUse(install)).toEqual(new Set([active]));
        const keyFiles = (await fs.readdir(path.join(install.dir.secretsDir, 'master'))).filter((f) => f.endsWith('.key'));
        expect(keyFiles).toEqual([`v${active}.key`]);
      },
    });
    expect(new Set(steps)).toEqual(
      new Set([
        'master.keyring.rotation-started',
        'master.rewrap.sealed-file',
        'master.rewrap.data-keys',
        'master.rewrap.control-commit',
        'master.keyring.committed',
        'master.destroy',
        'master.keyring.destroyed-recorded',
        // The rotation's own ops-log record.
        'ops-log.entry-committed',
        'ops-log.head-anchored',
      ]),
    );
    expect(new Set(killedAt)).toEqual(new Set(steps));
  }, 600_000);

  it('tenant create killed at every durable step: everything opens, a rerun finishes the tenant', async () => {
    let slug = '';
    let trial = 0;
    const {steps, killedAt} = await crashAtEveryStep({
      name: 'tenant create',
      prepare: async () => {
        slug = `crash-${++trial}`;
      },
      run: (env) => runCli(['tenant', 'create', slug, '--dir', install.dir.root], {env}),
      recover: async (step) => {
        await openEverything(install);
        const shown = await install.cli(['tenant', 'show', slug, '--json']);
        const rerun = await install.cli(['tenant', 'create', slug, '--json']);
        if (step === 'tenant.create.active' || step.startsWith('ops-log.')) {
          // Killed after the last step (or while recording it): the tenant is complete, and a rerun says so.
          expect(JSON.parse(shown.stdout)).toMatchObject({slug, status: 'active'});
          expect(rerun.code).toBe(1);
          expect(JSON.parse(rerun.stdout).error.message).toBe(`tenant ${slug} already exists (active)`);
        } else {
          expect(rerun.code, `rerun after a kill at ${step}: ${rerun.stderr}`).toBe(0);
          expect(JSON.parse(rerun.stdout)).toMatchObject({slug, status: 'active'});
        }
        // The sealed password is the role's: the tenant logs in to its own database.
        const n = await install.asTenant(slug, async (c) => (await c.query<{n: number}>("SELECT count(*)::int AS n FROM pg_namespace WHERE nspname IN ('crm','hr','fin','wms','audit')")).rows[0]!.n);
        expect(n).toBe(5);
        const plane = await openControlPlane(install.dir);
        try {
          expect((await plane.dataKeys.current(slug)).version).toBe(1);
        } finally {
          await plane.close();
        }
        await openEverything(install);
      },
    });
    expect(new Set(steps)).toEqual(
      new Set([
        'tenant.create.registered',
        'tenant.create.password-sealed',
        'tenant.create.role',
        'tenant.create.database',
        'tenant.create.shaped',
        'tenant.create.data-key',
        'tenant.create.active',
        'ops-log.entry-committed',
        'ops-log.head-anchored',
      ]),
    );
    expect(new Set(killedAt)).toEqual(new Set(steps));
  }, 600_000);

  it('a rotation keeps control backups openable; release destroys the old version once fresh ones replace them', async () => {
    const backup = await install.cli(['backup', '--all', '--json']);
    expect(backup.code, backup.stderr).toBe(0);
    const before = (await readKeyringState(install.dir))!.versions.find((v) => v.state === 'active')!.version;
    const controlBefore = (JSON.parse(backup.stdout) as {control: Array<{id: string; keyVersion: number}>}).control;
    expect(controlBefore.length).toBeGreaterThan(0);
    expect(controlBefore.every((c) => c.keyVersion === before)).toBe(true);

    const rotated = await install.cli(['keys', 'rotate', '--master', '--json']);
    expect(rotated.code, rotated.stderr).toBe(0);
    const master = JSON.parse(rotated.stdout).master as {from: number; to: number; destroyed: number[]; kept: Array<{version: number; controlBackups: string[]; reason: string}>};
    expect(master.from).toBe(before);
    expect(master.destroyed).toEqual([]);
    expect(master.kept).toEqual([expect.objectContaining({version: before, controlBackups: expect.arrayContaining(controlBefore.map((c) => c.id))})]);
    expect(master.kept[0]!.reason).toContain('control backup');
    expect(rotated.stderr).toContain(`master v${before} kept decrypt-only`);

    // Disaster recovery still works right after the rotation: every backup opens.
    const verify = await install.cli(['backup', 'verify', '--all', '--deep']);
    expect(verify.code, verify.stderr).toBe(0);

    const status = JSON.parse((await install.cli(['keys', 'status', '--json'])).stdout) as {master: {versions: Array<{version: number; state: string; materialPresent: boolean; destroyed: boolean; controlBackups: {count: number; ids: string[]}; protects: Record<string, number>}>}};
    const old = status.master.versions.find((v) => v.version === before)!;
    expect(old).toMatchObject({state: 'retired', materialPresent: true, destroyed: false, protects: {sealedSecrets: 0, dataKeys: 0, control: 0}});
    expect(old.controlBackups.ids.sort()).toEqual(controlBefore.map((c) => c.id).sort());

    // Release before a fresh control backup exists keeps the version: nothing is obsolete yet.
    const early = await install.cli(['keys', 'release', '--json']);
    expect(early.code, early.stderr).toBe(0);
    expect(JSON.parse(early.stdout)).toMatchObject({destroyed: [], obsoleteControlBackups: [], kept: [expect.objectContaining({version: before})]});

    // A fresh control backup under the new version in every region makes the old ones obsolete:
    // the same backup --all deletes them and destroys the version.
    const fresh = await install.cli(['backup', '--all', '--json']);
    expect(fresh.code, fresh.stderr).toBe(0);
    const release = JSON.parse(fresh.stdout).keys as {obsoleteControlBackups: string[]; removedControlBackups: string[]; destroyed: number[]; kept: unknown[]};
    expect(release.obsoleteControlBackups.sort()).toEqual(controlBefore.map((c) => c.id).sort());
    expect(release.removedControlBackups.sort()).toEqual(controlBefore.map((c) => c.id).sort());
    expect(release).toMatchObject({destroyed: [before], kept: []});
    for (const c of controlBefore) expect((await install.cli(['backup', 'verify', c.id])).code).toBe(1);
    await expect(fs.stat(install.dir.secretPath(`master/v${before}.key`))).rejects.toThrow();
    const after = await install.cli(['backup', 'verify', '--all', '--deep']);
    expect(after.code, after.stderr).toBe(0);
    const finalStatus = JSON.parse((await install.cli(['keys', 'status', '--json'])).stdout) as typeof status;
    expect(finalStatus.master.versions.find((v) => v.version === before)).toMatchObject({destroyed: true, materialPresent: false, controlBackups: {count: 0, ids: []}});
  }, 300_000);

  it('a forged catalog row for a fresh control backup cannot make dforge delete real control backups or destroy their key', async () => {
    // Whoever can write dforge_control (not the install's secrets) forges a control backup under
    // the new active version in every region, so the real ones under the old version look obsolete.
    expect((await install.cli(['backup', '--all'])).code).toBe(0);
    const rotated = await install.cli(['keys', 'rotate', '--master', '--json']);
    expect(rotated.code, rotated.stderr).toBe(0);
    const {from, to} = JSON.parse(rotated.stdout).master as {from: number; to: number};
    const plane = await install.plane();
    const forgedId = '20991231T000000Z-_control-f0f0f0';
    let needed: Array<{id: string}>;
    try {
      needed = (await plane.control.query<{id: string}>("SELECT id FROM backups WHERE kind = 'control' AND key_version = $1", [from])).rows;
      expect(needed.length).toBeGreaterThan(0);
      await plane.control.query(
        `INSERT INTO backups (id, kind, tenant, region, cluster, destination, location, size, sha256, pg_version, key_id, key_version, created_at, verified_at)
         SELECT $1, kind, tenant, region, cluster, destination, '_control/' || $1 || '.dfb', size, sha256, pg_version, key_id, $2, '2099-12-31T00:00:00Z', NULL
           FROM backups WHERE kind = 'control' AND key_version = $3 LIMIT 1`,
        [forgedId, to, from],
      );
    } finally {
      await plane.close();
    }

    // prune keeps everything by policy, then release refuses: the "fresh" backup does not authenticate.
    const pruned = await install.cli(['backup', 'prune', '--keep-last', '50', '--json']);
    expect(pruned.code, pruned.stdout + pruned.stderr).toBe(6);
    const error = JSON.parse(pruned.stdout).error as {kind: string; message: string; nextSteps: string[]};
    expect(error.kind).toBe('verification');
    expect(error.message).toContain(forgedId);
    expect(error.nextSteps.join(' ')).toMatch(/nothing was deleted/i);
    // Every real control backup is still listed, its file in place and whole.
    for (const b of needed) {
      const v = await install.cli(['backup', 'verify', b.id, '--deep']);
      expect(v.code, `${b.id}: ${v.stderr}`).toBe(0);
    }
    const status = JSON.parse((await install.cli(['keys', 'status', '--json'])).stdout) as {master: {versions: Array<{version: number; materialPresent: boolean}>}};
    expect(status.master.versions.find((v) => v.version === from)).toMatchObject({materialPresent: true});

    // Once the forged row is gone, the next backup --all releases the old version as usual.
    const cleanup = await install.plane();
    try {
      await cleanup.control.query('DELETE FROM backups WHERE id = $1', [forgedId]);
    } finally {
      await cleanup.close();
    }
    const fresh = await install.cli(['backup', '--all', '--json']);
    expect(fresh.code, fresh.stderr).toBe(0);
    expect(JSON.parse(fresh.stdout).keys).toMatchObject({destroyed: [from]});
  }, 300_000);
});
