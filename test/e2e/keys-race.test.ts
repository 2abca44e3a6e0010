/**
 * Master rotations racing every other master-key writer, as separate CLI processes on a real
 * install (dforge quickstart: embedded PostgreSQL, dforge_control): `certs renew` (sealed private
 * keys), `tenant create` (sealed passwords and data keys in dforge_control) and `backup --all`
 * (control backups whose file keys the master key wraps). Whatever the interleaving, afterwards
 * every sealed blob opens and every backup opens (`backup verify --all --deep`).
 */
import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {tenantPasswordContext} from '../../src/control/keys-store.js';
import {openControlPlane} from '../../src/control/plane.js';
import {openKeyServices} from '../../src/keys/context.js';
import type {CliResult} from '../helpers/cli.js';
import {quickstartInstall, type EmbeddedInstall} from '../helpers/embedded-install.js';
import {findPgBinaries} from '../helpers/pg-cluster.js';
import {missingComponent} from '../helpers/requirements.js';

const available = findPgBinaries() !== undefined || missingComponent('PostgreSQL', 'no binaries under /usr/lib/postgresql');

const ROUNDS = 4;

describe.skipIf(!available)('master rotation racing certs renew, tenant create and backup --all', () => {
  let install: EmbeddedInstall;
  beforeAll(async () => {
    install = await quickstartInstall();
  }, 180_000);
  afterAll(async () => {
    await install?.cleanup();
  });

  it('every sealed blob and every backup opens afterwards', async () => {
    const failures: string[] = [];
    const loop = async (label: string, args: (i: number) => string[]): Promise<void> => {
      for (let i = 0; i < ROUNDS; i++) {
        const r: CliResult = await install.cli(args(i));
        if (r.code !== 0) failures.push(`${label} #${i} exited ${r.code}: ${r.stderr.trim().split('\n').slice(-3).join(' | ')}`);
      }
    };
    await Promise.all([
      loop('keys rotate --master', () => ['keys', 'rotate', '--master']),
      loop('certs renew --force', () => ['certs', 'renew', '--force']),
      loop('tenant create', (i) => ['tenant', 'create', `race-${i}`]),
      loop('backup --all', () => ['backup', '--all']),
    ]);
    expect(failures).toEqual([]);

    // Every sealed file, every data key, every dforge_control item opens.
    const keys = await openKeyServices(install.dir);
    for (const name of await keys.sealed.list()) await keys.sealed.get(name);
    for (const r of await keys.dataKeyStore.list()) await keys.dataKeys.get(r.owner, r.version);
    const plane = await openControlPlane(install.dir);
    try {
      expect(await plane.wrappedKeys.verifyAll()).toBeGreaterThan(ROUNDS * 2);
      const creds = await plane.control.query<{slug: string; sealed_password: Buffer}>('SELECT slug, sealed_password FROM tenant_credentials');
      for (const r of creds.rows) await keys.keyring.unwrap(r.sealed_password, tenantPasswordContext(r.slug), `password of ${r.slug}`);
      const slugs = (await plane.tenants.list()).filter((t) => t.status === 'active').map((t) => t.slug);
      expect(slugs).toEqual(expect.arrayContaining(Array.from({length: ROUNDS}, (_, i) => `race-${i}`)));
    } finally {
      await plane.close();
    }
    // Each race tenant logs in with its sealed password.
    for (let i = 0; i < ROUNDS; i++) expect(await install.asTenant(`race-${i}`, async (c) => (await c.query<{ok: number}>('SELECT 1 AS ok')).rows[0]!.ok)).toBe(1);

    // Every backup opens, including control backups made under versions rotated away since.
    const verify = await install.cli(['backup', 'verify', '--all', '--deep']);
    expect(verify.code, verify.stderr).toBe(0);
    const status = JSON.parse((await install.cli(['keys', 'status', '--json'])).stdout) as {master: {versions: Array<{version: number; destroyed: boolean; controlBackups: {count: number}}>}};
    expect(status.master.versions.filter((v) => v.destroyed && v.controlBackups.count > 0)).toEqual([]);
  }, 180_000);
});
