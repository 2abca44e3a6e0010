import type {Client} from 'pg';

import type {OpsLog} from '../audit/ops-log.js';
import {tenantPasswordContext} from '../control/keys-store.js';
import {LockedError, UsageError, UserError} from '../errors.js';
import {randomPassword, scramVerifier} from '../postgres/scram.js';
import {requirePlacedInRegion} from '../residency/misplaced.js';
import {CrossRegionError} from '../residency/policy.js';
import {crashPoint} from '../state/crash-point.js';
import type {DataKeys} from '../secrets/data-keys.js';
import type {KeyEncryptionService} from '../secrets/master-key.js';
import {TenantDatabases} from './databases.js';
import {tenantDbName, validateSlug} from './slug.js';

export type TenantStatus = 'provisioning' | 'active' | 'suspended' | 'deleting';

export interface Tenant {
  readonly slug: string;
  readonly region: string;
  readonly cluster: string;
  readonly role: string;
  readonly database: string;
  readonly status: TenantStatus;
  readonly connectionLimit: number;
  readonly createdAt: string;
  readonly updatedAt: string;
}

/** What the tenant service needs; tests hand in real clusters. */
export interface TenantDeps {
  /** The provisioner's connection to dforge_control. */
  readonly control: Client;
  /** Region name → its cluster names, in the order dforge.yaml declares them. */
  readonly regions: Readonly<Record<string, readonly string[]>>;
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

const DEFAULT_CONNECTION_LIMIT = 20;

/** Where a tenant's database went and why: part of `tenant create`'s output. */
export interface Placement {
  readonly region: string;
  readonly cluster: string;
  /** In words: "most free capacity in region eu (3/10 used)", "requested with --cluster (3/10 used)". */
  readonly reason: string;
  /** Tenants registered on the cluster when it was chosen, whatever their status (an existing tenant counts itself). */
  readonly used: number;
  /** The cluster's `maxTenants`; null: no limit. */
  readonly capacity: number | null;
}

/** One cluster as placement sees it. */
export interface ClusterLoad {
  readonly name: string;
  /** Registry rows on it, provisioning and deleting ones included: they hold a database. */
  readonly used: number;
  readonly capacity: number | null;
}

/** Free slots of a cluster; a cluster without `maxTenants` always has room. */
const freeOf = (c: ClusterLoad): number => (c.capacity === null ? Number.POSITIVE_INFINITY : c.capacity - c.used);

const usage = (c: ClusterLoad): string => (c.capacity === null ? `${c.used} tenants, no limit` : `${c.used}/${c.capacity} used`);

/**
 * The placement rule: the cluster with the most free slots; ties go to the one with fewer tenants,
 * then to the one dforge.yaml declares first, so the same registry always gives the same answer.
 * An unlimited cluster counts as infinitely free: it is preferred over every limited one, and
 * unlimited clusters share tenants evenly among themselves. Undefined when every cluster is full.
 */
export function pickCluster(clusters: readonly ClusterLoad[]): ClusterLoad | undefined {
  let best: ClusterLoad | undefined;
  for (const c of clusters) {
    if (freeOf(c) <= 0) continue;
    if (!best || freeOf(c) > freeOf(best) || (freeOf(c) === freeOf(best) && c.used < best.used)) best = c;
  }
  return best;
}

/**
 * Tenant lifecycle on real PostgreSQL: one database and one login role per tenant, isolation
 * enforced by REVOKE CONNECT, the pg_hba `sameuser` rule and a connection limit.
 *
 * Every operation holds a per-tenant advisory lock in dforge_control (a concurrent operator gets
 * exit 5), records its state in the registry before touching the cluster, and is idempotent, so
 * rerunning it after a crash finishes the job. Every operation is written to the ops log.
 */
export class TenantService {
  constructor(private readonly deps: TenantDeps) {}

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
    const region = this.requestedRegion(slug, options);
    return this.locked(slug, 'tenant.create', async () => {
      let tenant = await this.find(slug);
      let placement: Placement | undefined;
      if (tenant && tenant.status !== 'provisioning') {
        if (options.ifNotExists && tenant.status !== 'deleting') return {tenant, created: false, placement: await this.placementOf(tenant, 'already exists')};
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
        placement = await this.placementOf(tenant, 'registered by an earlier run that did not finish');
      } else {
        ({tenant, placement} = await this.register(slug, region ?? this.defaultRegion(slug), options.cluster));
        crashPoint('tenant.create.registered');
      }
      const password = await this.sealedPassword(slug, true);
      await this.provisionOnCluster(tenant, password);
      await this.deps.dataKeys.create(slug);
      crashPoint('tenant.create.data-key');
      await this.deps.control.query("UPDATE tenants SET status = 'active', updated_at = now() WHERE slug = $1", [slug]);
      crashPoint('tenant.create.active');
      return {tenant: {...tenant, status: 'active'}, created: true, placement};
    });
  }

