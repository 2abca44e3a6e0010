import {UserError} from '../errors.js';

/**
 * A registry row is trusted only while dforge.yaml still puts its cluster in its region. An edit
 * that moves a cluster to another region (or renames it away) would otherwise send every data
 * path (backups, restores, exports, credentials) to a server in a jurisdiction the tenant was
 * never pinned to, without a move or an approval; so each of them stops here instead.
 */
export function requirePlacedInRegion(regions: Readonly<Record<string, readonly string[]>>, tenant: {slug: string; region: string; cluster: string}): void {
  if (regions[tenant.region]?.includes(tenant.cluster)) return;
  const declaredIn = Object.entries(regions).find(([, clusters]) => clusters.includes(tenant.cluster))?.[0];
  throw new UserError(
    `tenant ${tenant.slug} is pinned to region ${tenant.region} on cluster ${tenant.cluster}, but dforge.yaml ${declaredIn ? `declares cluster ${tenant.cluster} in region ${declaredIn}` : `no longer declares cluster ${tenant.cluster}`}: refusing to touch its data until they agree`,
    {
      nextSteps: [
        `If dforge.yaml was edited by mistake, put cluster ${tenant.cluster} back under regions.${tenant.region}.clusters.`,
        `If the data should live elsewhere, move it with dforge tenant move ${tenant.slug}, which re-pins it once the copy is verified.`,
      ],
      data: {tenant: tenant.slug, region: tenant.region, cluster: tenant.cluster, clusterRegion: declaredIn ?? null},
    },
  );
}
