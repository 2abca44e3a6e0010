import type {DforgeConfig} from '../../config/schema.js';
import {endpointOf} from '../../control/clusters.js';
import {UserError} from '../../errors.js';
import {DEFAULT_MIN_MAJOR} from '../../postgres/binaries.js';
import {connect} from '../../postgres/connect.js';
import {combine, type CheckOutcome, type PreflightCheck} from '../check.js';

/**
 * The admin credentials of an external cluster, as sealed under its `admin.secret`: a JSON object
 * {"user": "...", "password": "..."} (the config names the secret, never the role or password).
 */
export function parseAdminCredentials(sealed: Buffer, secret: string): {user: string; password: string} {
  let value: unknown;
  try {
    value = JSON.parse(sealed.toString('utf8'));
  } catch {
    value = undefined;
  }
  const {user, password} = (value ?? {}) as {user?: unknown; password?: unknown};
  if (typeof user === 'string' && user && typeof password === 'string' && password) return {user, password};
  throw new UserError(`sealed secret ${secret} is not admin credentials`, {nextSteps: [`Seal it again as a JSON object {"user": "<role>", "password": "<password>"} (dforge install asks for it).`]});
}

interface RoleFacts {
  server_version_num: string;
  server_version: string;
  rolsuper: boolean;
  rolcreatedb: boolean;
  rolcreaterole: boolean;
  tls: string | null;
}

/**
 * An external cluster is usable when dforge reaches it over verified TLS 1.3 with the sealed
 * admin credentials, it runs PostgreSQL 13 or newer, and the admin role may create databases and
 * roles (what bootstrapping the provisioner needs). A superuser works but is more than needed.
 */
export function externalPostgresCheck(config: DforgeConfig, name: string, cluster: {host: string; port: number; database: string; admin: {secret: string}}): PreflightCheck {
  return {
    id: `postgres.external.${name}`,
    title: `External PostgreSQL ${name}`,
    async run(ctx, signal): Promise<CheckOutcome> {
      const where = `${cluster.host}:${cluster.port}`;
      const keys = await ctx.keys();
      if (!(await keys.sealed.has(cluster.admin.secret))) {
        return {
          status: 'fail',
          detail: `${where}: no admin credentials (sealed secret ${cluster.admin.secret} is missing)`,
          remedy: `Seal the admin role of ${name} as secret ${cluster.admin.secret}, a JSON object {"user": ..., "password": ...}; dforge install asks for it.`,
        };
      }
      const credentials = parseAdminCredentials(await keys.sealed.get(cluster.admin.secret), cluster.admin.secret);
      const client = await connect(await endpointOf(ctx.dir, config, name), {...credentials, database: cluster.database});
      const abort = (): void => void client.end().catch(() => undefined);
      signal.addEventListener('abort', abort, {once: true});
      let facts: RoleFacts;
      try {
        const result = await client.query<RoleFacts>(
          `SELECT current_setting('server_version_num') AS server_version_num, current_setting('server_version') AS server_version,
                  r.rolsuper, r.rolcreatedb, r.rolcreaterole, s.version AS tls
             FROM pg_roles r LEFT JOIN pg_stat_ssl s ON s.pid = pg_backend_pid()
            WHERE r.rolname = current_user`,
        );
        facts = result.rows[0]!;
      } finally {
        signal.removeEventListener('abort', abort);
        await client.end().catch(() => undefined);
      }
      const major = Math.floor(Number(facts.server_version_num) / 10_000);
      const privileges = [facts.rolsuper ? 'SUPERUSER' : '', facts.rolcreatedb ? 'CREATEDB' : '', facts.rolcreaterole ? 'CREATEROLE' : ''].filter(Boolean);
      const who = `${where}: PostgreSQL ${facts.server_version.split(' ')[0]} over ${facts.tls ?? 'TLS'}`;
      const findings: CheckOutcome[] = [
        major >= DEFAULT_MIN_MAJOR
          ? {status: 'pass', detail: who}
          : {status: 'fail', detail: `${who}, older than ${DEFAULT_MIN_MAJOR}`, remedy: `Upgrade ${name} to PostgreSQL ${DEFAULT_MIN_MAJOR} or newer.`},
      ];
      const role = `role ${credentials.user} has ${privileges.join(', ') || 'neither CREATEDB nor CREATEROLE'}`;
      if (facts.rolsuper) {
        findings.push({status: 'warn', detail: role, remedy: `dforge needs only CREATEDB and CREATEROLE: seal a dedicated role (CREATE ROLE ... LOGIN CREATEDB CREATEROLE) as ${cluster.admin.secret}.`});
      } else if (facts.rolcreatedb && facts.rolcreaterole) {
        findings.push({status: 'pass', detail: role});
      } else {
        findings.push({status: 'fail', detail: role, remedy: `As a superuser of ${name}: ALTER ROLE ${credentials.user} CREATEDB CREATEROLE; or seal a role that has both as ${cluster.admin.secret}.`});
      }
      return combine(findings);
    },
  };
}
