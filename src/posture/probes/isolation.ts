import type {Client} from 'pg';

import {CONTROL_DATABASE, PROVISIONER_ROLE} from '../../control/bootstrap.js';
import {clustersOf, endpointOf, primaryCluster} from '../../control/clusters.js';
import {connect} from '../../postgres/connect.js';
import {ownerRoleOf, restoreRoleOf} from '../../postgres/provisioner.js';
import type {Tenant} from '../../tenants/registry.js';
import {defineCheck, fail, pass, runCheck, skip, warn, type CheckDefinition, type CheckResult, type Finding} from '../check.js';
import {onControl, requirePlane, usingClient, type PostureContext, type Probe} from '../context.js';
import {describeRule, expectedHbaRules, hbaDrift, hbaFileState, liveHbaRules, policyViolation, type HbaFileState, type HbaRule} from './hba.js';

/**
 * Tenant isolation at the database level, measured on the live cluster: each tenant's roles and
 * database as the catalog has them (one provisioner session per cluster for all its tenants), the
 * pg_hba rules the server parses, and a real login as one tenant into a neighbour's database.
 */

const ROLES = defineCheck({
  id: 'isolation.tenant-roles',
  title: 'Own login and owner roles, plain and not shared',
  area: 'isolation',
  controls: ['CIS PostgreSQL 4.3'],
  severity: 'critical',
  expected: 'tenant_<s> and tenant_<s>__owner exist with no SUPERUSER, CREATEROLE, CREATEDB, REPLICATION or BYPASSRLS; the login role is a member of no role, and only its own owner and restore roles are members of it',
  method: 'pg_roles and pg_auth_members on a provisioner session to the cluster',
  fix: 'docs/security.md#roles; as the superuser, REVOKE the memberships named here (docs/operations.md#tenant-roles-and-the-superuser)',
});

const DATABASE_OWNER = defineCheck({
  id: 'isolation.database-owner',
  title: 'Own database, owned by the tenant\'s owner role',
  area: 'isolation',
  controls: ['CIS PostgreSQL 4.3'],
  severity: 'high',
  expected: 'database tenant_<s> exists and is owned by tenant_<s>__owner',
  method: 'pg_database.datdba on a provisioner session to the cluster',
  fix: 'as the superuser: ALTER DATABASE tenant_<s> OWNER TO tenant_<s>__owner (docs/operations.md#tenant-roles-and-the-superuser)',
});

const CONNECT_PRIVILEGE = defineCheck({
  id: 'isolation.connect-privilege',
  title: 'No CONNECT for PUBLIC or for any role but the tenant\'s own',
  area: 'isolation',
  controls: ['CIS PostgreSQL 4.3', 'CIS PostgreSQL 5.4'],
  severity: 'critical',
  expected: 'CONNECT on tenant_<s> held by tenant_<s>, tenant_<s>__owner (and tenant_<s>__restore during a restore) only',
  method: 'aclexplode of pg_database.datacl (the built-in default when NULL) on a provisioner session',
  fix: 'as the superuser: REVOKE CONNECT ON DATABASE tenant_<s> FROM PUBLIC (and from each role named) (docs/operations.md#tenant-roles-and-the-superuser)',
});

const CONNECTION_LIMIT = defineCheck({
  id: 'isolation.connection-limit',
  title: 'Connection limit as recorded',
  area: 'isolation',
  controls: ['CIS PostgreSQL 5.5'],
  severity: 'medium',
  expected: 'pg_roles.rolconnlimit and pg_database.datconnlimit equal the tenant\'s recorded connection limit, never -1',
  method: 'pg_roles and pg_database on a provisioner session, against dforge_control.tenants.connection_limit',
  fix: 'as the superuser: ALTER ROLE tenant_<s> CONNECTION LIMIT <n>; ALTER DATABASE tenant_<s> CONNECTION LIMIT <n> (n from dforge tenant show <s>)',
});

