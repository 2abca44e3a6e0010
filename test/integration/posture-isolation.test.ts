import {promises as fs} from 'node:fs';
import path from 'node:path';

import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {PROVISIONER_ROLE} from '../../src/control/bootstrap.js';
import {provisionerInterfaceSql} from '../../src/postgres/provisioner.js';
import type {CheckResult} from '../../src/posture/check.js';
import {openPostureContext, type PostureContext} from '../../src/posture/context.js';
import {AUDIT_TRAIL_CHECKS, auditTrailProbe, coverageOf} from '../../src/posture/probes/audit-trail.js';
import {ISOLATION_CHECKS, isolationProbe} from '../../src/posture/probes/isolation.js';
import {PROVISIONER_CHECKS, provisionerProbe} from '../../src/posture/probes/provisioner.js';
import {quickstartInstall, type EmbeddedInstall} from '../helpers/embedded-install.js';
import {clusterAccess, withClient, type ClusterAccess} from '../helpers/hostile-tenant.js';
import {findPgBinaries} from '../helpers/pg-cluster.js';
import {missingComponent} from '../helpers/requirements.js';

const available = findPgBinaries() !== undefined || missingComponent('PostgreSQL', 'no binaries under /usr/lib/postgresql');

/**
 * The isolation, provisioner and audit-trail probes on a real quickstart install (embedded
 * PostgreSQL with dforge's pg_hba, two tenants). Each attack or careless change is made the way
 * an operator or the tenant would make it, must turn exactly the matching check FAIL, and undoing
 * it must turn it back to PASS.
 */
