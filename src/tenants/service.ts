import type {Client} from 'pg';

import type {OpsLog} from '../audit/ops-log.js';
import {LockedError, UsageError, UserError} from '../errors.js';
import type {DataKeys} from '../secrets/data-keys.js';
import type {KeyEncryptionService} from '../secrets/master-key.js';
import {crashPoint} from '../state/crash-point.js';
import type {TenantDatabases} from './databases.js';
import {defaultRegion, requestedRegion, type Placement, type Regions} from './placement.js';
import {TenantProvisioning} from './provisioning.js';
import {TenantRegistry, type Tenant} from './registry.js';
import {SealedTenantPasswords} from './sealed-passwords.js';
import {validateSlug} from './slug.js';

/** What the tenant service needs; tests hand in real clusters. */
export interface TenantDeps {
  /** The provisioner's connection to dforge_control. */
  readonly control: Client;
  /** Region name → its cluster names, in the order dforge.yaml declares them. */
  readonly regions: Regions;
  /** Cluster name → its capacity (dforge.yaml `maxTenants`); a cluster not listed has no limit. */
  readonly maxTenants?: Readonly<Record<string, number>>;
  /** A provisioner connection to a database of a cluster (`postgres` unless named). */
  provisionerOn(cluster: string, database?: string): Promise<Client>;
  readonly kek: KeyEncryptionService;
  readonly dataKeys: DataKeys;
  /** The install's keyed ops log, written on every operation. */
  readonly opsLog: OpsLog;
  readonly clock?: () => Date;
  readonly connectionLimit?: number;
}

/**
 * Tenant lifecycle on real PostgreSQL: one database and one login role per tenant, isolation
 * enforced by REVOKE CONNECT, the pg_hba `sameuser` rule and a connection limit. This class is the
 * order of each operation; the registry rows are registry.ts (placement rules placement.ts), the
 * sealed passwords sealed-passwords.ts, the roles and databases on the cluster provisioning.ts.
 *
 * Every operation holds a per-tenant advisory lock in dforge_control (a concurrent operator gets
 * exit 5), records its state in the registry before touching the cluster, and is idempotent, so
 * rerunning it after a crash finishes the job. Every operation is written to the ops log.
 */
export class TenantService {
  private readonly registry: TenantRegistry;
  private readonly passwords: SealedTenantPasswords;
  private readonly provisioning: TenantProvisioning;

  constructor(private readonly deps: TenantDeps) {
    this.registry = new TenantRegistry(deps.control, deps.regions, deps.maxTenants, deps.connectionLimit);
    this.passwords = new SealedTenantPasswords(deps.control, deps.kek);
    this.provisioning = new TenantProvisioning((cluster, database) => deps.provisionerOn(cluster, database));
  }

  private now(): Date {
    return (this.deps.clock ?? (() => new Date()))();
  }

