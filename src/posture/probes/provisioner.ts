import type {Client} from 'pg';

import {PROVISIONER_ROLE} from '../../control/bootstrap.js';
import {clustersOf} from '../../control/clusters.js';
import {defineCheck, fail, pass, runCheck, type CheckDefinition, type CheckResult, type Finding} from '../check.js';
import {requirePlane, usingClient, type PostureContext, type Probe} from '../context.js';

/**
 * The provisioner's power, live on each cluster: it must stay a role that can create databases
 * and call the provisioning interface, and nothing more. A membership in a tenant role (a
 * join_tenant_owner that never left), a predefined pg_* role or any other role is a way around
 * the model, whatever granted it.
 */

const ATTRIBUTES = defineCheck({
  id: 'isolation.provisioner-attributes',
  title: 'Provisioner is not a superuser and has no CREATEROLE, BYPASSRLS or REPLICATION',
  area: 'isolation',
  controls: ['CIS PostgreSQL 4.3'],
  severity: 'critical',
  expected: `${PROVISIONER_ROLE}: LOGIN, CREATEDB; not SUPERUSER, CREATEROLE, BYPASSRLS or REPLICATION`,
  method: 'pg_roles on a provisioner session to the cluster',
  fix: 'dforge db init (embedded) or dforge install (compose / Kubernetes) re-runs the bootstrap, which resets the provisioner\'s attributes',
});

const MEMBERSHIPS = defineCheck({
  id: 'isolation.provisioner-memberships',
  title: 'Provisioner is a member of no role',
  area: 'isolation',
  controls: ['CIS PostgreSQL 4.3'],
  severity: 'critical',
  expected: `${PROVISIONER_ROLE} is a member of no predefined pg_* role, no tenant role (login, owner or restore) and no other role`,
  method: 'pg_auth_members (direct memberships) on a provisioner session to the cluster',
  fix: 'dforge db init (embedded) or dforge install (compose / Kubernetes) re-runs the bootstrap, which revokes every membership of the provisioner',
});

export const PROVISIONER_CHECKS: readonly CheckDefinition[] = [ATTRIBUTES, MEMBERSHIPS];

interface Attributes {
  rolsuper: boolean;
  rolcreaterole: boolean;
  rolbypassrls: boolean;
  rolreplication: boolean;
}

const TENANT_ROLE = /^tenant_[a-z][a-z0-9_]*$/;

export function attributesFinding(row: Attributes | undefined): Finding {
  if (!row) return fail(`role ${PROVISIONER_ROLE} not found`);
  const held = (['rolsuper', 'rolcreaterole', 'rolbypassrls', 'rolreplication'] as const).filter((a) => row[a]).map((a) => a.slice(3).toUpperCase());
  return held.length === 0 ? pass('no SUPERUSER, CREATEROLE, BYPASSRLS or REPLICATION') : fail(held.join(', '), `the provisioner holds ${held.join(', ')}: it could step outside the provisioning interface`);
}

export function membershipsFinding(roles: readonly string[]): Finding {
  if (roles.length === 0) return pass('member of no role');
  const kind = (r: string): string => (r.startsWith('pg_') ? 'predefined' : TENANT_ROLE.test(r) ? 'tenant' : 'other');
  const described = roles.map((r) => `${r} (${kind(r)})`).join(', ');
  const lingering = roles.filter((r) => kind(r) === 'tenant' && r.endsWith('__owner'));
  const reason = lingering.length > 0
    ? `a setup step's join_tenant_owner did not leave (${lingering.join(', ')}): the provisioner has those tenants' power`
    : 'the provisioner holds more than the provisioning interface gives it';
  return fail(`member of ${described}`, reason);
}

async function measure(c: Client): Promise<{attributes: Attributes | undefined; memberOf: string[]}> {
  const attributes = await c.query<Attributes>('SELECT rolsuper, rolcreaterole, rolbypassrls, rolreplication FROM pg_catalog.pg_roles WHERE rolname = $1', [PROVISIONER_ROLE]);
  const memberOf = await c.query<{role: string}>(
    `SELECT g.rolname AS role FROM pg_catalog.pg_auth_members a JOIN pg_catalog.pg_roles g ON g.oid = a.roleid
      WHERE a.member = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = $1) ORDER BY 1`,
    [PROVISIONER_ROLE],
  );
  return {attributes: attributes.rows[0], memberOf: memberOf.rows.map((r) => r.role)};
}

async function clusterResults(ctx: PostureContext, cluster: string): Promise<CheckResult[]> {
  const measured = (async () => {
    const plane = requirePlane(ctx);
    return ctx.limit(() => usingClient(() => plane.provisionerOn(cluster), measure));
  })();
  measured.catch(() => undefined);
  const scope = `cluster:${cluster}`;
  return Promise.all([
    runCheck(ATTRIBUTES, scope, async () => attributesFinding((await measured).attributes)),
    runCheck(MEMBERSHIPS, scope, async () => membershipsFinding((await measured).memberOf)),
  ]);
}

export const provisionerProbe: Probe = async (ctx) => (await Promise.all([...clustersOf(ctx.config).keys()].map((cluster) => clusterResults(ctx, cluster)))).flat();
