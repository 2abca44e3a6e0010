import {promises as fs} from 'node:fs';

import {BackupCatalog} from '../../backup/catalog.js';
import {destinationFor} from '../../backup/destination.js';
import {attributeObject, wrapperFor} from '../../backup/verify.js';
import {clustersOf} from '../../control/clusters.js';
import type {ControlPlane} from '../../control/plane.js';
import {placeBackups, residencyEvents} from '../../residency/report.js';
import type {Tenant} from '../../tenants/registry.js';
import {defineCheck, fail, pass, runCheck, warn, type CheckDefinition, type CheckResult, type Finding} from '../check.js';
import {requirePlane, usingClient, type PostureContext, type Probe} from '../context.js';
import {onControl} from '../context.js';

/**
 * Data residency: every tenant lives on a cluster of the region it is pinned to, and every tenant
 * backup in a region's destinations is a backup of that region, as its authenticated header says
 * (a file name proves nothing: anyone who can write a destination can name a file anything).
 * Control backups carry only global data (the catalog, keys wrapped under the master key, the
 * ops log) and go to every region by design (docs/operations.md, "Disaster recovery").
 */

const TENANT_PINNED = defineCheck({
  id: 'residency.tenant-pinned',
  title: 'Tenant pinned to a declared region and living on its cluster',
  area: 'residency',
  controls: ['GDPR Art. 44'],
  severity: 'critical',
  expected: "the tenant's region is declared in dforge.yaml, its cluster belongs to that region, and its database exists on that cluster",
  method: 'the tenant row in dforge_control against dforge.yaml, and pg_database of each cluster (one query per cluster, as the provisioner)',
  fix: 'dforge tenant show <slug>; restore the tenant into its own region (docs/operations.md, "Restoring")',
});

const BACKUP_PLACEMENT = defineCheck({
  id: 'residency.backup-placement',
  title: "Backups in a region's destination belong to that region",
  area: 'residency',
  controls: ['GDPR Art. 44'],
  severity: 'critical',
  expected: "every tenant backup file in the destination authenticates as a backup of a tenant of the destination's region; control backups are allowed in every region",
  method: "every .dfb file in the destination: header parsed, file key unwrapped with the key it names and the header MAC checked; the authenticated region, and the tenant's live region, compared with the destination's",
  fix: 'remove the named files from the destination (they are copies of another region\'s data), then find who can write to it (docs/security.md#posture-what-is-measured)',
});

const CROSS_REGION_EXCEPTIONS = defineCheck({
  id: 'residency.cross-region-exceptions',
  title: 'No unapproved cross-region transfer',
  area: 'residency',
  controls: ['GDPR Art. 30(1)(e)', 'GDPR Art. 44'],
  severity: 'high',
  expected: "every catalogued tenant backup is in a destination of the tenant's region, or covered by an approved exception (--allow-cross-region --reason, in the ops log)",
  method: "the backup catalog in dforge_control against dforge.yaml's destinations and the tenants' regions, and the ops log's residency.cross-region entries",
  fix: "move or delete the named backups (dforge backup prune), or, if the transfer was approved, take it again with --allow-cross-region --reason so the approval is on the record; dforge residency report lists both (docs/security.md#posture-what-is-measured)",
});

export const RESIDENCY_CHECKS: readonly CheckDefinition[] = [TENANT_PINNED, BACKUP_PLACEMENT, CROSS_REGION_EXCEPTIONS];

async function tenantPinned(ctx: PostureContext, tenant: Tenant, databases: (cluster: string) => Promise<Set<string>>): Promise<Finding> {
  if (!(tenant.region in ctx.config.regions)) return fail(`tenant ${tenant.slug} is pinned to region ${tenant.region}, which dforge.yaml does not declare`);
  const entry = clustersOf(ctx.config).get(tenant.cluster);
  if (!entry) return fail(`tenant ${tenant.slug} is on cluster ${tenant.cluster}, which dforge.yaml does not declare`);
  if (entry.region !== tenant.region) return fail(`tenant ${tenant.slug} is pinned to region ${tenant.region} but placed on cluster ${tenant.cluster} of region ${entry.region}`);
  if (!(await databases(tenant.cluster)).has(tenant.database)) return fail(`database ${tenant.database} does not exist on cluster ${tenant.cluster}`, 'the catalog places the tenant where it does not live');
  return pass(`region ${tenant.region}, cluster ${tenant.cluster}, database ${tenant.database} present`);
}