  /**
   * Creates (or finishes creating) a tenant. Without `cluster`, placement picks the cluster of the
   * region with the most free capacity; `cluster` alone implies its region. `placement` says where
   * the database is and why.
   */
  async create(slugInput: string, options: {region?: string; cluster?: string; ifNotExists?: boolean} = {}): Promise<{tenant: Tenant; created: boolean; placement: Placement}> {
    const slug = validateSlug(slugInput);
    const region = requestedRegion(this.deps.regions, slug, options);
    return this.locked(slug, 'tenant.create', async () => {
      let tenant = await this.registry.find(slug);
      let placement: Placement | undefined;
      if (tenant && tenant.status !== 'provisioning') {
        if (options.ifNotExists && tenant.status !== 'deleting') return {tenant, created: false, placement: await this.registry.placementOf(tenant, 'already exists')};
        throw new UserError(`tenant ${slug} already exists (${tenant.status})`, {
          nextSteps: tenant.status === 'deleting' ? [`Finish its deletion first: dforge tenant delete ${slug} --confirm ${slug}`] : [`See it with: dforge tenant show ${slug}`],
        });
      }
      if (tenant && ((region !== undefined && tenant.region !== region) || (options.cluster !== undefined && tenant.cluster !== options.cluster))) {
        throw new UserError(`tenant ${slug} is half-provisioned on cluster ${tenant.cluster} in region ${tenant.region}, not ${options.cluster ? `cluster ${options.cluster}` : `region ${region}`}`, {
          nextSteps: [`Finish it with: dforge tenant create ${slug} --cluster ${tenant.cluster}`, `Or remove it with: dforge tenant delete ${slug} --confirm ${slug}`],
        });
      }
      if (tenant) {
        placement = await this.registry.placementOf(tenant, 'registered by an earlier run that did not finish');
      } else {
        ({tenant, placement} = await this.registry.register(slug, region ?? defaultRegion(this.deps.regions, slug), options.cluster));
        crashPoint('tenant.create.registered');
      }
      const password = await this.passwords.get(slug, true);
      await this.provisioning.provision(tenant, password);
      await this.deps.dataKeys.create(slug);
      crashPoint('tenant.create.data-key');
      await this.registry.setStatus(slug, 'active');
      crashPoint('tenant.create.active');
      return {tenant: {...tenant, status: 'active'}, created: true, placement};
    });
  }

  /** One tenant's registry entry; an error that says how to list tenants if there is none. */
  async get(slugInput: string): Promise<Tenant> {
    return this.registry.require(validateSlug(slugInput));
  }

  /** The tenant role's password, unsealed: for libpq tools that must connect as the tenant. */
  async password(slugInput: string): Promise<string> {
    return this.passwords.get(validateSlug(slugInput), false);
  }

  /** A fingerprint of the sealed password of each of `slugs`, changing with the password or its wrapping (see SealedTenantPasswords.stamps). */
  async passwordStamps(slugs: readonly string[]): Promise<Map<string, string>> {
    return this.passwords.stamps(slugs);
  }

  /** One digest over the password stamps of `slugs` (see SealedTenantPasswords.stampsDigest). */
  async passwordStampsDigest(slugs: readonly string[]): Promise<string> {
    return this.passwords.stampsDigest(slugs);
  }

  /** Runs `fn` under the tenant's lock, recorded in the ops log as `action` (restore uses this). */
  async withTenantLock<T>(slugInput: string, action: string, fn: () => Promise<T>): Promise<T> {
    return this.locked(validateSlug(slugInput), action, fn);
  }

  /**
   * Re-creates the tenant's role from its sealed password if the cluster lost it (a rebuilt
   * cluster after a disaster); the database comes back with the restore.
   */
  async ensureRole(slugInput: string): Promise<boolean> {
    const tenant = await this.registry.require(validateSlug(slugInput));
    const password = await this.passwords.get(tenant.slug, false);
    return this.provisioning.restoreRoles(tenant, password);
  }

  /**
   * A provisioner session on the tenant's cluster with the tenant's databases and roles (restore
   * and prune use this); `fn` must never run tenant code on it.
   */
  async onTenantCluster<T>(slugInput: string, fn: (databases: TenantDatabases, tenant: Tenant) => Promise<T>): Promise<T> {
    return this.provisioning.onTenantCluster(await this.registry.require(validateSlug(slugInput)), fn);
  }

  async list(): Promise<Tenant[]> {
    return this.registry.list();
  }

  async show(slugInput: string): Promise<Tenant & {dataKeyVersions: number[]; activeDataKeyVersion: number | null; roleCanLogin: boolean | null; databaseExists: boolean; publicCanConnect: boolean | null}> {
    const tenant = await this.registry.require(validateSlug(slugInput));
    const keys = await this.deps.control.query<{version: number; state: string}>('SELECT version, state FROM data_keys WHERE owner = $1 ORDER BY version', [tenant.slug]);
    const live = await this.provisioning.state(tenant);
    return {
      ...tenant,
      dataKeyVersions: keys.rows.map((k) => k.version),
      activeDataKeyVersion: keys.rows.find((k) => k.state === 'active')?.version ?? null,
      ...live,
    };
  }

