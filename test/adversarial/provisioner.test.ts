/**
 * THE PROVISIONER AS AN ATTACKER (what a stolen dforge_provisioner password, or tenant code that
 * ever runs as the provisioner, could do), logged in as itself to the `postgres` database:
 *   - GRANT every predefined role (pg_*) to itself;
 *   - ALTER ROLE dforge_provisioner SUPERUSER / CREATEROLE / REPLICATION / BYPASSRLS;
 *   - CREATE ROLE (plain and SUPERUSER); ALTER ROLE of the superuser and of tenant roles directly;
 *   - GRANT each tenant role (login and owner) to itself, SET ROLE to each;
 *   - COPY ... TO PROGRAM, pg_read_file, ALTER SYSTEM;
 *   - the SECURITY DEFINER provisioning interface (schema dforge_provision of `postgres`): each
 *     function must be owned by a superuser, SECURITY DEFINER with a pinned search_path, not
 *     executable by PUBLIC or tenants, in a schema the provisioner cannot create in; and each,
 *     called by the provisioner with non-tenant targets (postgres, dforge_admin, dforge_provisioner,
 *     pg_read_server_files, pg_execute_server_program, tenant_acme__owner where a login role is
 *     expected, tenant_acme__restore outside a restore), SQL-injection strings and NULLs, must fail.
 * Every attempt runs in a transaction that is rolled back, and a superuser snapshot taken before
 * and after must be identical.
 */
import {promises as fs} from 'node:fs';

import pg from 'pg';
import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {quickstartInstall, type EmbeddedInstall} from '../helpers/embedded-install.js';
import {attemptRolledBack, clusterAccess, diffWorld, markerDirectory, roleGraphViolations, snapshotWorld, withClient, type ClusterAccess, type WorldSnapshot} from '../helpers/hostile-tenant.js';
import {findPgBinaries} from '../helpers/pg-cluster.js';
import {missingComponent} from '../helpers/requirements.js';

const available = findPgBinaries() !== undefined || missingComponent('PostgreSQL', 'no binaries under /usr/lib/postgresql');
const ident = (s: string): string => pg.escapeIdentifier(s);

/** Targets that are not a tenant's login role, and strings that try to break out of quoting. */
const HOSTILE_VALUES: ReadonlyArray<string | null> = [
  'postgres',
  'dforge_admin',
  'dforge_provisioner',
  'pg_read_server_files',
  'pg_execute_server_program',
  'pg_database_owner',
  'tenant_acme__owner',
  'tenant_acme__restore',
  'x"; ALTER ROLE dforge_provisioner SUPERUSER; --',
  "x'; ALTER ROLE dforge_provisioner SUPERUSER; --",
  "tenant_acme'); ALTER ROLE dforge_provisioner SUPERUSER; --",
  'tenant_acme" SUPERUSER "',
  'tenant_acme SUPERUSER',
  'tenant_acme; DROP ROLE tenant_globex',
  '',
  null,
];

