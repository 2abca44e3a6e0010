import {promises as fs} from 'node:fs';

import type {Client} from 'pg';

import {loadConfigFile} from '../config/load.js';
import type {DforgeConfig} from '../config/schema.js';
import {bootstrapCluster, CONTROL_DATABASE, PROVISIONER_ROLE} from '../control/bootstrap.js';
import {caCertFile} from '../certs/pki-paths.js';
import {serviceHost} from '../certs/service-names.js';
import {endpointOf, primaryCluster, provisionerSecret, superuserSecret} from '../control/clusters.js';
import {UserError} from '../errors.js';
import {ensureAuthDatabase} from '../install/auth-db.js';
import {AUTH_DB_PASSWORD_SECRET, AUTH_DB_SUPERUSER_SECRET} from '../install/secrets.js';
import {openKeyServices, type KeyServices} from '../keys/context.js';
import {connect, type ClusterEndpoint} from '../postgres/connect.js';
import {EMBEDDED_SUPERUSER} from '../postgres/embedded-install.js';
import {findBundledCluster} from '../render/values.js';
import type {InstallDir} from '../state/install-dir.js';

/**
 * The in-cluster bootstrap of a Kubernetes install (the Job dforge-bootstrap, templates/k8s/
 * bootstrap-job.yaml, runs `dforge k8s bootstrap` for it): on the bundled postgres, the
 * provisioner role, the tenant template and dforge_control (bootstrapCluster); on auth-db, the
 * auth role and database (ensureAuthDatabase). The same steps as the compose install's Bootstrap,
 * from inside the namespace, because only there are the Services reachable.
 *
 * Every credential comes from the install's sealed store as `install --target k8s` packed it
 * (dforge-bootstrap-install) and opens with the master key the pod mounts: the Job creates no secret, so a
 * rerun sets the same passwords and changes nothing else (every step is idempotent).
 */

/** Where the Job reaches the databases: the bundled postgres (none with external clusters only) and auth-db. */
export interface KubernetesBootstrapTargets {
  readonly postgres?: ClusterEndpoint;
  readonly authDb: ClusterEndpoint;
}

export interface KubernetesBootstrapResult {
  /** The bundled cluster bootstrapped, with dforge_control when it is the primary; absent without one. */
  readonly cluster?: {readonly name: string; readonly provisionerCreated: boolean; readonly controlDatabaseCreated: boolean; readonly migrationsApplied: number[]};
  readonly authDatabaseCreated: boolean;
}

/** The Services of the namespace, as the Job sees them, each checked against the install CA for the name its certificate carries. */
export async function kubernetesBootstrapTargets(dir: InstallDir, config: DforgeConfig): Promise<KubernetesBootstrapTargets> {
  const bundled = findBundledCluster(config);
  const authDbHost = serviceHost(config, 'auth-db');
  const caPem = await fs.readFile(caCertFile(dir), 'utf8');
  return {
    ...(bundled ? {postgres: await endpointOf(dir, config, bundled.name)} : {}),
    authDb: {name: 'auth-db', host: authDbHost, port: 5432, caPem, servername: authDbHost},
  };
}

async function sealedValue(dir: InstallDir, keys: KeyServices, name: string): Promise<string> {
  if (!(await keys.sealed.has(name))) {
    throw new UserError(`the install has no sealed secret ${name}: the Secret dforge-bootstrap-install predates it`, {
      nextSteps: [`Run dforge install --target k8s on the dforge host (it seals every credential the Job reads into ${dir.secretsDir}), then apply the overlay again.`],
    });
  }
  return (await keys.sealed.get(name)).toString('utf8');
}

async function closing<T>(client: Client, fn: (client: Client) => Promise<T>): Promise<T> {
  try {
    return await fn(client);
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** `targets` says where the databases are: the namespace's Services by default, as the Job reaches them. */
export async function bootstrapKubernetes(dir: InstallDir, targets: (dir: InstallDir, config: DforgeConfig) => Promise<KubernetesBootstrapTargets> = kubernetesBootstrapTargets): Promise<KubernetesBootstrapResult> {
  const config = await loadConfigFile(dir.configFile);
  const {postgres, authDb} = await targets(dir, config);
  const keys = await openKeyServices(dir);
  const bundled = findBundledCluster(config);
  let cluster: KubernetesBootstrapResult['cluster'];
  if (bundled) {
    const endpoint = postgres;
    if (!endpoint) throw new UserError(`no address for the bundled cluster ${bundled.name}`, {nextSteps: ['This is a dforge bug: the bootstrap targets miss the bundled cluster. Please report it.']});
    const superuser = await sealedValue(dir, keys, superuserSecret(bundled.name));
    const provisioner = await sealedValue(dir, keys, provisionerSecret(bundled.name));
    const asAdmin = (database: string): Promise<Client> => connect(endpoint, {user: EMBEDDED_SUPERUSER, password: superuser, database});
    const r = await closing(await asAdmin('postgres'), (admin) =>
      bootstrapCluster(admin, {
        provisionerPassword: provisioner,
        withControlDatabase: primaryCluster(config).name === bundled.name,
        connectAsProvisioner: (database) => connect(endpoint, {user: PROVISIONER_ROLE, password: provisioner, database}),
        connectAsAdmin: asAdmin,
      }),
    );
    cluster = {name: bundled.name, provisionerCreated: r.provisionerCreated, controlDatabaseCreated: r.controlDatabaseCreated, migrationsApplied: r.migrationsApplied};
  }
  const authSuperuser = await sealedValue(dir, keys, AUTH_DB_SUPERUSER_SECRET);
  const authPassword = await sealedValue(dir, keys, AUTH_DB_PASSWORD_SECRET);
  const auth = await closing(await connect(authDb, {user: EMBEDDED_SUPERUSER, password: authSuperuser, database: 'postgres'}), (admin) => ensureAuthDatabase(admin, authPassword));
  return {...(cluster ? {cluster} : {}), authDatabaseCreated: auth.created};
}

/** For messages: what the Job set up. */
export function describeBootstrap(r: KubernetesBootstrapResult): string {
  const control = r.cluster ? `${r.cluster.name}${r.cluster.controlDatabaseCreated ? `, ${CONTROL_DATABASE} created` : ''}` : 'no bundled cluster';
  return `${control}; auth-db ${r.authDatabaseCreated ? 'created' : 'ready'}`;
}