const HBA = defineCheck({
  id: 'isolation.hba',
  title: 'pg_hba as dforge wrote it: scram-sha-256, hostssl, sameuser',
  area: 'isolation',
  controls: ['CIS PostgreSQL 5.3', 'CIS PostgreSQL 5.4'],
  severity: 'critical',
  expected: 'the live rules are exactly the lines dforge writes, in order; no trust, password or md5 method; every TCP line hostssl',
  method: 'pg_hba_file_rules through dforge_provision.hba_rules() on a provisioner session, compared with the rendered pg_hba.conf',
  fix: 'dforge db init (embedded) or dforge install (compose / Kubernetes) rewrites pg_hba.conf and reloads',
});

const CROSS_LOGIN = defineCheck({
  id: 'isolation.cross-tenant-login',
  title: 'A tenant\'s login into another tenant\'s database is refused',
  area: 'isolation',
  controls: ['CIS PostgreSQL 5.4'],
  severity: 'critical',
  expected: 'refused by pg_hba (28000, no pg_hba.conf entry) or by CONNECT privilege (42501)',
  method: 'a real TLS login as tenant_<s> with its own password into a neighbour tenant\'s database (with no neighbour: postgres and dforge_control)',
  fix: 'dforge db init / dforge install (pg_hba), and REVOKE CONNECT as in isolation.connect-privilege',
});

export const ISOLATION_CHECKS: readonly CheckDefinition[] = [ROLES, DATABASE_OWNER, CONNECT_PRIVILEGE, CONNECTION_LIMIT, HBA, CROSS_LOGIN];

interface RoleRow {
  rolname: string;
  rolcanlogin: boolean;
  rolconnlimit: number;
  rolsuper: boolean;
  rolcreaterole: boolean;
  rolcreatedb: boolean;
  rolreplication: boolean;
  rolbypassrls: boolean;
}

interface DatabaseRow {
  datname: string;
  owner: string;
  datconnlimit: number;
  /** Grantees of CONNECT; 'PUBLIC' for the public pseudo-role. */
  connect: string[];
}

/** What the catalog of one cluster says about its tenants, read in one provisioner session. */
export interface ClusterCatalog {
  readonly roles: Map<string, RoleRow>;
  readonly databases: Map<string, DatabaseRow>;
  /** Direct memberships touching the tenants' roles: `role` has `member`. */
  readonly memberships: ReadonlyArray<{role: string; member: string}>;
}

const tenantRoleNames = (t: Tenant): string[] => [t.role, ownerRoleOf(t.role), restoreRoleOf(t.role)];

export async function readClusterCatalog(c: Client, tenants: readonly Tenant[]): Promise<ClusterCatalog> {
  const roleNames = tenants.flatMap(tenantRoleNames);
  const roles = await c.query<RoleRow>(
    `SELECT rolname, rolcanlogin, rolconnlimit, rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls
       FROM pg_catalog.pg_roles WHERE rolname = ANY($1::text[])`,
    [roleNames],
  );
  // A NULL datacl means the built-in default, which grants CONNECT to PUBLIC: acldefault() says so.
  const databases = await c.query<DatabaseRow>(
    `SELECT d.datname, pg_catalog.pg_get_userbyid(d.datdba) AS owner, d.datconnlimit,
            coalesce((SELECT pg_catalog.array_agg(CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.pg_get_userbyid(a.grantee)::text END ORDER BY 1)
                        FROM pg_catalog.aclexplode(coalesce(d.datacl, pg_catalog.acldefault('d', d.datdba))) a
                       WHERE a.privilege_type = 'CONNECT'), '{}') AS connect
       FROM pg_catalog.pg_database d WHERE d.datname = ANY($1::text[])`,
    [tenants.map((t) => t.database)],
  );
  const memberships = await c.query<{role: string; member: string}>(
    `SELECT g.rolname AS role, m.rolname AS member
       FROM pg_catalog.pg_auth_members a
       JOIN pg_catalog.pg_roles g ON g.oid = a.roleid
       JOIN pg_catalog.pg_roles m ON m.oid = a.member
      WHERE g.rolname = ANY($1::text[]) OR m.rolname = ANY($1::text[])`,
    [roleNames],
  );
  return {
    roles: new Map(roles.rows.map((r) => [r.rolname, r])),
    databases: new Map(databases.rows.map((d) => [d.datname, d])),
    memberships: memberships.rows,
  };
}

