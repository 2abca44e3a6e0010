import type {Client} from 'pg';

import type {DforgeConfig} from '../config/schema.js';
import {endpointOf} from '../control/clusters.js';
import {connect} from '../postgres/connect.js';
import type {InstallDir} from '../state/install-dir.js';
import type {Tenant} from './registry.js';
import type {TenantService} from './service.js';

/**
 * A session as the tenant's own login role (its sealed password), on its database unless another
 * is named. Whoever looks inside a tenant database (posture probes, the change-log tail and
 * export) uses this rather than a more powerful role: whatever the tenant planted there then runs
 * with no more power than the tenant has. Every query on such a session must name pg_catalog
 * objects qualified: the tenant controls its role's search_path, so it is pinned here as well.
 */
export async function connectTenantSession(dir: InstallDir, config: DforgeConfig, tenants: Pick<TenantService, 'password'>, tenant: Tenant, database: string = tenant.database): Promise<Client> {
  const password = await tenants.password(tenant.slug);
  const client = await connect(await endpointOf(dir, config, tenant.cluster), {user: tenant.role, password, database});
  try {
    await client.query('SET search_path = pg_catalog, pg_temp');
  } catch (err) {
    await client.end().catch(() => undefined);
    throw err;
  }
  return client;
}
