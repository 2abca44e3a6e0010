import {loadConfigFile} from '../config/load.js';
import {UserError} from '../errors.js';
import type {InstallDir} from '../state/install-dir.js';
import type {EmbeddedStatus} from './embedded.js';
import {embeddedCluster, embeddedClusterNames} from './embedded-install.js';

/** The embedded clusters an operator named, or all of them. */
async function targets(dir: InstallDir, cluster?: string): Promise<{names: string[]; config: Awaited<ReturnType<typeof loadConfigFile>>}> {
  const config = await loadConfigFile(dir.configFile);
  const names = embeddedClusterNames(config);
  if (names.length === 0) throw new UserError(`${dir.configFile} declares no embedded cluster`, {nextSteps: ['The db commands manage the embedded data plane only (kind: embedded).']});
  if (cluster && !names.includes(cluster)) throw new UserError(`no embedded cluster ${cluster}`, {nextSteps: [`Embedded clusters: ${names.join(', ')}`]});
  return {names: cluster ? [cluster] : names, config};
}

export async function embeddedStatus(dir: InstallDir, cluster?: string): Promise<Array<EmbeddedStatus & {cluster: string}>> {
  const {names, config} = await targets(dir, cluster);
  return Promise.all(names.map(async (name) => ({cluster: name, ...(await embeddedCluster(dir, config, name).status())})));
}

export async function embeddedStart(dir: InstallDir, cluster?: string): Promise<Array<{cluster: string; started: boolean}>> {
  const {names, config} = await targets(dir, cluster);
  const out = [];
  for (const name of names) {
    const pg = embeddedCluster(dir, config, name);
    if (!(await pg.status()).initialised) throw new UserError(`embedded cluster ${name} is not initialised`, {nextSteps: ['Set it up with: dforge quickstart (evaluation) or dforge install --target embedded']});
    out.push({cluster: name, ...(await pg.start())});
  }
  return out;
}

export async function embeddedStop(dir: InstallDir, options: {cluster?: string; immediate?: boolean}): Promise<Array<{cluster: string; stopped: boolean}>> {
  const {names, config} = await targets(dir, options.cluster);
  const out = [];
  for (const name of names) out.push({cluster: name, ...(await embeddedCluster(dir, config, name).stop({mode: options.immediate ? 'immediate' : 'fast'}))});
  return out;
}

export async function embeddedUnit(dir: InstallDir, cluster?: string): Promise<Array<{cluster: string; unitName: string; unit: string}>> {
  const {names, config} = await targets(dir, cluster);
  return names.map((name) => ({cluster: name, unitName: `dforge-postgres-${name}.service`, unit: embeddedCluster(dir, config, name).renderSystemdUnit({description: `dForge embedded PostgreSQL (${name})`})}));
}
