import pg from 'pg';
import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import type {ControlPlane} from '../../src/control/plane.js';
import {controlPlaneOver, type ControlPlane as TestPlane} from '../helpers/control-plane.js';
import {quickstartInstall, type EmbeddedInstall} from '../helpers/embedded-install.js';
import {findPgBinaries, startPgCluster, type PgCluster} from '../helpers/pg-cluster.js';
import {missingComponent} from '../helpers/requirements.js';
import {tenantPasswordContext} from '../../src/control/keys-store.js';

const available = findPgBinaries() !== undefined || missingComponent('PostgreSQL', 'no binaries under /usr/lib/postgresql');
const TENANTS = ['acme', 'globex', 'initech', 'umbrella', 'hooli'];

async function tryConnect(config: pg.ClientConfig): Promise<{ok: true; client: pg.Client} | {ok: false; error: string}> {
  const client = new pg.Client(config);
  try {
    await client.connect();
    return {ok: true, client};
  } catch (err) {
    await client.end().catch(() => undefined);
    return {ok: false, error: (err as Error).message};
  }
}

/**
 * The isolation matrix on the product's own data plane (quickstart: embedded PostgreSQL with
 * dforge's pg_hba, TLS and bootstrap), over five tenants and every ordered pair of them.
 */
describe.skipIf(!available)('tenant isolation matrix (embedded data plane)', () => {
  let install: EmbeddedInstall;
  let plane: ControlPlane;
  const passwords = new Map<string, string>();
  beforeAll(async () => {
    install = await quickstartInstall();
    plane = await install.plane();
    for (const slug of TENANTS) {
      await plane.tenants.create(slug, {ifNotExists: true});
      passwords.set(slug, await install.tenantPassword(plane, slug));
    }
    // Each tenant gets a table holding a secret, so "cannot read B's objects" has something to find.
    for (const slug of TENANTS) {
      const c = new pg.Client(install.clientConfig(`tenant_${slug}`, passwords.get(slug)!, `tenant_${slug}`));
      await c.connect();
      await c.query(`CREATE TABLE crm.secrets_${slug} (v text); INSERT INTO crm.secrets_${slug} VALUES ('secret of ${slug}')`);
      await c.end();
    }
  });
  afterAll(async () => {
    await plane?.close();
    await install?.cleanup();
  });

  const own = (slug: string, overrides: Partial<pg.ClientConfig> = {}): pg.ClientConfig => install.clientConfig(`tenant_${slug}`, passwords.get(slug)!, `tenant_${slug}`, overrides);

  for (const a of TENANTS) {
    for (const b of TENANTS.filter((x) => x !== a)) {
      it(`${a} cannot connect to ${b}'s database (pg_hba sameuser)`, async () => {
        const attempt = await tryConnect(install.clientConfig(`tenant_${a}`, passwords.get(a)!, `tenant_${b}`));
        expect(attempt.ok).toBe(false);
        expect(attempt.ok === false && attempt.error).toMatch(new RegExp(`no pg_hba\\.conf entry for host "127\\.0\\.0\\.1", user "tenant_${a}", database "tenant_${b}", SSL encryption`));
      });
    }
  }

  for (const a of TENANTS) {
    it(`${a}: reaches only its own database, sees no other tenant's objects, cannot create databases or roles`, async () => {
      for (const db of ['postgres', 'template1', 'dforge_control']) {
        const attempt = await tryConnect(install.clientConfig(`tenant_${a}`, passwords.get(a)!, db));
        expect(attempt.ok, `${a} -> ${db}`).toBe(false);
      }
      const attempt = await tryConnect(own(a));
      if (!attempt.ok) throw new Error(attempt.error);
      const c = attempt.client;
      try {
        const visible = await c.query<{t: string}>("SELECT schemaname || '.' || tablename AS t FROM pg_tables WHERE tablename LIKE 'secrets_%' ORDER BY 1");
        expect(visible.rows.map((r) => r.t)).toEqual([`crm.secrets_${a}`]);
        for (const b of TENANTS.filter((x) => x !== a)) {
          await expect(c.query(`SELECT * FROM crm.secrets_${b}`)).rejects.toThrow(`relation "crm.secrets_${b}" does not exist`);
          await expect(c.query(`SELECT * FROM tenant_${b.replaceAll('-', '_')}.crm.secrets_${b}`)).rejects.toThrow(/cross-database references are not implemented/);
          await expect(c.query(`ALTER DATABASE tenant_${b} CONNECTION LIMIT 100`)).rejects.toThrow(/must be owner of database/);
          await expect(c.query(`ALTER ROLE tenant_${b} PASSWORD 'x'`)).rejects.toThrow(/permission denied/);
          await expect(c.query(`GRANT tenant_${b} TO tenant_${a}`)).rejects.toThrow(/permission denied|must have admin option/);
        }
        await expect(c.query('CREATE DATABASE sneaky')).rejects.toThrow('permission denied to create database');
        await expect(c.query('CREATE ROLE sneaky')).rejects.toThrow('permission denied to create role');
        await expect(c.query('CREATE EXTENSION dblink')).rejects.toThrow(/permission denied|not available|could not open extension control file|no schema has been selected to create in/);
        const [me] = (await c.query<{rolsuper: boolean; rolcreatedb: boolean; rolcreaterole: boolean}>('SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = current_user')).rows;
        expect(me).toEqual({rolsuper: false, rolcreatedb: false, rolcreaterole: false});
      } finally {
        await c.end();
      }
    });

    it(`${a}: no connection without TLS, and none from a TLS 1.2-only client`, async () => {
      const plain = await tryConnect(own(a, {ssl: false}));
      expect(plain.ok === false && plain.error).toMatch(/no pg_hba\.conf entry .* no encryption/);
      const tls12 = await tryConnect(own(a, {ssl: {ca: install.caPem, servername: 'localhost', maxVersion: 'TLSv1.2'}}));
      expect(tls12.ok === false && tls12.error).toMatch(/protocol version|alert|handshake/i);
      const tls13 = await tryConnect(own(a));
      expect(tls13.ok).toBe(true);
      if (tls13.ok) {
        const [row] = (await tls13.client.query<{version: string}>('SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid()')).rows;
        expect(row!.version).toBe('TLSv1.3');
        await tls13.client.end();
      }
    });
  }

  it('the provisioner is no superuser, has no CREATEROLE and is a member of no role', async () => {
    const c = new pg.Client(own('acme'));
    await c.connect();
    try {
      const rows = await c.query<{role: string}>("SELECT r.rolname AS role FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = 'dforge_provisioner'");
      expect(rows.rows.map((r) => r.role)).toEqual([]);
      const [p] = (await c.query<{rolsuper: boolean; rolcreaterole: boolean}>("SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = 'dforge_provisioner'")).rows;
      expect(p).toEqual({rolsuper: false, rolcreaterole: false});
    } finally {
      await c.end();
    }
  });
});

