import type {Client} from 'pg';

import {OpsLog} from '../audit/ops-log.js';
import type {PgToolsMode} from '../backup/pg-tools-mode.js';
import {loadConfigFile} from '../config/load.js';
import type {DforgeConfig} from '../config/schema.js';
import {UserError} from '../errors.js';
import {openKeyServices, type KeyServices} from '../keys/context.js';
import {connect} from '../postgres/connect.js';
import {DataKeys} from '../secrets/data-keys.js';
import type {InstallDir} from '../state/install-dir.js';
import {TenantService} from '../tenants/service.js';
import {CONTROL_DATABASE, PROVISIONER_ROLE} from './bootstrap.js';
import {endpointOf, primaryCluster, provisionerSecret} from './clusters.js';
import {ControlDataKeyStore, ControlWrappedKeys} from './keys-store.js';

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
