import type {Client} from 'pg';

import {UsageError, UserError} from '../errors.js';
import {isoUtcText} from '../postgres/sql.js';
import {requirePlacedInRegion} from '../residency/misplaced.js';
import {fullError, freeOf, pickCluster, usage, type ClusterLoad, type Placement, type Regions} from './placement.js';
import {tenantDbName} from './slug.js';

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

const DEFAULT_CONNECTION_LIMIT = 20;

/**
 * The tenant registry: the `tenants` table in dforge_control, one row per tenant with its region,
 * cluster, role, database and lifecycle status. Every operation records its state here before it
 * touches the tenant's cluster, so a rerun after a crash knows where it stopped.
 */
export class TenantRegistry {
  constructor(
    /** The provisioner's connection to dforge_control. */
    private readonly control: Client,
    private readonly regions: Regions,
    /** Cluster name → its capacity (dforge.yaml `maxTenants`); a cluster not listed has no limit. */
    private readonly maxTenants: Readonly<Record<string, number>> | undefined,
    private readonly connectionLimit: number | undefined,
  ) {}

  async find(slug: string): Promise<Tenant | undefined> {
    const row = await this.control.query<TenantRow>(`SELECT ${TENANT_COLUMNS} FROM tenants WHERE slug = $1`, [slug]);
    return row.rowCount === 1 ? toTenant(row.rows[0]!) : undefined;
  }

  async require(slug: string): Promise<Tenant> {
    const tenant = await this.find(slug);
    if (!tenant) throw new UserError(`no tenant ${slug}`, {nextSteps: ['List tenants with: dforge tenant list']});
    // Every path to a tenant's data resolves it here: a row whose cluster left its region fails closed.
    requirePlacedInRegion(this.regions, tenant);
    return tenant;
  }

  /** A tenant no earlier run left half-created or half-deleted. */
  async requireUsable(slug: string): Promise<Tenant> {
    const tenant = await this.require(slug);
    if (tenant.status === 'provisioning' || tenant.status === 'deleting') {
      throw new UserError(`tenant ${slug} is ${tenant.status}: an earlier run did not finish`, {
        nextSteps: [tenant.status === 'provisioning' ? `Finish it: dforge tenant create ${slug}` : `Finish it: dforge tenant delete ${slug} --confirm ${slug}`],
      });
    }
    return tenant;
  }

  async list(): Promise<Tenant[]> {
    const rows = await this.control.query<TenantRow>(`SELECT ${TENANT_COLUMNS} FROM tenants ORDER BY slug`);
    return rows.rows.map(toTenant);
  }

  async setStatus(slug: string, status: Exclude<TenantStatus, 'provisioning'>): Promise<void> {
    await this.control.query('UPDATE tenants SET status = $2, updated_at = now() WHERE slug = $1', [slug, status]);
  }

  async remove(slug: string): Promise<void> {
    await this.control.query('DELETE FROM tenants WHERE slug = $1', [slug]);
  }

  /**
   * Registers the tenant as provisioning on its cluster. Choosing and inserting happen in one
   * transaction under an advisory lock on the region, so two creates racing for a region's last
   * free slot are serialised: the second counts the first's row and is refused.
   */
  async register(slug: string, region: string, requested?: string): Promise<{tenant: Tenant; placement: Placement}> {
    const clusters = this.regions[region];
    if (!clusters || clusters.length === 0) {
      throw new UsageError(`region ${region} is not declared in dforge.yaml; nothing was changed`, {
        nextSteps: [`Use one of: ${Object.keys(this.regions).join(', ')}`, 'Or declare the region and its clusters in dforge.yaml.'],
      });
    }
    const control = this.control;
    await control.query('BEGIN');
    try {
      await control.query("SELECT pg_advisory_xact_lock(hashtext('dforge.placement'), hashtext($1))", [region]);
      const loads = await this.loadsOf(clusters);
      const chosen = requested === undefined ? pickCluster(loads) : loads.find((c) => c.name === requested && freeOf(c) > 0);
      if (!chosen) throw fullError(slug, region, requested === undefined ? loads : loads.filter((c) => c.name === requested));
      const name = tenantDbName(slug);
      const limit = this.connectionLimit ?? DEFAULT_CONNECTION_LIMIT;
      const row = await control.query<TenantRow>(
        `INSERT INTO tenants (slug, region, cluster, role_name, database_name, status, connection_limit) VALUES ($1, $2, $3, $4, $4, 'provisioning', $5) RETURNING ${TENANT_COLUMNS}`,
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

  /** The placement of a tenant already registered, with its cluster's current load. */
  async placementOf(tenant: Tenant, reason: string): Promise<Placement> {
    const [load] = await this.loadsOf([tenant.cluster]);
    return {region: tenant.region, cluster: tenant.cluster, reason, used: load!.used, capacity: load!.capacity};
  }

  /** Each cluster's registry rows, whatever their status, and its capacity; in declaration order. */
  private async loadsOf(clusters: readonly string[]): Promise<ClusterLoad[]> {
    const rows = await this.control.query<{cluster: string; n: string}>('SELECT cluster, count(*) AS n FROM tenants WHERE cluster = ANY($1) GROUP BY cluster', [clusters]);
    const counts = new Map(rows.rows.map((r) => [r.cluster, Number(r.n)]));
    return clusters.map((name) => ({name, used: counts.get(name) ?? 0, capacity: this.maxTenants?.[name] ?? null}));
  }
}

/**
 * A registry row, its timestamps as toISOString() would write them, formatted by the server:
 * parsing them into Dates costs more than the rest of a row, and a catalog publication reads every row.
 */
const TENANT_COLUMNS = `slug, region, cluster, role_name, database_name, status, connection_limit, ${isoUtcText('created_at', 'ms')} AS created_at, ${isoUtcText('updated_at', 'ms')} AS updated_at`;

interface TenantRow {
  slug: string;
  region: string;
  cluster: string;
  role_name: string;
  database_name: string;
  status: TenantStatus;
  connection_limit: number;
  created_at: string;
  updated_at: string;
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
    createdAt: r.created_at,
    updatedAt: r.updated_at,
  };
}
