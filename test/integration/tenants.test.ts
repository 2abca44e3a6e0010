import {promises as fs} from 'node:fs';
import path from 'node:path';

import pg from 'pg';
import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {tenantPasswordContext} from '../../src/control/keys-store.js';
import {LockedError, UsageError, UserError} from '../../src/errors.js';
import {scramVerifier} from '../../src/postgres/scram.js';
import {pickCluster, type ClusterLoad} from '../../src/tenants/placement.js';
import {controlPlaneOver, type ControlPlane} from '../helpers/control-plane.js';
import {findPgBinaries, startPgCluster, type PgCluster} from '../helpers/pg-cluster.js';
import {missingComponent} from '../helpers/requirements.js';

const available = findPgBinaries() !== undefined || missingComponent('PostgreSQL', 'no binaries under /usr/lib/postgresql');

describe('placement rule (pickCluster)', () => {
  const c = (name: string, used: number, capacity: number | null): ClusterLoad => ({name, used, capacity});
  it('picks the most free slots, not the fewest tenants', () => {
    expect(pickCluster([c('a', 3, 4), c('b', 5, 10)])?.name).toBe('b');
  });
  it('breaks a tie in free slots by fewer tenants, then by declaration order', () => {
    expect(pickCluster([c('a', 6, 10), c('b', 0, 4)])?.name).toBe('b');
    expect(pickCluster([c('a', 2, 6), c('b', 2, 6)])?.name).toBe('a');
    expect(pickCluster([c('a', 0, null), c('b', 0, null)])?.name).toBe('a');
  });
  it('prefers an unlimited cluster over any limited one; unlimited ones share by count', () => {
    expect(pickCluster([c('a', 0, 1000), c('b', 500, null)])?.name).toBe('b');
    expect(pickCluster([c('a', 7, null), c('b', 6, null)])?.name).toBe('b');
  });
  it('skips full and over-full clusters (capacity lowered below the count) and finds none when all are', () => {
    expect(pickCluster([c('a', 5, 5), c('b', 9, 3), c('c', 1, 2)])?.name).toBe('c');
    expect(pickCluster([c('a', 5, 5), c('b', 9, 3)])).toBeUndefined();
    expect(pickCluster([])).toBeUndefined();
  });
});

