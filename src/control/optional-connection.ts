import {promises as fs} from 'node:fs';

import type {Client} from 'pg';

import {loadConfigFile} from '../config/load.js';
import {openKeyServices} from '../keys/context.js';
import {connect} from '../postgres/connect.js';
import type {InstallDir} from '../state/install-dir.js';
import {CONTROL_DATABASE, PROVISIONER_ROLE} from './bootstrap.js';
import {endpointOf, primaryCluster, provisionerSecret} from './clusters.js';

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