  /** One tenant's registry entry; an error that says how to list tenants if there is none. */
  async get(slugInput: string): Promise<Tenant> {
    return this.require(validateSlug(slugInput));
  }

  /** The tenant role's password, unsealed: for libpq tools that must connect as the tenant. */
  async password(slugInput: string): Promise<string> {
    return this.sealedPassword(validateSlug(slugInput), false);
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
    const tenant = await this.require(validateSlug(slugInput));
    const password = await this.sealedPassword(tenant.slug, false);
    return this.onCluster(tenant.cluster, async (c) => {
      const present = await c.query<{n: string}>('SELECT count(*) AS n FROM pg_roles WHERE rolname IN ($1, $2)', [tenant.role, `${tenant.role}__owner`]);
      if (Number(present.rows[0]!.n) === 2) return false;
      await this.databasesOf(c, tenant).roles.ensure(tenant.role, scramVerifier(password), tenant.connectionLimit, tenant.status !== 'suspended');
      return true;
    });
  }

  /**
   * A provisioner session on the tenant's cluster with the tenant's databases and roles (restore
   * and prune use this); `fn` must never run tenant code on it.
   */
  async onTenantCluster<T>(slugInput: string, fn: (databases: TenantDatabases, tenant: Tenant) => Promise<T>): Promise<T> {
    const tenant = await this.require(validateSlug(slugInput));
    return this.onCluster(tenant.cluster, (c) => fn(this.databasesOf(c, tenant), tenant));
  }

  async list(): Promise<Tenant[]> {
    const rows = await this.deps.control.query<TenantRow>('SELECT * FROM tenants ORDER BY slug');
    return rows.rows.map(toTenant);
  }