/**
 * The second fence on its own: with a permissive pg_hba (every role may try every database), a
 * tenant is still refused another tenant's database, because CONNECT was revoked from PUBLIC.
 */
describe.skipIf(!available)('tenant isolation matrix (REVOKE CONNECT alone)', () => {
  let cluster: PgCluster;
  let plane: TestPlane;
  const passwords = new Map<string, string>();
  beforeAll(async () => {
    cluster = await startPgCluster('connect-fence');
    plane = await controlPlaneOver({'eu-1': {cluster, region: 'eu'}});
    for (const slug of TENANTS) {
      await plane.service.create(slug);
      const row = await plane.control.query<{sealed_password: Buffer}>('SELECT sealed_password FROM tenant_credentials WHERE slug = $1', [slug]);
      passwords.set(slug, (await plane.kek.unwrap(row.rows[0]!.sealed_password, tenantPasswordContext(slug), 'test')).toString());
    }
  });
  afterAll(async () => {
    await plane?.close();
    await cluster?.stop();
  });

  for (const a of TENANTS) {
    for (const b of TENANTS.filter((x) => x !== a)) {
      it(`${a} cannot connect to ${b}'s database (no CONNECT privilege)`, async () => {
        const attempt = await tryConnect(cluster.clientConfig({user: `tenant_${a}`, password: passwords.get(a)!, database: `tenant_${b}`}));
        expect(attempt.ok === false && attempt.error).toBe(`permission denied for database "tenant_${b}"`);
      });
    }
  }
});
