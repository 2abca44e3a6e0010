import {promises as fs} from 'node:fs';
import path from 'node:path';

import type {Client} from 'pg';

import {OpsLog} from '../audit/ops-log.js';
import {serviceHost} from '../certs/service-names.js';
import {loadConfigFile} from '../config/load.js';
import type {ClusterConfig, DforgeConfig} from '../config/schema.js';
import type {PgToolsMode} from '../backup/pg-tool-runner.js';
import {UserError} from '../errors.js';
import {openKeyServices, type KeyServices} from '../keys/context.js';
import {connect, type ClusterEndpoint} from '../postgres/connect.js';
import {DataKeys} from '../secrets/data-keys.js';
import type {InstallDir} from '../state/install-dir.js';
import {TenantService} from '../tenants/service.js';
import {CONTROL_DATABASE, PROVISIONER_ROLE} from './bootstrap.js';
import {ControlDataKeyStore, ControlWrappedKeys} from './keys-store.js';

/** Where the public half of the PKI lives: readable by services, unlike secrets/. */
export const pkiDir = (dir: InstallDir): string => path.join(dir.root, 'pki');
export const caCertFile = (dir: InstallDir): string => path.join(pkiDir(dir), 'ca.crt');

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
export async function endpointOf(dir: InstallDir, config: DforgeConfig, name: string): Promise<ClusterEndpoint> {
  const entry = clustersOf(config).get(name);
  if (!entry) throw new UserError(`no cluster ${name} in ${dir.configFile}`, {nextSteps: [`Declared clusters: ${[...clustersOf(config).keys()].join(', ')}`]});
  const c = entry.cluster;
  const readCa = async (file: string): Promise<string> =>
    fs.readFile(file, 'utf8').catch(() => {
      throw new UserError(`no CA certificate at ${file}`, {nextSteps: ['Generate the install PKI with: dforge certs generate']});
    });
  switch (c.kind) {
    case 'embedded':
      return {name, host: '127.0.0.1', port: c.port, caPem: await readCa(caCertFile(dir)), servername: 'localhost'};
    case 'external':
      return {name, host: c.host, port: c.port, caPem: await readCa(caFileOf(dir, c)), servername: c.host};
    case 'bundled':
      // Compose publishes the postgres service on host loopback only; in Kubernetes dforge runs in
      // the namespace (the backup CronJob) and reaches the Service. Either way the name checked is
      // the one its certificate carries (src/certs/service-names.ts).
      return config.target === 'k8s'
        ? {name, host: serviceHost(config, 'postgres'), port: 5432, caPem: await readCa(caCertFile(dir)), servername: serviceHost(config, 'postgres')}
        : {name, host: '127.0.0.1', port: c.port, caPem: await readCa(caCertFile(dir)), servername: serviceHost(config, 'postgres')};
  }
}

/** An open control plane: config, keys, a provisioner session on dforge_control, the tenant service. */
export interface ControlPlane {
  readonly config: DforgeConfig;
  readonly keys: KeyServices;
  readonly control: Client;
  readonly tenants: TenantService;
  /** Tenant data keys, in dforge_control. */
  readonly dataKeys: DataKeys;
  /** dforge_control's wrapped keys, for master rotation and keys status. */
  readonly wrappedKeys: ControlWrappedKeys;
  /** The keyed ops log (entries in `control`, key and anchor in the install directory). */
  readonly opsLog: OpsLog;
  /** Where pg_dump and pg_restore run (see backup/pg-tool-runner.ts). */
  readonly pgTools: PgToolsMode;
  /** A new provisioner session on a database of a cluster (`postgres` unless named); the caller ends it. */
  provisionerOn(cluster: string, database?: string): Promise<Client>;
  close(): Promise<void>;
}

export interface ControlPlaneOptions {
  readonly env?: NodeJS.ProcessEnv;
  readonly clock?: () => Date;
  readonly pgTools?: PgToolsMode;
}

export async function openControlPlane(dir: InstallDir, options: ControlPlaneOptions = {}): Promise<ControlPlane> {
  const config = await loadConfigFile(dir.configFile);
  const keys = await openKeyServices(dir, options);
  const provisionerPassword = async (cluster: string): Promise<string> => {
    if (!(await keys.sealed.has(provisionerSecret(cluster)))) {
      throw new UserError(`cluster ${cluster} is not bootstrapped: no provisioner credentials in ${dir.secretsDir}`, {
        nextSteps: ['Bootstrap it: dforge db init for an embedded cluster, dforge install for compose or k8s (or dforge quickstart for an evaluation install).'],
      });
    }
    return (await keys.sealed.get(provisionerSecret(cluster))).toString('utf8');
  };
  const provisionerOn = async (cluster: string, database = 'postgres'): Promise<Client> =>
    connect(await endpointOf(dir, config, cluster), {user: PROVISIONER_ROLE, password: await provisionerPassword(cluster), database});

  const primary = primaryCluster(config).name;
  const control = await provisionerOn(primary, CONTROL_DATABASE);
  const regions = Object.fromEntries(Object.entries(config.regions).map(([r, def]) => [r, def.clusters.map((c) => c.name)]));
  const maxTenants = Object.fromEntries(Object.values(config.regions).flatMap((def) => def.clusters.flatMap((c) => (c.maxTenants === undefined ? [] : [[c.name, c.maxTenants] as const]))));
  const dataKeys = new DataKeys(new ControlDataKeyStore(control), keys.keyring, options.clock);
  const opsLog = new OpsLog(keys);
  const tenants = new TenantService({
    control,
    regions,
    maxTenants,
    provisionerOn,
    kek: keys.keyring,
    dataKeys,
    opsLog,
    clock: options.clock,
  });
  return {
    config,
    keys,
    control,
    tenants,
    dataKeys,
    wrappedKeys: new ControlWrappedKeys(control, keys.keyring),
    opsLog,
    pgTools: options.pgTools ?? 'auto',
    provisionerOn,
    async close() {
      await control.end().catch(() => undefined);
    },
  };
}

/** Opens the control plane, runs `fn`, and always closes it. */
export async function usingControlPlane<T>(dir: InstallDir, fn: (plane: ControlPlane) => Promise<T>, options: ControlPlaneOptions = {}): Promise<T> {
  const plane = await openControlPlane(dir, options);
  try {
    return await fn(plane);
  } finally {
    await plane.close();
  }
}

/**
 * The provisioner's session on dforge_control if this install has been bootstrapped, else
 * undefined: key commands work before and after the control plane exists.
 */
export async function optionalControlConnection(dir: InstallDir): Promise<Client | undefined> {
  const exists = await fs.stat(dir.configFile).then(
    () => true,
    () => false,
  );
  if (!exists) return undefined;
  const config = await loadConfigFile(dir.configFile);
  const primary = primaryCluster(config);
  const keys = await openKeyServices(dir);
  if (!(await keys.sealed.has(provisionerSecret(primary.name)))) return undefined;
  const password = (await keys.sealed.get(provisionerSecret(primary.name))).toString('utf8');
  return connect(await endpointOf(dir, config, primary.name), {user: PROVISIONER_ROLE, password, database: CONTROL_DATABASE});
}
