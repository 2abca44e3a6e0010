import {promises as fs} from 'node:fs';
import path from 'node:path';

import {recordOps} from '../audit/record.js';
import {CONTROL_DATABASE, PROVISIONER_ROLE} from '../control/bootstrap.js';
import {caFileOf, clustersOf, endpointOf, primaryCluster, provisionerSecret} from '../control/clusters.js';
import type {ControlPlane} from '../control/plane.js';
import type {ClusterEndpoint} from '../postgres/connect.js';
import {UserError} from '../errors.js';
import {appAddress} from '../runtime/tenant-catalog.js';
import {writeFileAtomic} from '../state/atomic-file.js';
import type {Tenant} from './registry.js';
import {pgpassField} from '../postgres/pgpass.js';

/**
 * How an operator or an app on this host connects to a tenant's database. The address is the one
 * reachable from the host dforge runs on (what `endpointOf` connects to); on compose the app inside
 * the stack uses `app` instead, the address the tenant catalog gives it.
 */
export interface TenantConnection {
  readonly slug: string;
  readonly cluster: string;
  readonly host: string;
  readonly port: number;
  readonly database: string;
  readonly role: string;
  readonly sslmode: 'verify-full';
  /** The CA file the server certificate is verified against. */
  readonly sslrootcert: string;
  /** Where the app reaches the database when that differs from `host`/`port` (inside the compose network or the namespace). */
  readonly app?: {readonly host: string; readonly port: number};
}

/** The explicit ways to be handed the password. */
export type RevealForm = 'uri' | 'env' | 'pgpass';

/**
 * The tenant's connection facts, without its password. Only an active tenant has credentials to
 * hand out: a suspended role cannot log in, and a tenant mid-create or mid-delete may have none.
 */
export async function tenantConnection(plane: ControlPlane, slug: string): Promise<TenantConnection> {
  const tenant = usable(await plane.tenants.get(slug));
  const dir = plane.keys.dir;
  const cluster = clustersOf(plane.config).get(tenant.cluster)?.cluster;
  if (!cluster) throw new UserError(`tenant ${tenant.slug} is on cluster ${tenant.cluster}, which ${dir.configFile} no longer declares`, {nextSteps: [`Declare cluster ${tenant.cluster} in dforge.yaml again, or restore the tenant elsewhere (dforge restore --help).`]});
  const endpoint = await endpointOf(dir, plane.config, tenant.cluster);
  const app = appAddress(plane.config, cluster);
  return {
    slug: tenant.slug,
    cluster: tenant.cluster,
    host: endpoint.host,
    port: endpoint.port,
    database: tenant.database,
    role: tenant.role,
    sslmode: 'verify-full',
    sslrootcert: caFileOf(dir, cluster),
    ...(app && (app.host !== endpoint.host || app.port !== endpoint.port) ? {app} : {}),
  };
}

/**
 * The tenant's password, for a form the operator asked for by name. The reveal is written to the
 * ops log first (the form, never the secret), so no password leaves dforge unrecorded.
 */
export async function revealTenantPassword(plane: ControlPlane, connection: TenantConnection, form: RevealForm | 'psql'): Promise<string> {
  await recordOps(plane, {action: form === 'psql' ? 'tenant.psql' : 'tenant.credentials', target: `tenant:${connection.slug}`, outcome: 'ok', details: {form}});
  return plane.tenants.password(connection.slug);
}

function usable(tenant: Tenant): Tenant {
  switch (tenant.status) {
    case 'active':
      return tenant;
    case 'suspended':
      throw new UserError(`tenant ${tenant.slug} is suspended: its role cannot log in, so there are no credentials to use`, {
        nextSteps: [`Resume it first: dforge tenant resume ${tenant.slug}`],
      });
    case 'provisioning':
      throw new UserError(`tenant ${tenant.slug} is still provisioning: an earlier create did not finish`, {nextSteps: [`Finish it: dforge tenant create ${tenant.slug}`]});
    case 'deleting':
      throw new UserError(`tenant ${tenant.slug} is being deleted: an earlier delete did not finish`, {nextSteps: [`Finish it: dforge tenant delete ${tenant.slug} --confirm ${tenant.slug}`]});
  }
}

/** A libpq connection URI with the password, percent-encoded, and the TLS settings. */
export function connectionUri(c: TenantConnection, password: string): string {
  const host = c.host.includes(':') ? `[${c.host}]` : c.host;
  const params = new URLSearchParams({sslmode: c.sslmode, sslrootcert: c.sslrootcert});
  return `postgresql://${encodeURIComponent(c.role)}:${encodeURIComponent(password)}@${host}:${c.port}/${encodeURIComponent(c.database)}?${params.toString().replaceAll('+', '%20')}`;
}