  /** NOLOGIN, then ends every session of the tenant's role. */
  async suspend(slugInput: string): Promise<Tenant> {
    const slug = validateSlug(slugInput);
    return this.locked(slug, 'tenant.suspend', async () => {
      const tenant = await this.registry.requireUsable(slug);
      await this.provisioning.suspend(tenant);
      await this.registry.setStatus(slug, 'suspended');
      return {...tenant, status: 'suspended'};
    });
  }

  async resume(slugInput: string): Promise<Tenant> {
    const slug = validateSlug(slugInput);
    return this.locked(slug, 'tenant.resume', async () => {
      const tenant = await this.registry.requireUsable(slug);
      await this.provisioning.resume(tenant);
      await this.registry.setStatus(slug, 'active');
      return {...tenant, status: 'active'};
    });
  }

  /**
   * A new password, sealed before it is applied: the pending copy is stored first, then set on
   * the role, then promoted. A crash in between is finished by the next rotation, and the live
   * password is never lost. The old password stops working at once.
   */
  async rotateCredentials(slugInput: string): Promise<{slug: string; rotatedAt: string}> {
    const slug = validateSlug(slugInput);
    return this.locked(slug, 'tenant.rotate-credentials', async () => {
      const tenant = await this.registry.requireUsable(slug);
      const password = await this.passwords.pending(slug);
      await this.provisioning.setPassword(tenant, password);
      const rotatedAt = this.now().toISOString();
      await this.passwords.promote(slug, rotatedAt);
      return {slug, rotatedAt};
    });
  }

  /**
   * Drops the tenant's databases and roles (through the provisioning interface; no superuser
   * session), then removes the registry entry. With `shred`, every data-key version is
   * destroyed too, which makes all of the tenant's backups unreadable.
   */
  async delete(slugInput: string, options: {confirm: string; shred?: boolean}): Promise<{slug: string; shredded: number | null}> {
    const slug = validateSlug(slugInput);
    if (options.confirm !== slug) {
      throw new UsageError(`refusing to delete tenant ${slug}: --confirm must repeat the slug exactly`, {nextSteps: [`Run: dforge tenant delete ${slug} --confirm ${slug}`]});
    }
    return this.locked(slug, options.shred ? 'tenant.delete+shred' : 'tenant.delete', async () => {
      const tenant = await this.registry.require(slug);
      await this.registry.setStatus(slug, 'deleting');
      await this.provisioning.deprovision(tenant);
      const shredded = options.shred ? await this.deps.dataKeys.shred(slug) : null;
      await this.registry.remove(slug);
      return {slug, shredded};
    });
  }

  /** Per-tenant advisory lock (session level, on the control connection) plus the ops-log record. */
  private async locked<T>(slug: string, action: string, fn: () => Promise<T>): Promise<T> {
    const got = await this.deps.control.query<{ok: boolean}>("SELECT pg_try_advisory_lock(hashtext('dforge.tenant'), hashtext($1)) AS ok", [slug]);
    if (!got.rows[0]?.ok) {
      throw new LockedError(`another dforge run is working on tenant ${slug}`, {
        nextSteps: ['Wait for it to finish, then re-run. Runs in progress are in pg_locks of dforge_control.'],
        data: {lock: `tenant:${slug}`},
      });
    }
    try {
      const result = await fn();
      await this.deps.opsLog.append(this.deps.control, {action, target: `tenant:${slug}`, outcome: 'ok'}, this.now());
      return result;
    } catch (err) {
      await this.deps.opsLog.append(this.deps.control, {action, target: `tenant:${slug}`, outcome: 'failed', details: {error: err instanceof Error ? err.message : String(err)}}, this.now()).catch(() => undefined);
      throw err;
    } finally {
      await this.deps.control.query("SELECT pg_advisory_unlock(hashtext('dforge.tenant'), hashtext($1))", [slug]);
    }
  }
}
