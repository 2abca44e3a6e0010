import pg from 'pg';

import {OpsLog} from '../../src/audit/ops-log.js';
import {bootstrapCluster, CONTROL_DATABASE, PROVISIONER_ROLE} from '../../src/control/bootstrap.js';
import {ControlDataKeyStore} from '../../src/control/keys-store.js';
import {openKeyServices} from '../../src/keys/context.js';
import {initKeys} from '../../src/keys/init.js';
import type {ClusterEndpoint} from '../../src/postgres/connect.js';
import {DataKeys} from '../../src/secrets/data-keys.js';
import type {LocalMasterKeyring} from '../../src/secrets/master-key.js';
import {TenantService, type TenantDeps} from '../../src/tenants/service.js';
import {tempInstall} from './install-fixture.js';
import type {PgCluster} from './pg-cluster.js';

export interface ControlPlane {
  readonly service: TenantService;
  readonly deps: TenantDeps;
  readonly control: pg.Client;
  readonly kek: LocalMasterKeyring;
  readonly provisionerPassword: string;
  endpoint(cluster: string): ClusterEndpoint;
  close(): Promise<void>;
}

/**
 * dforge's control plane over real test clusters: a temp install with keys, every cluster
 * bootstrapped (the first one holds dforge_control), and a TenantService wired to them.
 */
export async function controlPlaneOver(clusters: Record<string, {cluster: PgCluster; region: string; maxTenants?: number}>, options: {connectionLimit?: number} = {}): Promise<ControlPlane> {
  const install = await tempInstall();
  await initKeys(install, {command: 'test'});
  const keys = await openKeyServices(install);
  const provisionerPassword = 'test-provisioner-password-0123456789';
  const names = Object.keys(clusters);
  const endpoint = (name: string): ClusterEndpoint => {
    const c = clusters[name]!.cluster;
    return {name, host: c.host, port: c.port, caPem: c.ca.caCertPem, servername: 'localhost'};
  };
  const connect = async (name: string, user: string, password: string, database: string): Promise<pg.Client> => {
    const client = new pg.Client(clusters[name]!.cluster.clientConfig({user, password, database}));
    await client.connect();
    return client;
  };
  for (const [i, name] of names.entries()) {
    const admin = new pg.Client(clusters[name]!.cluster.clientConfig());
    await admin.connect();
    try {
      await bootstrapCluster(admin, {
        provisionerPassword,
        withControlDatabase: i === 0,
        connectAsProvisioner: (db) => connect(name, PROVISIONER_ROLE, provisionerPassword, db),
        connectAsAdmin: async (db) => {
          const c = new pg.Client(clusters[name]!.cluster.clientConfig({database: db}));
          await c.connect();
          return c;
        },
      });
    } finally {
      await admin.end();
    }
  }
  const control = await connect(names[0]!, PROVISIONER_ROLE, provisionerPassword, CONTROL_DATABASE);
  const regions: Record<string, string[]> = {};
  const maxTenants: Record<string, number> = {};
  for (const [name, {region, maxTenants: capacity}] of Object.entries(clusters)) {
    (regions[region] ??= []).push(name);
    if (capacity !== undefined) maxTenants[name] = capacity;
  }
  const deps: TenantDeps = {
    control,
    regions,
    maxTenants,
    provisionerOn: (cluster, database = 'postgres') => connect(cluster, PROVISIONER_ROLE, provisionerPassword, database),
    kek: keys.keyring,
    dataKeys: new DataKeys(new ControlDataKeyStore(control), keys.keyring),
    opsLog: new OpsLog(keys),
    connectionLimit: options.connectionLimit,
  };
  return {
    service: new TenantService(deps),
    deps,
    control,
    kek: keys.keyring,
    provisionerPassword,
    endpoint,
    async close() {
      await control.end().catch(() => undefined);
      await install.cleanup();
    },
  };
}