/** The libpq environment of a connection, as the variables libpq reads. */
export function libpqVariables(c: TenantConnection, password: string): Array<[string, string]> {
  return [
    ['PGHOST', c.host],
    ['PGPORT', String(c.port)],
    ['PGDATABASE', c.database],
    ['PGUSER', c.role],
    ['PGPASSWORD', password],
    ['PGSSLMODE', c.sslmode],
    ['PGSSLROOTCERT', c.sslrootcert],
  ];
}

/** `export NAME='value'` lines, single-quoted so `eval` or `.` never expands anything in a value. */
export function shellExports(variables: ReadonlyArray<[string, string]>): string {
  return variables.map(([name, value]) => `export ${name}='${value.replaceAll("'", `'\\''`)}'\n`).join('');
}

/**
 * Adds the tenant's line to a pgpass file, or replaces the line for the same host, port, database
 * and role, keeping every other line. The file is written 0600; an existing file others can read
 * (which libpq itself ignores) or that is not a plain file of this user is refused, untouched.
 */
export async function writePgpass(file: string, c: TenantConnection, password: string): Promise<{file: string; replaced: boolean}> {
  const target = path.resolve(file);
  const st = await fs.lstat(target).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw new UserError(`cannot read ${target}: ${err.code ?? err.message}`, {nextSteps: ['Name a pgpass file this user can read and write, e.g. ~/.pgpass.']});
  });
  const uid = process.geteuid?.();
  if (st) {
    const mode = (st.mode & 0o777).toString(8).padStart(4, '0');
    const problem = !st.isFile() ? 'not a plain file (a link, a directory or a device)' : uid !== undefined && st.uid !== uid ? `owned by uid ${st.uid}, not by this user (uid ${uid})` : (st.mode & 0o077) !== 0 ? `readable or writable by group or others (mode ${mode})` : undefined;
    if (problem) {
      throw new UserError(`${target} is ${problem}, so dforge will not write a password into it`, {
        nextSteps: st.isFile() && (st.mode & 0o077) !== 0 && problem.startsWith('readable') ? [`Run: chmod 600 ${target}, then re-run; consider the passwords already in it exposed.`] : ['Name another file with --pgpass, e.g. ~/.pgpass.'],
      });
    }
  }
  const key = `${[c.host, String(c.port), c.database, c.role].map(pgpassField).join(':')}:`;
  const lines = st ? (await fs.readFile(target, 'utf8')).split('\n') : [];
  if (lines.at(-1) === '') lines.pop();
  const line = `${key}${pgpassField(password)}`;
  const at = lines.findIndex((l) => l.startsWith(key));
  if (at >= 0) lines[at] = line;
  else lines.push(line);
  await writeFileAtomic(target, `${lines.join('\n')}\n`, {mode: 0o600});
  return {file: target, replaced: at >= 0};
}

/** Who a `db psql` session logs in as, where, and with which password. */
export interface PsqlTarget {
  readonly endpoint: ClusterEndpoint;
  readonly user: string;
  readonly database: string;
  readonly password: string;
}

/**
 * The session `db psql` opens: as the tenant's own role on its own database, or, without a tenant,
 * as the provisioner on dforge_control. The provisioner, not the superuser: it is the role dforge
 * itself works as there, it can read the registry and the ops log, and it cannot bypass the
 * provisioning interface; the superuser only logs in on the cluster's private unix socket. Either
 * session is written to the ops log before it opens.
 */
export async function psqlTarget(plane: ControlPlane, tenant?: string): Promise<PsqlTarget> {
  const dir = plane.keys.dir;
  if (tenant !== undefined) {
    const connection = await tenantConnection(plane, tenant);
    const password = await revealTenantPassword(plane, connection, 'psql');
    return {endpoint: await endpointOf(dir, plane.config, connection.cluster), user: connection.role, database: connection.database, password};
  }
  const cluster = primaryCluster(plane.config).name;
  await recordOps(plane, {action: 'db.psql', target: `cluster:${cluster}`, outcome: 'ok', details: {user: PROVISIONER_ROLE, database: CONTROL_DATABASE}});
  const password = (await plane.keys.sealed.get(provisionerSecret(cluster))).toString('utf8');
  return {endpoint: await endpointOf(dir, plane.config, cluster), user: PROVISIONER_ROLE, database: CONTROL_DATABASE, password};
}