const ELEVATED = ['rolsuper', 'rolcreaterole', 'rolcreatedb', 'rolreplication', 'rolbypassrls'] as const;
const attributeName = (a: (typeof ELEVATED)[number]): string => a.slice(3).toUpperCase();

export function rolesFinding(t: Tenant, cat: ClusterCatalog): Finding {
  const owner = ownerRoleOf(t.role);
  const restore = restoreRoleOf(t.role);
  const problems: string[] = [];
  const login = cat.roles.get(t.role);
  const ownerRow = cat.roles.get(owner);
  if (!login) problems.push(`login role ${t.role} does not exist`);
  if (!ownerRow) problems.push(`owner role ${owner} does not exist`);
  for (const row of [login, ownerRow, cat.roles.get(restore)]) {
    if (!row) continue;
    const elevated = ELEVATED.filter((a) => row[a]).map(attributeName);
    if (elevated.length > 0) problems.push(`${row.rolname} has ${elevated.join(', ')}`);
  }
  if (ownerRow?.rolcanlogin) problems.push(`${owner} can log in`);
  if (login?.rolcanlogin && t.status === 'suspended') problems.push(`${t.role} can log in although the tenant is suspended`);
  // The model: owner ∈ login, restore ∈ login; the provisioner ∈ owner only during a setup step
  // (isolation.provisioner-memberships reports that). Nothing else, in either direction.
  const allowed = new Set([`${t.role}>${owner}`, `${t.role}>${restore}`, `${owner}>${PROVISIONER_ROLE}`]);
  const mine = new Set(tenantRoleNames(t));
  for (const m of cat.memberships) {
    if (!mine.has(m.role) && !mine.has(m.member)) continue;
    if (!allowed.has(`${m.role}>${m.member}`)) problems.push(`${m.member} is a member of ${m.role}`);
  }
  const observed = `${t.role}: ${login ? (login.rolcanlogin ? 'LOGIN' : 'NOLOGIN') : 'missing'}; ${owner}: ${ownerRow ? 'present' : 'missing'}`;
  return problems.length === 0 ? pass(`${observed}; no elevated attribute, no foreign membership`) : fail(problems.join('; '), 'the tenant\'s roles are not what the isolation model makes them');
}

export function ownerFinding(t: Tenant, cat: ClusterCatalog): Finding {
  const db = cat.databases.get(t.database);
  if (!db) return fail(`database ${t.database} does not exist`, 'the tenant has no database of its own on its cluster');
  const owner = ownerRoleOf(t.role);
  return db.owner === owner ? pass(`${t.database} owned by ${owner}`) : fail(`${t.database} owned by ${db.owner}`, `expected ${owner}`);
}

export function connectFinding(t: Tenant, cat: ClusterCatalog): Finding {
  const db = cat.databases.get(t.database);
  if (!db) return fail(`database ${t.database} does not exist`);
  const own = new Set(tenantRoleNames(t));
  const foreign = db.connect.filter((g) => !own.has(g));
  const observed = `CONNECT: ${db.connect.join(', ') || 'nobody'}`;
  if (foreign.includes('PUBLIC')) return fail(observed, `PUBLIC can connect to ${t.database}: every role on the cluster passes the privilege check`);
  return foreign.length === 0 ? pass(observed) : fail(observed, `${foreign.join(', ')} can connect to ${t.database}`);
}

export function limitFinding(t: Tenant, cat: ClusterCatalog): Finding {
  const role = cat.roles.get(t.role);
  const db = cat.databases.get(t.database);
  if (!role || !db) return fail(`${!role ? `role ${t.role}` : `database ${t.database}`} does not exist`);
  const observed = `role ${role.rolconnlimit}, database ${db.datconnlimit} (recorded ${t.connectionLimit})`;
  const bad = [role.rolconnlimit, db.datconnlimit].some((n) => n === -1 || n !== t.connectionLimit);
  return bad ? fail(observed, [role.rolconnlimit, db.datconnlimit].includes(-1) ? '-1 means no limit: one tenant can exhaust the cluster\'s connections' : 'the live limit differs from the recorded one') : pass(observed);
}