describe.skipIf(!available)('tenant lifecycle on real PostgreSQL', () => {
  let eu: PgCluster;
  let us: PgCluster;
  let plane: ControlPlane;
  beforeAll(async () => {
    [eu, us] = await Promise.all([startPgCluster('eu'), startPgCluster('us')]);
    plane = await controlPlaneOver({'eu-1': {cluster: eu, region: 'eu'}, 'us-1': {cluster: us, region: 'us'}});
  });
  afterAll(async () => {
    await plane?.close();
    await Promise.all([eu?.stop(), us?.stop()]);
  });

  const admin = async <T>(cluster: PgCluster, sql: string, params: unknown[] = [], database = 'postgres'): Promise<T[]> => {
    const c = new pg.Client(cluster.clientConfig({database}));
    await c.connect();
    try {
      return (await c.query(sql, params)).rows as T[];
    } finally {
      await c.end();
    }
  };
  const passwordOf = async (slug: string): Promise<string> => {
    const row = await plane.control.query<{sealed_password: Buffer}>('SELECT sealed_password FROM tenant_credentials WHERE slug = $1', [slug]);
    return (await plane.kek.unwrap(row.rows[0]!.sealed_password, tenantPasswordContext(slug), 'test')).toString();
  };
  const connectAsTenant = async (cluster: PgCluster, slug: string, password?: string): Promise<pg.Client> => {
    const name = `tenant_${slug.replaceAll('-', '_')}`;
    const c = new pg.Client(cluster.clientConfig({user: name, password: password ?? (await passwordOf(slug)), database: name}));
    await c.connect();
    return c;
  };

  it('bootstraps a provisioner that is not a superuser, has no CREATEROLE and belongs to no role', async () => {
    const [role] = await admin<{rolsuper: boolean; rolcreatedb: boolean; rolcreaterole: boolean; rolinherit: boolean}>(eu, "SELECT rolsuper, rolcreatedb, rolcreaterole, rolinherit FROM pg_roles WHERE rolname = 'dforge_provisioner'");
    expect(role).toEqual({rolsuper: false, rolcreatedb: true, rolcreaterole: false, rolinherit: true});
    const memberships = await admin<{role: string}>(eu, "SELECT r.rolname AS role FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = 'dforge_provisioner'");
    expect(memberships.map((m) => m.role)).toEqual([]);
    const control = await admin<{public_connect: boolean; owner: string}>(eu, "SELECT has_database_privilege('public', oid, 'CONNECT') AS public_connect, pg_get_userbyid(datdba) AS owner FROM pg_database WHERE datname = 'dforge_control'");
    expect(control).toEqual([{public_connect: false, owner: 'dforge_provisioner'}]);
  });

  it('creates a tenant: own role and database, PUBLIC cannot connect, module schemas, data key v1', async () => {
    const {tenant, created} = await plane.service.create('acme', {region: 'eu'});
    expect(created).toBe(true);
    expect(tenant).toMatchObject({slug: 'acme', region: 'eu', cluster: 'eu-1', role: 'tenant_acme', database: 'tenant_acme', status: 'active', connectionLimit: 20});
    const [role] = await admin<Record<string, unknown>>(eu, "SELECT rolsuper, rolcreatedb, rolcreaterole, rolcanlogin, rolconnlimit, rolpassword LIKE 'SCRAM-SHA-256$%' AS scram FROM pg_authid WHERE rolname = 'tenant_acme'");
    expect(role).toEqual({rolsuper: false, rolcreatedb: false, rolcreaterole: false, rolcanlogin: true, rolconnlimit: 20, scram: true});
    const [db] = await admin<Record<string, unknown>>(eu, "SELECT pg_get_userbyid(datdba) AS owner, has_database_privilege('public', oid, 'CONNECT') AS public_connect, datconnlimit FROM pg_database WHERE datname = 'tenant_acme'");
    // The database belongs to the tenant's NOLOGIN owner role, not to the login role the app uses.
    expect(db).toEqual({owner: 'tenant_acme__owner', public_connect: false, datconnlimit: 20});
    const [owner] = await admin<Record<string, unknown>>(eu, "SELECT rolcanlogin, rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = 'tenant_acme__owner'");
    expect(owner).toEqual({rolcanlogin: false, rolsuper: false, rolcreaterole: false, rolcreatedb: false});
    const client = await connectAsTenant(eu, 'acme');
    try {
      const schemas = await client.query<{nspname: string}>("SELECT nspname FROM pg_namespace WHERE nspname IN ('crm','hr','fin','wms','audit') ORDER BY 1");
      expect(schemas.rows.map((r) => r.nspname)).toEqual(['audit', 'crm', 'fin', 'hr', 'wms']);
    } finally {
      await client.end();
    }
    const show = await plane.service.show('acme');
    expect(show).toMatchObject({dataKeyVersions: [1], activeDataKeyVersion: 1, roleCanLogin: true, databaseExists: true, publicCanConnect: false});
    const memberships = await admin<{n: string}>(eu, "SELECT count(*) AS n FROM pg_auth_members m JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = 'dforge_provisioner'");
    expect(Number(memberships[0]!.n)).toBe(0);
  });

  it('records row changes in audit.change_log with before and after, from the first row of a new table', async () => {
    const client = await connectAsTenant(eu, 'acme');
    try {
      await client.query('CREATE TABLE crm.contacts (id int PRIMARY KEY, name text, email text)');
      // The guard attached the change log when the table was created: nothing left to attach.
      expect((await client.query<{n: number}>('SELECT audit.attach_all() AS n')).rows[0]!.n).toBe(0);
      await client.query('BEGIN');
      await client.query("SET LOCAL dforge.actor = 'alice@acme'");
      await client.query("INSERT INTO crm.contacts VALUES (1, 'Zoë', 'zoe@acme.test')");
      await client.query("UPDATE crm.contacts SET email = 'zoe@acme.example' WHERE id = 1");
      await client.query('COMMIT');
      await client.query('DELETE FROM crm.contacts WHERE id = 1');
      const log = await client.query<{actor: string; db_role: string; operation: string; before: unknown; after: unknown}>("SELECT actor, db_role, operation, before, after FROM audit.change_log WHERE table_name = 'contacts' ORDER BY id");
      expect(log.rows).toEqual([
        {actor: 'alice@acme', db_role: 'tenant_acme', operation: 'INSERT', before: null, after: {id: 1, name: 'Zoë', email: 'zoe@acme.test'}},
        {actor: 'alice@acme', db_role: 'tenant_acme', operation: 'UPDATE', before: {id: 1, name: 'Zoë', email: 'zoe@acme.test'}, after: {id: 1, name: 'Zoë', email: 'zoe@acme.example'}},
        {actor: 'tenant_acme', db_role: 'tenant_acme', operation: 'DELETE', before: {id: 1, name: 'Zoë', email: 'zoe@acme.example'}, after: null},
      ]);
      expect((await client.query('SELECT tables::int, covered::int FROM audit.coverage')).rows[0]).toEqual({tables: 1, covered: 1});
    } finally {
      await client.end();
    }
  });

  it('places a tenant on its region\'s cluster', async () => {
    const {tenant} = await plane.service.create('globex', {region: 'us'});
    expect(tenant.cluster).toBe('us-1');
    expect(await admin(us, "SELECT 1 FROM pg_database WHERE datname = 'tenant_globex'")).toHaveLength(1);
    expect(await admin(eu, "SELECT 1 FROM pg_database WHERE datname = 'tenant_globex'")).toHaveLength(0);
    await expect(plane.service.create('initech', {region: 'ap'})).rejects.toThrow(/region ap is not declared/);
  });

  it('has no default region once there are two: create without one is a usage error and registers nothing', async () => {
    const err = await plane.service.create('nowhere').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UsageError);
    expect((err as UsageError).message).toBe('tenant create nowhere needs --region: this install has 2 regions (eu, us) and none is a default');
    expect((err as UsageError).nextSteps).toEqual(['dforge tenant create nowhere --region eu', 'dforge tenant create nowhere --region us']);
    expect((await plane.control.query("SELECT 1 FROM tenants WHERE slug = 'nowhere'")).rowCount).toBe(0);
  });

  it.each([
    ['SQL injection', "acme'; DROP DATABASE dforge_control; --"],
    ['a double quote', 'ac"me'],
    ['a unicode look-alike (Cyrillic а)', 'аcme'],
    ['a fullwidth letter', 'ａcme'],
    ['41 characters', `a${'b'.repeat(40)}`],
    ['a reserved name', 'postgres'],
    ['another reserved name', 'dforge'],
    ['the empty string', ''],
    ['upper case', 'Acme'],
    ['a leading digit', '1acme'],
    ['a trailing dash', 'acme-'],
    ['a NUL byte', 'ac\u0000me'],
    ['a newline', 'acme\nx'],
  ])('refuses %s and creates nothing', async (_label, slug) => {
    const before = await admin<{n: string}>(eu, "SELECT (SELECT count(*) FROM pg_roles) + (SELECT count(*) FROM pg_database) AS n");
    const tenantsBefore = (await plane.service.list()).length;
    const err = await plane.service.create(slug).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UserError);
    expect((err as UserError).nextSteps.join(' ')).toMatch(/letter|Choose another name/);
    expect(await admin<{n: string}>(eu, "SELECT (SELECT count(*) FROM pg_roles) + (SELECT count(*) FROM pg_database) AS n")).toEqual(before);
    expect((await plane.service.list()).length).toBe(tenantsBefore);
  });

  it('refuses to create an existing tenant, unless asked to skip it', async () => {
    await expect(plane.service.create('acme')).rejects.toThrow('tenant acme already exists (active)');
    const skipped = await plane.service.create('acme', {ifNotExists: true});
    expect(skipped.created).toBe(false);
    expect(skipped.placement).toMatchObject({region: 'eu', cluster: 'eu-1', reason: 'already exists', capacity: null});
  });

  it('finishes a half-provisioned tenant only where it was placed', async () => {
    await plane.control.query("INSERT INTO tenants (slug, region, cluster, role_name, database_name, status, connection_limit) VALUES ('halfway', 'eu', 'eu-1', 'tenant_halfway', 'tenant_halfway', 'provisioning', 20)");
    await expect(plane.service.create('halfway', {cluster: 'us-1'})).rejects.toThrow('tenant halfway is half-provisioned on cluster eu-1 in region eu, not cluster us-1');
    expect((await plane.control.query("SELECT cluster, status FROM tenants WHERE slug = 'halfway'")).rows).toEqual([{cluster: 'eu-1', status: 'provisioning'}]);
    const finished = await plane.service.create('halfway', {cluster: 'eu-1'});
    expect(finished).toMatchObject({created: true, tenant: {cluster: 'eu-1', status: 'active'}, placement: {reason: 'registered by an earlier run that did not finish'}});
    await plane.service.delete('halfway', {confirm: 'halfway'});
  });

  it('suspend blocks logins and ends sessions; resume restores them', async () => {
    const session = await connectAsTenant(eu, 'acme');
    const ended = new Promise<void>((resolve) => session.on('error', () => resolve()));
    await plane.service.suspend('acme');
    await ended;
    await expect(connectAsTenant(eu, 'acme')).rejects.toThrow(/not permitted to log in/);
    await plane.service.resume('acme');
    await (await connectAsTenant(eu, 'acme')).end();
  });

  it('rotate-credentials: the new password works and the old one stops working', async () => {
    const old = await passwordOf('acme');
    await plane.service.rotateCredentials('acme');
    const fresh = await passwordOf('acme');
    expect(fresh).not.toBe(old);
    await (await connectAsTenant(eu, 'acme', fresh)).end();
    await expect(connectAsTenant(eu, 'acme', old)).rejects.toThrow(/password authentication failed/);
  });

  it('serialises operators: a second run on the same tenant gets a lock error', async () => {
    const other = new pg.Client(eu.clientConfig({user: 'dforge_provisioner', password: plane.provisionerPassword, database: 'dforge_control'}));
    await other.connect();
    try {
      await other.query("SELECT pg_advisory_lock(hashtext('dforge.tenant'), hashtext('acme'))");
      const err = await plane.service.suspend('acme').catch((e: unknown) => e);
      expect(err).toBeInstanceOf(LockedError);
      expect((err as LockedError).exitCode).toBe(5);
    } finally {
      await other.end();
    }
  });

  it('delete needs the slug repeated; it drops database and role without superuser; --shred destroys the keys', async () => {
    await expect(plane.service.delete('globex', {confirm: 'globe'})).rejects.toThrow(/--confirm must repeat the slug/);
    const result = await plane.service.delete('globex', {confirm: 'globex', shred: true});
    expect(result).toEqual({slug: 'globex', shredded: 1});
    expect(await admin(us, "SELECT 1 FROM pg_database WHERE datname = 'tenant_globex'")).toHaveLength(0);
    expect(await admin(us, "SELECT 1 FROM pg_roles WHERE rolname = 'tenant_globex'")).toHaveLength(0);
    expect((await plane.control.query("SELECT 1 FROM data_keys WHERE owner = 'globex'")).rowCount).toBe(0);
    expect((await plane.service.list()).map((t) => t.slug)).toEqual(['acme']);
  });

  it('a tenant role removed outside dforge is a user error that says so, not a bug', async () => {
    await plane.service.create('vanish', {region: 'eu'});
    // What an operator's superuser session would do: drop the role and every grant it held.
    await admin(eu, 'DROP OWNED BY tenant_vanish', [], 'tenant_vanish');
    await admin(eu, 'DROP OWNED BY tenant_vanish');
    await admin(eu, 'DROP ROLE tenant_vanish');
    const err = await plane.service.rotateCredentials('vanish').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UserError);
    expect((err as UserError).message).toMatch(/the role tenant_vanish \(or its owner role\) no longer exists on this cluster: it was removed outside dforge/);
    expect((err as UserError).nextSteps.join(' ')).toMatch(/dforge restore --tenant <slug>|dforge tenant delete/);
    // Delete still cleans up what is left: the database, the owner role, the registry entry.
    await plane.service.delete('vanish', {confirm: 'vanish'});
    expect(await admin(eu, "SELECT rolname FROM pg_roles WHERE rolname LIKE 'tenant\\_vanish%'")).toEqual([]);
    expect(await admin(eu, "SELECT datname FROM pg_database WHERE datname LIKE 'tenant\\_vanish%'")).toEqual([]);
  });

  it('a failed password change leaves no verifier in the server log', async () => {
    const provisioner = new pg.Client(eu.clientConfig({user: 'dforge_provisioner', password: plane.provisionerPassword, database: 'postgres'}));
    await provisioner.connect();
    const verifier = scramVerifier('never-logged-password');
    try {
      // ALTER ROLE fails inside the interface (read-only transaction), with log_min_error_statement at its default.
      await provisioner.query('BEGIN READ ONLY');
      await expect(provisioner.query('SELECT dforge_provision.set_tenant_password($1, $2)', ['tenant_acme', verifier])).rejects.toThrow(/could not set the credentials of role tenant_acme \(25006\)/);
      await provisioner.query('ROLLBACK');
      // A plaintext password is refused before it can reach any statement.
      await expect(provisioner.query('SELECT dforge_provision.set_tenant_password($1, $2)', ['tenant_acme', 'plaintext-password'])).rejects.toThrow(/must be given as a SCRAM-SHA-256 verifier/);
    } finally {
      await provisioner.end();
    }
    const log = await fs.readFile(path.join(eu.baseDir, 'server.log'), 'utf8');
    expect(log).toContain('could not set the credentials of role tenant_acme');
    expect(log).not.toContain(verifier.split('$')[2]!);
    expect(log).not.toContain('SCRAM-SHA-256$');
    expect(log).not.toContain('plaintext-password');
    expect(log).toMatch(/dforge: password of tenant role tenant_acme changed by dforge_provisioner/);
  });

  it('a cluster bootstrapped without the provisioning interface is a user error that says how to fix it, and nothing changes', async () => {
    await plane.service.create('oldboot', {region: 'us'});
    await admin(us, 'DROP SCHEMA dforge_provision CASCADE');
    const before = await admin(us, "SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname LIKE 'tenant\\_oldboot%' ORDER BY 1");
    const err = await plane.service.suspend('oldboot').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UserError);
    expect((err as UserError).message).toBe('this cluster has no dforge provisioning interface (it was bootstrapped by an older dforge)');
    expect((err as UserError).nextSteps.join(' ')).toMatch(/Bootstrap it again as the superuser/);
    expect(await admin(us, "SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname LIKE 'tenant\\_oldboot%' ORDER BY 1")).toEqual(before);
    expect((await plane.service.get('oldboot')).status).toBe('active');
  });

  it('audits every action in a hash chain that detects tampering', async () => {
    const log = await plane.control.query<{action: string; target: string; outcome: string}>('SELECT action, target, outcome FROM ops_log ORDER BY seq');
    expect(log.rows).toEqual(
      expect.arrayContaining([
        {action: 'tenant.create', target: 'tenant:acme', outcome: 'ok'},
        {action: 'tenant.suspend', target: 'tenant:acme', outcome: 'ok'},
        {action: 'tenant.resume', target: 'tenant:acme', outcome: 'ok'},
        {action: 'tenant.rotate-credentials', target: 'tenant:acme', outcome: 'ok'},
        {action: 'tenant.create', target: 'tenant:initech', outcome: 'failed'},
        {action: 'tenant.delete+shred', target: 'tenant:globex', outcome: 'ok'},
      ]),
    );
    expect(await plane.deps.opsLog.verify(plane.control)).toMatchObject({intact: true});
    await plane.control.query("UPDATE ops_log SET outcome = 'failed' WHERE seq = 2");
    expect(await plane.deps.opsLog.verify(plane.control)).toMatchObject({intact: false, brokenAt: 2, reason: 'entry 2 was altered after it was written'});
    await plane.control.query("UPDATE ops_log SET outcome = 'ok' WHERE seq = 2");
    await plane.control.query('DELETE FROM ops_log WHERE seq = 3');
    expect(await plane.deps.opsLog.verify(plane.control)).toMatchObject({intact: false, brokenAt: 3, reason: 'entry 3 is missing'});
  });
});