  async show(slugInput: string): Promise<Tenant & {dataKeyVersions: number[]; activeDataKeyVersion: number | null; roleCanLogin: boolean | null; databaseExists: boolean; publicCanConnect: boolean | null}> {
    const tenant = await this.require(validateSlug(slugInput));
    const keys = await this.deps.control.query<{version: number; state: string}>('SELECT version, state FROM data_keys WHERE owner = $1 ORDER BY version', [tenant.slug]);
    const live = await this.onCluster(tenant.cluster, async (c) => {
      const role = await c.query<{rolcanlogin: boolean}>('SELECT rolcanlogin FROM pg_roles WHERE rolname = $1', [tenant.role]);
      const db = await c.query<{public_connect: boolean}>("SELECT has_database_privilege('public', oid, 'CONNECT') AS public_connect FROM pg_database WHERE datname = $1", [tenant.database]);
      return {roleCanLogin: role.rows[0]?.rolcanlogin ?? null, databaseExists: db.rowCount === 1, publicCanConnect: db.rows[0]?.public_connect ?? null};
    });
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
      const tenant = await this.requireUsable(slug);
      await this.onCluster(tenant.cluster, async (c) => {
        const {roles} = this.databasesOf(c, tenant);
        await roles.setLogin(tenant.role, false);
        await roles.terminateSessions(tenant.role);
      });
      await this.deps.control.query("UPDATE tenants SET status = 'suspended', updated_at = now() WHERE slug = $1", [slug]);
      return {...tenant, status: 'suspended'};
    });
  }

  async resume(slugInput: string): Promise<Tenant> {
    const slug = validateSlug(slugInput);
    return this.locked(slug, 'tenant.resume', async () => {
      const tenant = await this.requireUsable(slug);
      await this.onCluster(tenant.cluster, (c) => this.databasesOf(c, tenant).roles.setLogin(tenant.role, true));
      await this.deps.control.query("UPDATE tenants SET status = 'active', updated_at = now() WHERE slug = $1", [slug]);
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
      const tenant = await this.requireUsable(slug);
      const existing = await this.deps.control.query<{pending_sealed_password: Buffer | null}>('SELECT pending_sealed_password FROM tenant_credentials WHERE slug = $1', [slug]);
      let pending = existing.rows[0]?.pending_sealed_password ?? null;
      if (!pending) {
        // Wrapped and stored under the shared keys lock, so no master rotation retires the
        // version in between (the rotation re-wraps pending passwords with the rest).
        pending = await this.deps.kek.withWrites(`tenant rotate-credentials ${slug}`, async () => {
          const wrapped = await this.deps.kek.wrap(Buffer.from(randomPassword()), tenantPasswordContext(slug));
          await this.deps.control.query('UPDATE tenant_credentials SET pending_sealed_password = $1 WHERE slug = $2', [wrapped, slug]);
          return wrapped;
        });
      }
      const password = (await this.deps.kek.unwrap(pending, tenantPasswordContext(slug), `pending password of tenant ${slug}`)).toString('utf8');
      await this.onCluster(tenant.cluster, (c) => this.databasesOf(c, tenant).roles.setPassword(tenant.role, scramVerifier(password)));
      const rotatedAt = this.now().toISOString();
      await this.deps.control.query('UPDATE tenant_credentials SET sealed_password = pending_sealed_password, pending_sealed_password = NULL, rotated_at = $2 WHERE slug = $1', [slug, rotatedAt]);
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
      const tenant = await this.require(slug);
      await this.deps.control.query("UPDATE tenants SET status = 'deleting', updated_at = now() WHERE slug = $1", [slug]);
      await this.onCluster(tenant.cluster, async (c) => {
        const databases = this.databasesOf(c, tenant);
        const roleExists = (await c.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [tenant.role])).rowCount === 1;
        if (roleExists) await databases.roles.setLogin(tenant.role, false);
        // Its live database and any it has besides (kept pre-restore copies, a killed restore's scratch).
        for (const name of await databases.all()) await databases.drop(name);
        await databases.roles.dropRoles(tenant.role);
      });
      const shredded = options.shred ? await this.deps.dataKeys.shred(slug) : null;
      await this.deps.control.query('DELETE FROM tenants WHERE slug = $1', [slug]);
      return {slug, shredded};
    });
  }

  // -------------------------------------------------------------------------------------------

  /**
   * With one region, it is where tenants go. With more, there is no default: where a tenant's data
   * lives is a decision the operator makes for each tenant (DESIGN §10).
   */
  private defaultRegion(slug: string): string {
    const regions = Object.keys(this.deps.regions);
    if (regions.length === 1) return regions[0]!;
    throw new UsageError(`tenant create ${slug} needs --region: this install has ${regions.length} regions (${regions.join(', ')}) and none is a default`, {
      nextSteps: regions.map((r) => `dforge tenant create ${slug} --region ${r}`),
    });
  }

  /**
   * The region a create asks for: `--region`, or the region of `--cluster`. A cluster outside the
   * requested region is refused with no override: a tenant's database is always in its own region
   * (cross-region approvals cover copies of data, never where the tenant lives).
   */
  private requestedRegion(slug: string, options: {region?: string; cluster?: string}): string | undefined {
    if (options.cluster === undefined) return options.region;
    const region = Object.entries(this.deps.regions).find(([, clusters]) => clusters.includes(options.cluster!))?.[0];
    if (region === undefined) {
      throw new UserError(`no cluster ${options.cluster} in dforge.yaml; nothing was changed`, {
        nextSteps: [`Use one of: ${Object.entries(this.deps.regions).map(([r, clusters]) => `${clusters.join(', ')} (region ${r})`).join('; ')}`, 'Or declare the cluster in dforge.yaml and run: dforge db init'],
        data: {tenant: slug, cluster: options.cluster},
      });
    }
    if (options.region !== undefined && options.region !== region) {
      throw new CrossRegionError(`refusing to place tenant ${slug} on cluster ${options.cluster}: cluster ${options.cluster} is in region ${region}, not ${options.region}; a tenant's database is always in its own region (no flag overrides this); nothing was changed`, {
        nextSteps: [`Pin it to region ${region}: dforge tenant create ${slug} --region ${region} --cluster ${options.cluster}`, `Or keep region ${options.region}: dforge tenant create ${slug} --region ${options.region}`],
        data: {tenant: slug, cluster: options.cluster, clusterRegion: region, requestedRegion: options.region, operation: 'placement'},
      });
    }
    return region;
  }

  /**
   * Registers the tenant as provisioning on its cluster. Choosing and inserting happen in one
   * transaction under an advisory lock on the region, so two creates racing for a region's last
   * free slot are serialised: the second counts the first's row and is refused.
   */
  private async register(slug: string, region: string, requested?: string): Promise<{tenant: Tenant; placement: Placement}> {
    const clusters = this.deps.regions[region];
    if (!clusters || clusters.length === 0) {
      throw new UserError(`region ${region} is not declared in dforge.yaml`, {
        nextSteps: [`Use one of: ${Object.keys(this.deps.regions).join(', ')}`, 'Or declare the region and its clusters in dforge.yaml.'],
      });
    }
    const control = this.deps.control;
    await control.query('BEGIN');
    try {
      await control.query("SELECT pg_advisory_xact_lock(hashtext('dforge.placement'), hashtext($1))", [region]);
      const loads = await this.loadsOf(clusters);
      const chosen = requested === undefined ? pickCluster(loads) : loads.find((c) => c.name === requested && freeOf(c) > 0);
      if (!chosen) throw this.fullError(slug, region, requested === undefined ? loads : loads.filter((c) => c.name === requested));
      const name = tenantDbName(slug);
      const limit = this.deps.connectionLimit ?? DEFAULT_CONNECTION_LIMIT;
      const row = await control.query<TenantRow>(
        "INSERT INTO tenants (slug, region, cluster, role_name, database_name, status, connection_limit) VALUES ($1, $2, $3, $4, $4, 'provisioning', $5) RETURNING *",
        [slug, region, chosen.name, name, limit],
      );
      await control.query('COMMIT');
      const reason = requested === undefined ? `most free capacity in region ${region} (${usage(chosen)})` : `requested with --cluster (${usage(chosen)})`;
      return {tenant: toTenant(row.rows[0]!), placement: {region, cluster: chosen.name, reason, used: chosen.used, capacity: chosen.capacity}};
    } catch (err) {
      await control.query('ROLLBACK').catch(() => undefined);
      throw err;
    }
  }

  /** Each cluster's registry rows, whatever their status, and its capacity; in declaration order. */
  private async loadsOf(clusters: readonly string[]): Promise<ClusterLoad[]> {
    const rows = await this.deps.control.query<{cluster: string; n: string}>('SELECT cluster, count(*) AS n FROM tenants WHERE cluster = ANY($1) GROUP BY cluster', [clusters]);
    const counts = new Map(rows.rows.map((r) => [r.cluster, Number(r.n)]));
    return clusters.map((name) => ({name, used: counts.get(name) ?? 0, capacity: this.deps.maxTenants?.[name] ?? null}));
  }

  private fullError(slug: string, region: string, full: readonly ClusterLoad[]): UserError {
    const which = full.length === 1 ? `cluster ${full[0]!.name} is full` : `every cluster of region ${region} is full`;
    return new UserError(`cannot place tenant ${slug}: ${which} (${full.map((c) => `${c.name} ${usage(c)}`).join(', ')}); nothing was changed`, {
      nextSteps: [
        `Raise maxTenants of ${full.map((c) => c.name).join(' or ')} in dforge.yaml (regions.${region}.clusters), if the server has room`,
        `Or add a cluster to region ${region} in dforge.yaml and run: dforge db init`,
        full.length === 1 ? `Or let placement choose: dforge tenant create ${slug} --region ${region}` : `Or pin the tenant to another region: dforge tenant create ${slug} --region <region>`,
      ],
      data: {tenant: slug, region, clusters: full.map((c) => ({cluster: c.name, used: c.used, capacity: c.capacity}))},
    });
  }

  /** The placement of a tenant already registered, with its cluster's current load. */
  private async placementOf(tenant: Tenant, reason: string): Promise<Placement> {
    const [load] = await this.loadsOf([tenant.cluster]);
    return {region: tenant.region, cluster: tenant.cluster, reason, used: load!.used, capacity: load!.capacity};
  }

  /** The tenant's password: sealed in dforge_control before any role uses it, reused on a rerun. */
  private async sealedPassword(slug: string, createIfMissing: boolean): Promise<string> {
    const row = await this.deps.control.query<{sealed_password: Buffer}>('SELECT sealed_password FROM tenant_credentials WHERE slug = $1', [slug]);
    if (row.rowCount === 1) return (await this.deps.kek.unwrap(row.rows[0]!.sealed_password, tenantPasswordContext(slug), `password of tenant ${slug}`)).toString('utf8');
    if (!createIfMissing) throw new UserError(`tenant ${slug} has no stored credentials`, {nextSteps: [`Rotate them: dforge tenant rotate-credentials ${slug}`]});
    const password = randomPassword();
    await this.deps.kek.withWrites(`tenant create ${slug}`, async () => {
      await this.deps.control.query('INSERT INTO tenant_credentials (slug, sealed_password) VALUES ($1, $2)', [slug, await this.deps.kek.wrap(Buffer.from(password), tenantPasswordContext(slug))]);
    });
    crashPoint('tenant.create.password-sealed');
    return password;
  }

  /**
   * Roles, then the database cloned from the tenant template, closed to PUBLIC from the start,
   * handed to the owner role and shaped; the login role gets CONNECT last. Each step checks what
   * exists first, so a rerun finishes a crashed create.
   */
  private async provisionOnCluster(tenant: Tenant, password: string): Promise<void> {
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

  private databasesOf(c: Client, tenant: Tenant): TenantDatabases {
    return new TenantDatabases(c, tenant, (database) => this.deps.provisionerOn(tenant.cluster, database));
  }

  private async onCluster<T>(cluster: string, fn: (c: Client) => Promise<T>): Promise<T> {
    const client = await this.deps.provisionerOn(cluster);
    try {
      return await fn(client);
    } finally {
      await client.end().catch(() => undefined);
    }
  }

  private async find(slug: string): Promise<Tenant | undefined> {
    const row = await this.deps.control.query<TenantRow>('SELECT * FROM tenants WHERE slug = $1', [slug]);
    return row.rowCount === 1 ? toTenant(row.rows[0]!) : undefined;
  }

  private async require(slug: string): Promise<Tenant> {
    const tenant = await this.find(slug);
    if (!tenant) throw new UserError(`no tenant ${slug}`, {nextSteps: ['List tenants with: dforge tenant list']});
    // Every path to a tenant's data resolves it here: a row whose cluster left its region fails closed.
    requirePlacedInRegion(this.deps.regions, tenant);
    return tenant;
  }

  private async requireUsable(slug: string): Promise<Tenant> {
    const tenant = await this.require(slug);
    if (tenant.status === 'provisioning' || tenant.status === 'deleting') {
      throw new UserError(`tenant ${slug} is ${tenant.status}: an earlier run did not finish`, {
        nextSteps: [tenant.status === 'provisioning' ? `Finish it: dforge tenant create ${slug}` : `Finish it: dforge tenant delete ${slug} --confirm ${slug}`],
      });
    }
    return tenant;
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

interface TenantRow {
  slug: string;
  region: string;
  cluster: string;
  role_name: string;
  database_name: string;
  status: TenantStatus;
  connection_limit: number;
  created_at: Date;
  updated_at: Date;
}

function toTenant(r: TenantRow): Tenant {
  return {
    slug: r.slug,
    region: r.region,
    cluster: r.cluster,
    role: r.role_name,
    database: r.database_name,
    status: r.status,
    connectionLimit: r.connection_limit,
    createdAt: r.created_at.toISOString(),
    updatedAt: r.updated_at.toISOString(),
  };
}
