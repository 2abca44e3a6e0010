import {promises as fs} from 'node:fs';
import path from 'node:path';

import {loadCertificateWithKey} from '../certs/store.js';
import {bootstrapCluster, PROVISIONER_ROLE, type BootstrapResult} from '../control/bootstrap.js';
import {caCertFile} from '../certs/pki-paths.js';
import {clustersOf, primaryCluster, provisionerSecret, superuserSecret} from '../control/clusters.js';
import type {DforgeConfig} from '../config/schema.js';
import {UserError} from '../errors.js';
import type {KeyServices} from '../keys/context.js';
import {ensureSealedPassword} from '../keys/sealed-password.js';
import type {InstallDir} from '../state/install-dir.js';
import {findPostgresBinaries} from './binaries.js';
import {connect, connectOverSocket} from './connect.js';
import {EmbeddedPostgres} from './embedded.js';
import {serverAccount} from './service-account.js';

/** The superuser of an embedded cluster: reachable only on its unix socket (see pg_hba). */
export const EMBEDDED_SUPERUSER = 'dforge_admin';

/** The install's embedded clusters, by name. */
export function embeddedClusterNames(config: DforgeConfig): string[] {
  return [...clustersOf(config)].filter(([, e]) => e.cluster.kind === 'embedded').map(([name]) => name);
}

/** Where cluster `name` keeps its data and its socket and logs, inside the install directory. */
export function embeddedClusterPaths(dir: InstallDir, name: string): {dataDir: string; runDir: string} {
  return {dataDir: path.join(dir.root, 'data', 'postgres', name), runDir: path.join(dir.root, 'run', 'postgres', name)};
}

/** The embedded PostgreSQL of cluster `name`, inside the install directory. */
export function embeddedCluster(dir: InstallDir, config: DforgeConfig, name: string): EmbeddedPostgres {
  const entry = clustersOf(config).get(name);
  if (!entry || entry.cluster.kind !== 'embedded') {
    throw new UserError(`cluster ${name} is not an embedded cluster in ${dir.configFile}`, {nextSteps: [`Embedded clusters: ${embeddedClusterNames(config).join(', ') || 'none'}`]});
  }
  return new EmbeddedPostgres({
    ...embeddedClusterPaths(dir, name),
    port: entry.cluster.port,
    bins: findPostgresBinaries(),
    account: serverAccount(),
  });
}

export interface EmbeddedSetUp {
  readonly cluster: string;
  readonly initialised: boolean;
  readonly started: boolean;
  readonly bootstrap: BootstrapResult;
  readonly dataDir: string;
  readonly port: number;
}

/**
 * Initialises (first time only), configures, starts and bootstraps one embedded cluster: TLS 1.3
 * with the install's `postgres` certificate, scram-sha-256, the sameuser pg_hba, the provisioner
 * role, and dforge_control on the primary cluster. Idempotent.
 */
export async function setUpEmbeddedCluster(dir: InstallDir, keys: KeyServices, config: DforgeConfig, name: string): Promise<EmbeddedSetUp> {
  const pg = embeddedCluster(dir, config, name);
  const superuserPassword = (await ensureSealedPassword(keys, superuserSecret(name))).value;
  const provisionerPassword = (await ensureSealedPassword(keys, provisionerSecret(name))).value;
  const leaf = await loadCertificateWithKey(dir, keys.sealed, 'postgres');
  const caPem = await fs.readFile(caCertFile(dir), 'utf8');
  const init = await pg.init({superuser: EMBEDDED_SUPERUSER, superuserPassword, tls: {...leaf, caPem}, provisionerRole: PROVISIONER_ROLE});
  const {started} = await pg.start();
  const admin = await connectOverSocket(pg.runDir, pg.port, {user: EMBEDDED_SUPERUSER, password: superuserPassword, database: 'postgres'});
  let bootstrap: BootstrapResult;
  try {
    const endpoint = {name, host: '127.0.0.1', port: pg.port, caPem, servername: 'localhost'};
    bootstrap = await bootstrapCluster(admin, {
      provisionerPassword,
      withControlDatabase: primaryCluster(config).name === name,
      connectAsProvisioner: (database) => connect(endpoint, {user: PROVISIONER_ROLE, password: provisionerPassword, database}),
      connectAsAdmin: (database) => connectOverSocket(pg.runDir, pg.port, {user: EMBEDDED_SUPERUSER, password: superuserPassword, database}),
    });
  } finally {
    await admin.end().catch(() => undefined);
  }
  return {cluster: name, initialised: init.initialised, started, bootstrap, dataDir: pg.dataDir, port: pg.port};
}
