import {promises as fs} from 'node:fs';

import {caCertFile} from '../certs/pki-paths.js';
import {serviceHost} from '../certs/service-names.js';
import type {ClusterConfig, DforgeConfig} from '../config/schema.js';
import {UserError} from '../errors.js';
import type {ClusterEndpoint} from '../postgres/connect.js';
import type {InstallDir} from '../state/install-dir.js';

/**
 * The install's clusters as dforge.yaml declares them, the names of their sealed credentials, and
 * how to reach each one. Pure lookups and file reads: nothing here opens a key or a session, so
 * any module may use it without pulling in the control plane (src/control/plane.ts).
 */

/** Sealed-secret names of a cluster's credentials. */
export const provisionerSecret = (cluster: string): string => `postgres/${cluster}/provisioner`;
export const superuserSecret = (cluster: string): string => `postgres/${cluster}/superuser`;

/** The clusters of an install, by name, with their region. */
export function clustersOf(config: DforgeConfig): Map<string, {region: string; cluster: ClusterConfig}> {
  const map = new Map<string, {region: string; cluster: ClusterConfig}>();
  for (const [region, r] of Object.entries(config.regions)) for (const cluster of r.clusters) map.set(cluster.name, {region, cluster});
  return map;
}

/** The cluster holding dforge_control: the first cluster of the primary region. */
export function primaryCluster(config: DforgeConfig): ClusterConfig {
  return config.regions[config.primaryRegion]!.clusters[0]!;
}

/** The CA file a cluster's server certificate is verified against: its own for an external cluster, else the install CA. */
export const caFileOf = (dir: InstallDir, cluster: ClusterConfig): string => (cluster.kind === 'external' ? (cluster.caFile ?? caCertFile(dir)) : caCertFile(dir));

/** How dforge reaches a cluster over TLS 1.3, verified against the install CA (or the configured one). */
/**
 * Where dforge reaches a cluster and the name its certificate must carry. Compose publishes the
 * bundled postgres service on host loopback only; in Kubernetes dforge runs in the namespace (the
 * backup CronJob) and reaches the Service. Either way the name checked is the one its certificate
 * carries (src/certs/service-names.ts).
 */
export function clusterAddress(config: DforgeConfig, c: ClusterConfig): {host: string; port: number; servername: string} {
  switch (c.kind) {
    case 'embedded':
      return {host: '127.0.0.1', port: c.port, servername: 'localhost'};
    case 'external':
      return {host: c.host, port: c.port, servername: c.host};
    case 'bundled':
      return config.target === 'k8s' ? {host: serviceHost(config, 'postgres'), port: 5432, servername: serviceHost(config, 'postgres')} : {host: '127.0.0.1', port: c.port, servername: serviceHost(config, 'postgres')};
  }
}

export async function endpointOf(dir: InstallDir, config: DforgeConfig, name: string): Promise<ClusterEndpoint> {
  const entry = clustersOf(config).get(name);
  if (!entry) throw new UserError(`no cluster ${name} in ${dir.configFile}`, {nextSteps: [`Declared clusters: ${[...clustersOf(config).keys()].join(', ')}`]});
  const c = entry.cluster;
  const caFile = c.kind === 'external' ? caFileOf(dir, c) : caCertFile(dir);
  const caPem = await fs.readFile(caFile, 'utf8').catch(() => {
    throw new UserError(`no CA certificate at ${caFile}`, {nextSteps: ['Generate the install PKI with: dforge certs generate']});
  });
  return {name, ...clusterAddress(config, c), caPem};
}