describe.skipIf(!available)('the provisioner cannot raise itself, and the provisioning interface refuses non-tenants', () => {
  let install: EmbeddedInstall;
  let access: ClusterAccess;
  let markerDir: string;
  let baseline: WorldSnapshot;
  let prov: pg.Client;

  const snap = (): Promise<WorldSnapshot> => snapshotWorld(install, access, {tenantDatabases: ['tenant_acme', 'tenant_globex'], markerDir});

  /** Statements that must fail; returns those that did not (each rolled back either way). */
  async function succeeding(statements: readonly string[]): Promise<string[]> {
    const ok: string[] = [];
    for (const sql of statements) if ((await attemptRolledBack(prov, sql)) === null) ok.push(sql);
    return ok;
  }

  beforeAll(async () => {
    install = await quickstartInstall();
    access = await clusterAccess(install);
    markerDir = await markerDirectory();
    baseline = await snap();
    prov = await access.provisioner('postgres');
  });
  afterAll(async () => {
    await prov?.end().catch(() => undefined);
    await install?.cleanup();
    if (markerDir) await fs.rm(markerDir, {recursive: true, force: true});
  });

  it('logged in as itself, it cannot grant itself any predefined role', async () => {
    const predefined = (await prov.query<{rolname: string}>("SELECT rolname FROM pg_roles WHERE rolname LIKE 'pg\\_%' ORDER BY 1")).rows.map((r) => r.rolname);
    expect(predefined).toEqual(expect.arrayContaining(['pg_execute_server_program', 'pg_read_server_files', 'pg_write_server_files', 'pg_signal_backend', 'pg_read_all_data', 'pg_write_all_data']));
    expect(await succeeding(predefined.map((r) => `GRANT ${ident(r)} TO dforge_provisioner`))).toEqual([]);
  });

  it('it cannot give itself SUPERUSER, CREATEROLE, REPLICATION or BYPASSRLS, create roles, or alter roles directly', async () => {
    expect(
      await succeeding([
        'ALTER ROLE dforge_provisioner SUPERUSER',
        'ALTER ROLE dforge_provisioner CREATEROLE',
        'ALTER ROLE dforge_provisioner REPLICATION',
        'ALTER ROLE dforge_provisioner BYPASSRLS',
        'CREATE ROLE x',
        'CREATE ROLE x LOGIN',
        'CREATE ROLE x SUPERUSER',
        "ALTER ROLE dforge_admin PASSWORD 'pwned'",
        "ALTER ROLE tenant_globex PASSWORD 'pwned'",
        'ALTER ROLE tenant_globex CONNECTION LIMIT -1',
        'ALTER ROLE tenant_acme CREATEROLE',
        'DROP ROLE tenant_globex',
      ]),
    ).toEqual([]);
  });

  it('it cannot become a member of a tenant role, or act as one', async () => {
    const tenantRoles = (await prov.query<{rolname: string}>("SELECT rolname FROM pg_roles WHERE rolname LIKE 'tenant\\_%' ORDER BY 1")).rows.map((r) => r.rolname);
    expect(tenantRoles).toEqual(expect.arrayContaining(['tenant_acme', 'tenant_globex']));
    expect(await succeeding(tenantRoles.flatMap((r) => [`GRANT ${ident(r)} TO dforge_provisioner`, `SET ROLE ${ident(r)}`]))).toEqual([]);
  });

  it('it cannot run programs or read files on the server, or change the server configuration', async () => {
    expect(await succeeding([`COPY (SELECT 1) TO PROGRAM 'touch ${markerDir}/provisioner'`, "SELECT pg_read_file('postgresql.conf')", "SELECT pg_read_file('server.key')", "SELECT pg_ls_dir('.')"])).toEqual([]);
    // ALTER SYSTEM cannot run inside a transaction block, so it gets its own attempt.
    await expect(prov.query("ALTER SYSTEM SET log_statement = 'none'")).rejects.toThrow(/permission denied|must be superuser/);
    expect(await fs.readdir(markerDir)).toEqual([]);
  });

  it('dforge_provision: SECURITY DEFINER functions owned by a superuser, with a pinned search_path, callable by the provisioner only', async () => {
    const fns = await withClient(access.superuser('postgres'), async (su) =>
      (
        await su.query<{sig: string; owner_is_super: boolean; secdef: boolean; config: string[] | null; public_exec: boolean; provisioner_exec: boolean; tenant_exec: boolean}>(
          `SELECT p.oid::regprocedure::text AS sig, o.rolsuper AS owner_is_super, p.prosecdef AS secdef, p.proconfig AS config,
                  EXISTS (SELECT 1 FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE') AS public_exec,
                  has_function_privilege('dforge_provisioner', p.oid, 'EXECUTE') AS provisioner_exec,
                  has_function_privilege('tenant_acme', p.oid, 'EXECUTE') AS tenant_exec
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace JOIN pg_roles o ON o.oid = p.proowner
            WHERE n.nspname = 'dforge_provision' ORDER BY 1`,
        )
      ).rows,
    );
    expect(fns.length, 'no functions in schema dforge_provision of database postgres: the SECURITY DEFINER provisioning interface does not exist').toBeGreaterThan(0);
    for (const f of fns) {
      expect({sig: f.sig, ownerIsSuperuser: f.owner_is_super, securityDefiner: f.secdef, pinnedSearchPath: (f.config ?? []).some((c) => c.startsWith('search_path=')), publicExecute: f.public_exec, tenantExecute: f.tenant_exec, provisionerExecute: f.provisioner_exec}).toEqual({
        sig: f.sig,
        ownerIsSuperuser: true,
        securityDefiner: true,
        pinnedSearchPath: true,
        publicExecute: false,
        tenantExecute: false,
        // The interface's internal helpers (leading underscore) are for its own functions only.
        provisionerExecute: !f.sig.startsWith('dforge_provision._'),
      });
    }
    const schema = (await prov.query<{create: boolean; owner: string}>("SELECT has_schema_privilege('dforge_provisioner', 'dforge_provision', 'CREATE') AS create, pg_get_userbyid(nspowner) AS owner FROM pg_namespace WHERE nspname = 'dforge_provision'")).rows[0];
    expect(schema, 'the provisioner must not be able to add or shadow functions in dforge_provision').toEqual({create: false, owner: 'dforge_admin'});
  });

  it('each dforge_provision function, called by the provisioner with non-tenant targets, injection strings or NULLs, fails', {timeout: 300_000}, async () => {
    const fns = (
      await prov.query<{name: string; types: string[]}>(
        `SELECT p.oid::regproc::text AS name, coalesce(array_agg(format_type(t.oid, NULL) ORDER BY a.ord) FILTER (WHERE t.oid IS NOT NULL), '{}') AS types
           FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
           LEFT JOIN LATERAL unnest(p.proargtypes::oid[]) WITH ORDINALITY AS a(typ, ord) ON true
           LEFT JOIN pg_type t ON t.oid = a.typ
          WHERE n.nspname = 'dforge_provision' AND p.prokind IN ('f', 'p')
          GROUP BY p.oid ORDER BY 1`,
      )
    ).rows;
    expect(fns.length, 'no functions in schema dforge_provision of database postgres: the SECURITY DEFINER provisioning interface does not exist').toBeGreaterThan(0);
    const textual = /^(text|name|character varying|character|regrole|regnamespace|regclass|cstring|"char")/;
    const succeeded: string[] = [];
    let calls = 0;
    for (const f of fns) {
      if (f.types.length === 0) continue; // nothing to aim at a non-tenant: its effect is covered by the snapshot
      const call = `SELECT ${f.name}(${f.types.map((t, i) => `$${i + 1}::${t}`).join(', ')})`;
      for (const value of HOSTILE_VALUES) {
        // Every textual argument gets the hostile value at once, so no argument can be a
        // legitimate tenant that makes the call valid; other arguments get a plausible value.
        const params = f.types.map((t) => (textual.test(t) ? value : t === 'boolean' ? true : /int|numeric/.test(t) ? (value === null ? null : 1) : t === 'bytea' ? (value === null ? null : Buffer.from(value)) : null));
        calls++;
        const error = await attemptRolledBack(prov, call, params);
        if (error === null) succeeded.push(`${f.name}(${params.map((p) => JSON.stringify(p instanceof Buffer ? p.toString() : p)).join(', ')})`);
      }
    }
    expect(calls).toBeGreaterThan(0);
    expect(succeeded, 'calls that did not fail').toEqual([]);
  });

  it('after all of it, nothing changed, and the provisioner holds nothing', async () => {
    expect(diffWorld(baseline, await snap())).toEqual([]);
    expect(await roleGraphViolations(access)).toEqual([]);
  });
});
