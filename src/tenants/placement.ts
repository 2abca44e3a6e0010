import {UsageError, UserError} from '../errors.js';
import {CrossRegionError} from '../residency/policy.js';

/**
 * Where a new tenant's database goes: the region the operator asked for (or the only one), and in
 * it the cluster with the most free capacity. Pure rules over dforge.yaml's regions and the
 * registry's counts; the registry (registry.ts) applies them under its placement lock.
 */

/** Region name → its cluster names, in the order dforge.yaml declares them. */
export type Regions = Readonly<Record<string, readonly string[]>>;

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
export const freeOf = (c: ClusterLoad): number => (c.capacity === null ? Number.POSITIVE_INFINITY : c.capacity - c.used);

export const usage = (c: ClusterLoad): string => (c.capacity === null ? `${c.used} tenants, no limit` : `${c.used}/${c.capacity} used`);

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
 * With one region, it is where tenants go. With more, there is no default: where a tenant's data
 * lives is a decision the operator makes for each tenant (DESIGN §10).
 */
export function defaultRegion(regions: Regions, slug: string): string {
  const names = Object.keys(regions);
  if (names.length === 1) return names[0]!;
  throw new UsageError(`tenant create ${slug} needs --region: this install has ${names.length} regions (${names.join(', ')}) and none is a default`, {
    nextSteps: names.map((r) => `dforge tenant create ${slug} --region ${r}`),
  });
}

/**
 * The region a create asks for: `--region`, or the region of `--cluster`. A cluster outside the
 * requested region is refused with no override: a tenant's database is always in its own region
 * (cross-region approvals cover copies of data, never where the tenant lives).
 */
export function requestedRegion(regions: Regions, slug: string, options: {region?: string; cluster?: string}): string | undefined {
  if (options.cluster === undefined) return options.region;
  const region = Object.entries(regions).find(([, clusters]) => clusters.includes(options.cluster!))?.[0];
  if (region === undefined) {
    // A name that names nothing is a usage error, as for tenant move --to-cluster.
    throw new UsageError(`no cluster ${options.cluster} in dforge.yaml; nothing was changed`, {
      nextSteps: [`Use one of: ${Object.entries(regions).map(([r, clusters]) => `${clusters.join(', ')} (region ${r})`).join('; ')}`, 'Or declare the cluster in dforge.yaml and run: dforge db init'],
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

/** The refusal when the cluster asked for, or every cluster of the region, is full. */
export function fullError(slug: string, region: string, full: readonly ClusterLoad[]): UserError {
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