/** Tenants whose catalog state is mid-operation: their checks are SKIP, not a verdict. */
function unsettled(t: Tenant): Finding | undefined {
  return t.status === 'provisioning' || t.status === 'deleting'
    ? skip(`tenant is ${t.status}: finish it with dforge tenant ${t.status === 'provisioning' ? 'create' : 'delete'} ${t.slug}`)
    : undefined;
}

const REFUSED_BY_HBA = /no pg_hba\.conf entry/;

/**
 * Logs in as `t` (its sealed password) to each of `databases`; PASS only when every attempt is
 * refused by pg_hba or by CONNECT privilege. Anything else could not be measured: it throws.
 */
async function crossLoginFinding(ctx: PostureContext, t: Tenant, databases: readonly string[]): Promise<Finding> {
  const password = await onControl(ctx, (plane) => plane.tenants.password(t.slug));
  const endpoint = await endpointOf(ctx.dir, ctx.config, t.cluster);
  // The control: the same credentials must open the tenant's own database, or a refusal below
  // would prove nothing (a wrong password or an address no line matches is refused too).
  await ctx.limit(async () => {
    const own = await connect(endpoint, {user: t.role, password, database: t.database}).catch((err: unknown) => {
      throw new Error(`the control login of ${t.role} to its own database ${t.database} failed, so a refusal elsewhere would prove nothing: ${err instanceof Error ? err.message : String(err)}`);
    });
    await own.end().catch(() => undefined);
  });
  const outcomes: string[] = [`own database ${t.database}: login succeeded`];
  for (const database of databases) {
    const outcome = await ctx.limit(async () => {
      try {
        const c = await connect(endpoint, {user: t.role, password, database});
        await c.end().catch(() => undefined);
        return undefined;
      } catch (err) {
        const cause = ((err as {cause?: unknown}).cause ?? err) as {code?: string; message?: string};
        if (cause.code === '28000' && REFUSED_BY_HBA.test(cause.message ?? '')) return `${database}: refused by pg_hba (28000)`;
        if (cause.code === '42501') return `${database}: refused by CONNECT privilege (42501)`;
        throw err;
      }
    });
    if (outcome === undefined) return fail(`${t.role} logged in to ${database}`, `tenant ${t.slug}'s own credentials open another database`);
    outcomes.push(outcome);
  }
  return pass(outcomes.join('; '));
}

/** Where a tenant's cross-login goes: the next tenant on its cluster, else the cluster's own databases. */
function crossTargets(ctx: PostureContext, t: Tenant): string[] {
  // Neighbours from every tenant, not only those in scope: `--tenant acme` still tries globex's database.
  const others = ctx.allTenants.filter((o) => o.cluster === t.cluster).filter((o) => o.slug !== t.slug && o.status !== 'provisioning' && o.status !== 'deleting');
  if (others.length > 0) {
    const next = others.find((o) => o.slug > t.slug) ?? others[0]!;
    return [next.database];
  }
  return primaryCluster(ctx.config).name === t.cluster ? ['postgres', CONTROL_DATABASE] : ['postgres'];
}

