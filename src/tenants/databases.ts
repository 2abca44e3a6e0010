/**
 * A tenant's databases on its cluster: cloned from the tenant template by the provisioner, handed
 * to the tenant's owner role, shaped, and dropped again, without the provisioner ever holding a
 * tenant role's power while tenant code could run.
 *
 * The provisioner connects into a tenant database only as a member of the tenant's owner role, and
 * only to run dforge's own SQL with search_path pinned to pg_catalog: on a database it has just
 * cloned, or after a restore to adopt what the dump created (owners, grants and triggers, none of
 * which evaluates tenant code). Tenant data is loaded only by sessions with the tenant's power.
 */
import type {Client} from 'pg';

import {PROVISIONER_ROLE} from '../control/bootstrap.js';
import {inTransaction} from '../control/keys-store.js';
import {ownerRoleOf, restoreRoleOf, TENANT_TEMPLATE_DATABASE, TenantRoles} from '../postgres/provisioner.js';
import {escapeIdentifier} from '../postgres/sql.js';
import {tenantDatabaseSql} from './module-sql.js';

/** The tenant a set of databases belongs to. */
export interface TenantIdentity {
  readonly role: string;
  readonly database: string;
  readonly connectionLimit: number;
}

/** The restore scratch database: named like the restore role, so pg_hba's sameuser admits that role there alone. */
export const scratchDatabaseOf = (tenant: TenantIdentity): string => restoreRoleOf(tenant.role);

/** Databases a restore kept aside: <db>__pre_restore_<base36 seconds>, or <db>__pr_<...> past 63 bytes. */
export function previousDatabaseName(tenant: TenantIdentity, now: Date): string {
  const ts = Math.floor(now.getTime() / 1000).toString(36);
  const long = `${tenant.database}__pre_restore_${ts}`;
  return long.length <= 63 ? long : `${tenant.database}__pr_${ts}`;
}

export const PREVIOUS_DATABASE_PATTERN = (tenant: TenantIdentity): string => `^${tenant.database}__(pre_restore|pr)_([0-9a-z]+)$`;

/** When a restore kept `name` aside (the time in its name), or undefined if it is not one of the tenant's kept databases. */
export function keptAsideAt(tenant: TenantIdentity, name: string): Date | undefined {
  const ts = new RegExp(PREVIOUS_DATABASE_PATTERN(tenant)).exec(name)?.[2];
  return ts === undefined ? undefined : new Date(Number.parseInt(ts, 36) * 1000);
}

export class TenantDatabases {
  readonly roles: TenantRoles;

  /**
   * `c` is the provisioner's session on the cluster's `postgres` database; `inside` opens a
   * provisioner session on one of the tenant's databases.
   */
  constructor(
    private readonly c: Client,
    private readonly tenant: TenantIdentity,
    private readonly inside: (database: string) => Promise<Client>,
  ) {
    this.roles = new TenantRoles(c);
  }

  async exists(name: string): Promise<boolean> {
    return (await this.c.query('SELECT 1 FROM pg_database WHERE datname = $1', [name])).rowCount === 1;
  }

  /**
   * Clones the tenant template into `name`, closed to connections and to PUBLIC from the first
   * moment, and hands it to the owner role. A rerun after a crash picks up where it stopped.
   */
  async clone(name: string): Promise<void> {
    const db = escapeIdentifier(name);
    const row = await this.c.query<{owner: string}>('SELECT pg_get_userbyid(datdba) AS owner FROM pg_database WHERE datname = $1', [name]);
    if (row.rowCount === 0) {
      await this.c.query(`CREATE DATABASE ${db} TEMPLATE ${escapeIdentifier(TENANT_TEMPLATE_DATABASE)} ALLOW_CONNECTIONS false CONNECTION LIMIT ${this.tenant.connectionLimit}`);
    }
    if (row.rowCount === 0 || row.rows[0]!.owner === PROVISIONER_ROLE) {
      await this.c.query(`REVOKE ALL ON DATABASE ${db} FROM PUBLIC`);
      await this.roles.handOver(name, this.tenant.role);
    }
  }

  /**
   * As the owner role: opens `name` to connections (its own connection limit; PUBLIC lost CONNECT
   * in clone(), so nobody but the owner yet), runs `before` inside it, brings it to dforge's shape,
   * then grants what `grants` says. The provisioner is a member of the owner role for exactly this long.
   */
  async shape<T>(name: string, grants: {connect: readonly string[]; revoke?: readonly string[]}, before?: (inside: Client) => Promise<T>): Promise<T | undefined> {
    const db = escapeIdentifier(name);
    return this.roles.asOwner(this.tenant.role, async () => {
      await this.asOwner(() => this.c.query(`ALTER DATABASE ${db} WITH ALLOW_CONNECTIONS true CONNECTION LIMIT ${this.tenant.connectionLimit}`));
      const inside = await this.inside(name);
      let result: T | undefined;
      try {
        await inside.query('SET search_path = pg_catalog, pg_temp');
        await inside.query(`SET ROLE ${escapeIdentifier(ownerRoleOf(this.tenant.role))}`);
        if (before) result = await before(inside);
        await inTransaction(inside, () => inside.query(tenantDatabaseSql(this.tenant.role)));
      } finally {
        await inside.end().catch(() => undefined);
      }
      await this.asOwner(async () => {
        for (const role of grants.revoke ?? []) await this.c.query(`REVOKE ALL ON DATABASE ${db} FROM ${escapeIdentifier(role)}`);
        for (const role of grants.connect) await this.c.query(`GRANT CONNECT ON DATABASE ${db} TO ${escapeIdentifier(role)}`);
      });
      return result;
    });
  }

  /** Ends its sessions, takes it back from the owner role and drops it. */
  async drop(name: string): Promise<void> {
    if (!(await this.exists(name))) return;
    // A login role removed out of band has no sessions to end; DROP DATABASE still reports any other.
    await this.roles.terminateSessions(this.tenant.role, name).catch(() => undefined);
    await this.roles.takeBack(name, this.tenant.role);
    await this.c.query(`DROP DATABASE IF EXISTS ${escapeIdentifier(name)}`);
  }

  /**
   * The name to keep the live database aside under: the one for `now`, or for the first second
   * after it that is free. A rerun in the same second as a killed run that kept one aside would
   * otherwise collide with it.
   */
  async previousName(now: Date): Promise<string> {
    const taken = new Set(await this.all());
    for (let t = now.getTime(); ; t += 1000) {
      const name = previousDatabaseName(this.tenant, new Date(t));
      if (!taken.has(name)) return name;
    }
  }

  /** Every database of this tenant: live, restore scratch, kept pre-restore copies. */
  async all(): Promise<string[]> {
    const rows = await this.c.query<{datname: string}>(
      `SELECT datname FROM pg_database
        WHERE (datname = $1 OR datname = $2 OR datname ~ $3)
          AND pg_get_userbyid(datdba) IN ($4, $5, $6)`,
      [this.tenant.database, scratchDatabaseOf(this.tenant), PREVIOUS_DATABASE_PATTERN(this.tenant), ownerRoleOf(this.tenant.role), this.tenant.role, PROVISIONER_ROLE],
    );
    return rows.rows.map((r) => r.datname);
  }

  private async asOwner<T>(fn: () => Promise<T>): Promise<T> {
    await this.c.query(`SET ROLE ${escapeIdentifier(ownerRoleOf(this.tenant.role))}`);
    try {
      return await fn();
    } finally {
      await this.c.query('RESET ROLE');
    }
  }
}
