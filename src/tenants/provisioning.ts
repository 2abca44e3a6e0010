import type {Client} from 'pg';

import {scramVerifier} from '../postgres/scram.js';
import {crashPoint} from '../state/crash-point.js';
import {TenantDatabases} from './databases.js';
import type {Tenant} from './registry.js';

/** The live state of a tenant's role and database on its cluster (`tenant show`). */
export interface TenantClusterState {
  readonly roleCanLogin: boolean | null;
  readonly databaseExists: boolean;
  readonly publicCanConnect: boolean | null;
}

/**
 * What a tenant is on its cluster: its login and owner roles and its databases, created, changed
 * and dropped through provisioner sessions (the provisioning interface; no superuser session). Each
 * step checks what exists first, so a rerun finishes a crashed operation.
 */
export class TenantProvisioning {
  constructor(
    /** A provisioner connection to a database of a cluster (`postgres` unless named). */
    private readonly provisionerOn: (cluster: string, database?: string) => Promise<Client>,
  ) {}

  /**
   * Roles, then the database cloned from the tenant template, closed to PUBLIC from the start,
   * handed to the owner role and shaped; the login role gets CONNECT last.
   */
  async provision(tenant: Tenant, password: string): Promise<void> {
    await this.onCluster(tenant.cluster, async (c) => {
      const databases = this.databasesOf(c, tenant);
      await databases.roles.ensure(tenant.role, scramVerifier(password), tenant.connectionLimit);
      crashPoint('tenant.create.role');
      await databases.clone(tenant.database);
      crashPoint('tenant.create.database');
      await databases.shape(tenant.database, {connect: [tenant.role]});
      crashPoint('tenant.create.shaped');
    });
  }

  /** Re-creates the tenant's roles if the cluster lost them; false when both were there. */
  async restoreRoles(tenant: Tenant, password: string): Promise<boolean> {
    return this.onCluster(tenant.cluster, async (c) => {
      const present = await c.query<{n: string}>('SELECT count(*) AS n FROM pg_roles WHERE rolname IN ($1, $2)', [tenant.role, `${tenant.role}__owner`]);
      if (Number(present.rows[0]!.n) === 2) return false;
      await this.databasesOf(c, tenant).roles.ensure(tenant.role, scramVerifier(password), tenant.connectionLimit, tenant.status !== 'suspended');
      return true;
    });
  }

  async state(tenant: Tenant): Promise<TenantClusterState> {
    return this.onCluster(tenant.cluster, async (c) => {
      const role = await c.query<{rolcanlogin: boolean}>('SELECT rolcanlogin FROM pg_roles WHERE rolname = $1', [tenant.role]);
      const db = await c.query<{public_connect: boolean}>("SELECT has_database_privilege('public', oid, 'CONNECT') AS public_connect FROM pg_database WHERE datname = $1", [tenant.database]);
      return {roleCanLogin: role.rows[0]?.rolcanlogin ?? null, databaseExists: db.rowCount === 1, publicCanConnect: db.rows[0]?.public_connect ?? null};
    });
  }

  /** NOLOGIN, then ends every session of the tenant's role. */
  async suspend(tenant: Tenant): Promise<void> {
    await this.onCluster(tenant.cluster, async (c) => {
      const {roles} = this.databasesOf(c, tenant);
      await roles.setLogin(tenant.role, false);
      await roles.terminateSessions(tenant.role);
    });
  }

  async resume(tenant: Tenant): Promise<void> {
    await this.onCluster(tenant.cluster, (c) => this.databasesOf(c, tenant).roles.setLogin(tenant.role, true));
  }

  async setPassword(tenant: Tenant, password: string): Promise<void> {
    await this.onCluster(tenant.cluster, (c) => this.databasesOf(c, tenant).roles.setPassword(tenant.role, scramVerifier(password)));
  }

  /** Drops the tenant's databases and roles. */
  async deprovision(tenant: Tenant): Promise<void> {
    await this.onCluster(tenant.cluster, async (c) => {
      const databases = this.databasesOf(c, tenant);
      const roleExists = (await c.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [tenant.role])).rowCount === 1;
      if (roleExists) await databases.roles.setLogin(tenant.role, false);
      // Its live database and any it has besides (kept pre-restore copies, a killed restore's scratch).
      for (const name of await databases.all()) await databases.drop(name);
      await databases.roles.dropRoles(tenant.role);
    });
  }

  /**
   * A provisioner session on the tenant's cluster with the tenant's databases and roles (restore
   * and prune use this); `fn` must never run tenant code on it.
   */
  async onTenantCluster<T>(tenant: Tenant, fn: (databases: TenantDatabases, tenant: Tenant) => Promise<T>): Promise<T> {
    return this.onCluster(tenant.cluster, (c) => fn(this.databasesOf(c, tenant), tenant));
  }

  private databasesOf(c: Client, tenant: Tenant): TenantDatabases {
    return new TenantDatabases(c, tenant, (database) => this.provisionerOn(tenant.cluster, database));
  }

  private async onCluster<T>(cluster: string, fn: (c: Client) => Promise<T>): Promise<T> {
    const client = await this.provisionerOn(cluster);
    try {
      return await fn(client);
    } finally {
      await client.end().catch(() => undefined);
    }
  }
}