async function clusterResults(ctx: PostureContext, cluster: string, tenants: readonly Tenant[]): Promise<CheckResult[]> {
  const measured = (async () => {
    const plane = requirePlane(ctx);
    return ctx.limit(() =>
      usingClient(
        () => plane.provisionerOn(cluster),
        async (c) => ({
          catalog: await readClusterCatalog(c, tenants),
          hba: await Promise.all([liveHbaRules(c), hbaFileState(c)]).then(([rules, file]) => ({rules, file}), (error: unknown) => ({error})),
        }),
      ),
    );
  })();
  measured.catch(() => undefined);

  const hba = runCheck(HBA, `cluster:${cluster}`, async () => {
    const live = await measured;
    if ('error' in live.hba) throw live.hba.error;
    return hbaFinding(live.hba.rules, await expectedHbaRules(ctx, cluster), live.hba.file);
  });

  const perTenant = tenants.flatMap((t) => {
    const scope = `tenant:${t.slug}`;
    const settled = unsettled(t);
    const fromCatalog = (def: CheckDefinition, f: (t: Tenant, cat: ClusterCatalog) => Finding): Promise<CheckResult> =>
      runCheck(def, scope, async () => settled ?? f(t, (await measured).catalog));
    return [
      fromCatalog(ROLES, rolesFinding),
      fromCatalog(DATABASE_OWNER, ownerFinding),
      fromCatalog(CONNECT_PRIVILEGE, connectFinding),
      fromCatalog(CONNECTION_LIMIT, limitFinding),
      runCheck(CROSS_LOGIN, scope, async () => {
        if (settled) return settled;
        if (t.status === 'suspended') return skip(`tenant ${t.slug} is suspended: its login role can't log in anywhere`);
        return crossLoginFinding(ctx, t, crossTargets(ctx, t));
      }),
    ];
  });
  return Promise.all([hba, ...perTenant]);
}

export function hbaFinding(live: readonly HbaRule[], expected: readonly HbaRule[] | undefined, file?: HbaFileState): Finding {
  const violations = live.map((r) => ({r, why: policyViolation(r)})).filter((v) => v.why !== undefined);
  const problems = violations.map((v) => `${describeRule(v.r)}: ${v.why}`);
  // The server may be running rules nobody can see any more (reloaded, then the file put back).
  const changedAfterLoad = file && (file.precise ? file.modified.getTime() > file.loaded.getTime() : file.modified.getTime() > file.loaded.getTime() - (file.loaded.getTime() % 1000));
  if (file && changedAfterLoad) {
    problems.push(`pg_hba.conf changed at ${file.modified.toISOString()}, after the server last loaded its configuration at ${file.loaded.toISOString()}: the rules in force can't be read; reload it (SELECT pg_reload_conf() as the superuser) and run posture again`);
  }
  const observed = `${live.length} rules`;
  if (expected === undefined) {
    // External cluster: the file is the operator's; the policy still applies.
    return problems.length > 0 ? fail(problems.join('; '), 'external cluster: its pg_hba.conf breaks dforge\'s policy') : pass(`${observed}; external cluster, policy only (the file is the operator's)`);
  }
  const drift = hbaDrift(live, expected);
  for (const r of drift.extra) if (!violations.some((v) => v.r === r)) problems.push(`${describeRule(r)} is not a line dforge writes`);
  if (drift.reordered) problems.push('the lines are dforge\'s but in another order (first match wins)');
  if (problems.length > 0) return fail(problems.join('; '), 'pg_hba.conf differs from what dforge wrote');
  if (file && !file.precise && file.modified.getTime() + 1000 > file.loaded.getTime()) {
    return warn(`${observed}; pg_hba.conf changed within the second the configuration was loaded (${file.loaded.toISOString()})`, 'whole-second file times can\'t tell which came first: reload (SELECT pg_reload_conf()) and run posture again');
  }
  // A missing reject line lets in what it kept out (the superuser over TCP, for one).
  const missingRejects = drift.missing.filter((r) => r.method === 'reject');
  if (missingRejects.length > 0) return fail(`${observed}; missing ${missingRejects.map(describeRule).join(', ')}`, 'a reject line dforge wrote is gone: what it refused may now get in');
  if (drift.missing.length > 0) return warn(`${observed}; missing ${drift.missing.map(describeRule).join(', ')}`, 'fewer lines than dforge wrote: something may be locked out; every accept line left is one dforge wrote, in its order');
  return pass(`${observed}, exactly as dforge wrote them`);
}

export const isolationProbe: Probe = async (ctx) => {
  const byCluster = new Map<string, Tenant[]>([...clustersOf(ctx.config).keys()].map((name) => [name, []]));
  for (const t of ctx.tenants) byCluster.set(t.cluster, [...(byCluster.get(t.cluster) ?? []), t]);
  // runCheck turns every failure into ERROR, so one unreachable cluster never hides another's results.
  const results = await Promise.all([...byCluster].map(([cluster, tenants]) => clusterResults(ctx, cluster, tenants)));
  return results.flat();
};