describe.skipIf(!available)('posture: isolation, provisioner and audit trail, live', () => {
  let install: EmbeddedInstall;
  let access: ClusterAccess;
  let ctx: PostureContext;
  let cluster: string;
  const secrets: string[] = [];
  const seen: CheckResult[] = [];

  beforeAll(async () => {
    install = await quickstartInstall();
    access = await clusterAccess(install);
    cluster = access.cluster;
    ctx = await openPostureContext(install.dir);
    expect(ctx.tenants.map((t) => t.slug)).toEqual(['acme', 'globex']);
    secrets.push(access.superuserPassword, access.provisionerPassword);
    for (const t of ctx.tenants) secrets.push(await ctx.plane!.tenants.password(t.slug));
    // A module table per tenant, made by the tenant: the guard attaches its triggers.
    for (const slug of ['acme', 'globex']) await install.asTenant(slug, (c) => c.query('CREATE TABLE crm.orders (id int PRIMARY KEY, total numeric)'));
  }, 240_000);
  afterAll(async () => {
    await ctx?.plane?.close();
    await install?.cleanup();
  });

  const runAll = async (context: PostureContext = ctx): Promise<CheckResult[]> => {
    const results = (await Promise.all([isolationProbe(context), provisionerProbe(context), auditTrailProbe(context)])).flat();
    seen.push(...results);
    return results;
  };
  const find = (results: readonly CheckResult[], id: string, scope: string): CheckResult => {
    const r = results.find((x) => x.id === id && x.scope === scope);
    if (!r) throw new Error(`no result for ${id} on ${scope}: ${results.map((x) => `${x.id}@${x.scope}`).join(', ')}`);
    return r;
  };
  const notPassing = (results: readonly CheckResult[]): string[] => results.filter((r) => r.status !== 'PASS').map((r) => `${r.id}@${r.scope} ${r.status}: ${r.observed} ${r.reason ?? ''}`);
  const su = <T>(fn: (c: import('pg').Client) => Promise<T>, database = 'postgres'): Promise<T> => withClient(access.superuser(database), fn);

  it('a healthy install: every check of the three probes PASSes, on every scope it applies to', async () => {
    const results = await runAll();
    expect(notPassing(results)).toEqual([]);
    const perTenant = ISOLATION_CHECKS.filter((d) => d.id !== 'isolation.hba').length + AUDIT_TRAIL_CHECKS.length - 1;
    expect(results).toHaveLength(1 + 2 * perTenant + PROVISIONER_CHECKS.length + 1);
    expect(find(results, 'isolation.hba', `cluster:${cluster}`).observed).toMatch(/exactly as dforge wrote them/);
    expect(find(results, 'isolation.cross-tenant-login', 'tenant:acme').observed).toMatch(/tenant_globex: refused by pg_hba \(28000\)/);
    expect(coverageOf(find(results, 'audit.change-log-coverage', 'tenant:acme'))).toEqual({covered: 1, total: 1});
    expect(find(results, 'audit.ops-log-chain', 'install').observed).toMatch(/keyed\) verify; anchored/);
  });

  it('GRANT CONNECT ON DATABASE … TO PUBLIC turns isolation.connect-privilege FAIL for that tenant only', async () => {
    await su((c) => c.query('GRANT CONNECT ON DATABASE tenant_acme TO PUBLIC'));
    try {
      const results = await runAll();
      const r = find(results, 'isolation.connect-privilege', 'tenant:acme');
      expect(r.status).toBe('FAIL');
      expect(r.reason).toMatch(/PUBLIC can connect to tenant_acme/);
      expect(notPassing(results)).toHaveLength(1);
    } finally {
      await su((c) => c.query('REVOKE CONNECT ON DATABASE tenant_acme FROM PUBLIC'));
    }
    expect(find(await runAll(), 'isolation.connect-privilege', 'tenant:acme').status).toBe('PASS');
  });

  it('a trust line appended to pg_hba.conf and reloaded turns isolation.hba FAIL naming the line; CONNECT still refuses the cross login', async () => {
    const hbaFile = path.join(access.dataDir, 'pg_hba.conf');
    const original = await fs.readFile(hbaFile, 'utf8');
    const reload = (): Promise<unknown> => su((c) => c.query('SELECT pg_reload_conf()'));
    await fs.writeFile(hbaFile, `${original}host all all 0.0.0.0/0 trust\n`);
    await reload();
    try {
      const results = await runAll();
      const r = find(results, 'isolation.hba', `cluster:${cluster}`);
      expect(r.status).toBe('FAIL');
      expect(r.observed).toMatch(/line \d+ "host all all 0\.0\.0\.0\/0 trust": method trust/);
      // pg_hba now lets the login through; the database's CONNECT privilege still refuses it.
      expect(find(results, 'isolation.cross-tenant-login', 'tenant:acme')).toMatchObject({status: 'PASS', observed: expect.stringMatching(/refused by CONNECT privilege \(42501\)/)});
    } finally {
      await fs.writeFile(hbaFile, original);
      await reload();
    }
    expect(find(await runAll(), 'isolation.hba', `cluster:${cluster}`).status).toBe('PASS');
  });

  it('an interface without hba_rules() (an older bootstrap) is ERROR with the fix, never PASS', async () => {
    await su((c) => c.query('DROP FUNCTION dforge_provision.hba_rules()'));
    try {
      const r = find(await runAll(), 'isolation.hba', `cluster:${cluster}`);
      expect(r.status).toBe('ERROR');
      expect(r.reason).toMatch(/predates hba_rules/);
    } finally {
      await su((c) => c.query(provisionerInterfaceSql(PROVISIONER_ROLE)));
    }
    expect(find(await runAll(), 'isolation.hba', `cluster:${cluster}`).status).toBe('PASS');
  });

  it('a module table without its change-log triggers turns audit.change-log-coverage FAIL naming it', async () => {
    // The guard attaches triggers to every new table: only the superuser, with the guard off, can make one without.
    await su(async (c) => {
      await c.query('ALTER EVENT TRIGGER dforge_keep_change_log DISABLE');
      await c.query('CREATE TABLE crm.unaudited (id int)');
      await c.query('ALTER EVENT TRIGGER dforge_keep_change_log ENABLE');
    }, 'tenant_acme');
    try {
      const results = await runAll();
      const r = find(results, 'audit.change-log-coverage', 'tenant:acme');
      expect(r.status).toBe('FAIL');
      expect(r.observed).toMatch(/^1\/2 module tables .*lacking: crm\.unaudited$/);
      expect(coverageOf(r)).toEqual({covered: 1, total: 2});
      expect(notPassing(results)).toHaveLength(1);
    } finally {
      await su((c) => c.query('DROP TABLE crm.unaudited'), 'tenant_acme');
    }
    expect(find(await runAll(), 'audit.change-log-coverage', 'tenant:acme').status).toBe('PASS');
  });

  it('a disabled guard, or DELETE on the change log granted to the tenant, turns the matching audit check FAIL', async () => {
    await su(async (c) => {
      await c.query('ALTER EVENT TRIGGER dforge_keep_change_log_on_drop DISABLE');
      await c.query('GRANT DELETE ON audit.change_log TO tenant_globex');
    }, 'tenant_globex');
    try {
      const results = await runAll();
      expect(find(results, 'audit.change-log-guard', 'tenant:globex')).toMatchObject({status: 'FAIL', observed: 'dforge_keep_change_log_on_drop disabled (D)'});
      expect(find(results, 'audit.change-log-tamper', 'tenant:globex')).toMatchObject({status: 'FAIL', observed: 'tenant_globex has DELETE on audit.change_log'});
      expect(notPassing(results)).toHaveLength(2);
    } finally {
      await su(async (c) => {
        await c.query('ALTER EVENT TRIGGER dforge_keep_change_log_on_drop ENABLE');
        await c.query('REVOKE DELETE ON audit.change_log FROM tenant_globex');
      }, 'tenant_globex');
    }
    expect(notPassing(await runAll())).toEqual([]);
  });

  it('the provisioner granted pg_read_server_files, or left in a tenant owner role, turns isolation.provisioner-memberships FAIL', async () => {
    await su((c) => c.query('GRANT pg_read_server_files TO dforge_provisioner'));
    try {
      const r = find(await runAll(), 'isolation.provisioner-memberships', `cluster:${cluster}`);
      expect(r).toMatchObject({status: 'FAIL', observed: 'member of pg_read_server_files (predefined)'});
    } finally {
      await su((c) => c.query('REVOKE pg_read_server_files FROM dforge_provisioner'));
    }
    // A setup step that never reached leave_tenant_owner.
    await withClient(access.provisioner(), (c) => c.query("SELECT dforge_provision.join_tenant_owner('tenant_acme')"));
    try {
      const r = find(await runAll(), 'isolation.provisioner-memberships', `cluster:${cluster}`);
      expect(r.status).toBe('FAIL');
      expect(r.reason).toMatch(/join_tenant_owner did not leave \(tenant_acme__owner\)/);
    } finally {
      await withClient(access.provisioner(), (c) => c.query("SELECT dforge_provision.leave_tenant_owner('tenant_acme')"));
    }
    expect(notPassing(await runAll())).toEqual([]);
  });

  it('a stopped cluster: every check on it is ERROR, never PASS, whether it stopped during the run or before', async () => {
    // The open plane's session is cut by the stop: without a listener, pg would throw it at the process.
    ctx.plane!.control.on('error', () => undefined);
    const stopped = await install.cli(['db', 'stop']);
    expect(stopped.code, stopped.stderr).toBe(0);
    const during = await runAll();
    expect(during.length).toBeGreaterThan(0);
    expect(during.filter((r) => r.status !== 'ERROR').map((r) => `${r.id}@${r.scope} ${r.status}`)).toEqual([]);

    const after = await openPostureContext(install.dir);
    try {
      expect(after.plane).toBeUndefined();
      const results = await runAll(after);
      expect(results.map((r) => `${r.id}@${r.scope}`).sort()).toEqual(
        ['audit.ops-log-chain@install', `isolation.hba@cluster:${cluster}`, ...PROVISIONER_CHECKS.map((d) => `${d.id}@cluster:${cluster}`)].sort(),
      );
      expect(results.every((r) => r.status === 'ERROR')).toBe(true);
    } finally {
      await after.plane?.close();
    }
  });

  it('no password of the install appears in any observed value or reason', () => {
    expect(seen.length).toBeGreaterThan(100);
    const text = JSON.stringify(seen.map((r) => [r.observed, r.reason]));
    for (const secret of secrets) expect(text.includes(secret)).toBe(false);
  });
});