/** One destination scanned: what is out of place, and what could not be attributed. */
async function backupPlacement(ctx: PostureContext, region: string, config: Parameters<typeof destinationFor>[1], regionOf: ReadonlyMap<string, string>): Promise<Finding> {
  const destination = destinationFor(region, config, ctx.plane?.keys.sealed);
  // list() skips what it can't read; here an unreadable destination is "could not look", not "empty".
  if (config.kind === 'local') {
    await fs.readdir(config.path).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw new Error(`cannot read destination ${config.name} at ${config.path}: ${err.code ?? err.message}`);
    });
  }
  const files = (await ctx.limit(() => destination.list(''))).filter((l) => l.endsWith('.dfb'));
  const misplaced: string[] = [];
  const forged: string[] = [];
  const unattributed: string[] = [];
  let controls = 0;
  await Promise.all(
    files.map((location) =>
      ctx.limit(async () => {
        const where = destination.describe(location);
        const object = await attributeObject(destination, location, (parsed, label) => onControl(ctx, (plane) => wrapperFor(plane, parsed, label)));
        if (object.kind === 'control') controls++;
        // A shredded tenant's backups can no longer be opened, by design: unattributable, not forged.
        else if (object.kind === 'unattributable') unattributed.push(`${where} (${object.reason})`);
        else if (object.kind === 'unauthentic') forged.push(`${where} (${object.reason})`);
        else {
          const live = regionOf.get(object.tenant);
          if (object.region !== region) misplaced.push(`${where} is a backup of tenant ${object.tenant} of region ${object.region}, in destination ${destination.name} of region ${region}`);
          else if (live !== undefined && live !== region) misplaced.push(`${where} is a backup of tenant ${object.tenant}, now pinned to region ${live}, in destination ${destination.name} of region ${region}`);
        }
      }),
    ),
  );
  const observed = `${files.length} backup file(s) in ${destination.name} (region ${region}), ${controls} of them control backups`;
  if (misplaced.length > 0 || forged.length > 0) {
    return fail(
      [observed, ...misplaced, ...forged.map((f) => `not an authentic backup: ${f}`)].join('; '),
      misplaced.length > 0 ? "another region's tenant data sits in this region's destination" : 'a file in the destination does not authenticate as a dforge backup, so its owner and region are unknown',
    );
  }
  if (unattributed.length > 0) return warn(`${observed}; cannot be attributed: ${unattributed.join('; ')}`, 'backups whose data key is gone (shredded tenants) cannot be attributed; prune them with dforge backup prune');
  return pass(observed);
}

/** Approved exceptions are listed; a catalogued backup outside its tenant's region without one FAILs. */
async function crossRegionExceptions(ctx: PostureContext, plane: ControlPlane): Promise<Finding> {
  const crossings = await residencyEvents(plane.control, ctx.config);
  const placed = placeBackups(ctx.config, ctx.allTenants, await new BackupCatalog(plane.control).list({kind: 'tenant'}), crossings);
  const outside = placed.tenants.flatMap((t) => t.backups.filter((b) => b.outsideRegion).map((b) => ({tenant: t, backup: b})));
  const unapproved = outside.filter((o) => o.backup.approvedBy === null);
  const approved = crossings.map((c) => `#${c.seq} ${c.tenant} ${c.operation} ${c.fromRegion}->${c.toRegion} (${c.reason})`);
  const observed = `${outside.length} catalogued backup(s) outside their region; ${crossings.length} approved exception(s)${approved.length > 0 ? `: ${approved.join('; ')}` : ''}`;
  if (unapproved.length > 0) {
    return fail(
      [observed, ...unapproved.map((o) => `backup ${o.backup.id} of tenant ${o.tenant.slug} (region ${o.tenant.region}) is in destination ${o.backup.destination} of region ${o.backup.destinationRegion ?? 'undeclared'}`)].join('; '),
      "tenant data sits outside its region and no approved exception is on the record",
    );
  }
  return pass(observed);
}

export const residencyProbe: Probe = async (ctx) => {
  // Each cluster's database list is read once, however many tenants live there.
  const perCluster = new Map<string, Promise<Set<string>>>();
  const databases = (cluster: string): Promise<Set<string>> => {
    let cached = perCluster.get(cluster);
    if (!cached) {
      cached = ctx.limit(() =>
        usingClient(
          () => requirePlane(ctx).provisionerOn(cluster),
          async (c) => new Set((await c.query<{datname: string}>('SELECT datname FROM pg_catalog.pg_database')).rows.map((r) => r.datname)),
        ),
      );
      perCluster.set(cluster, cached);
    }
    return cached;
  };
  const tenants = ctx.tenants.map((t) => runCheck(TENANT_PINNED, `tenant:${t.slug}`, () => tenantPinned(ctx, t, databases)));

  // Every tenant, not just those in scope: a file of any tenant may sit in the wrong region.
  const regionOf = new Map(ctx.allTenants.map((t) => [t.slug, t.region]));
  const destinations = Object.entries(ctx.config.regions).flatMap(([region, r]) =>
    (r.backup?.destinations ?? []).map((d) => runCheck(BACKUP_PLACEMENT, `destination:${d.name}`, () => backupPlacement(ctx, region, d, regionOf))),
  );

  const exceptions = runCheck(CROSS_REGION_EXCEPTIONS, 'install', () => onControl(ctx, (plane) => crossRegionExceptions(ctx, plane)));
  const results: CheckResult[] = await Promise.all([...tenants, ...destinations, exceptions]);
  return results;
};
