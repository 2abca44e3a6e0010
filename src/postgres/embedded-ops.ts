import type {Client} from 'pg';

import {loadConfigFile} from '../config/load.js';
import type {DforgeConfig} from '../config/schema.js';
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

export interface EmbeddedClusterState extends EmbeddedStatus {
  readonly cluster: string;
  /** The live server's server_version, read on a session; null when none could be opened. */
  readonly serverVersion: string | null;
  /** Why no session could be opened to a server pg_ctl reports running. */
  readonly unreachable?: string;
}

/**
 * Each embedded cluster as pg_ctl sees it (postmaster.pid and a live process) and, when running,
 * through a session: a postmaster that is up but accepts nothing (recovery, full slots, a broken
 * certificate) is not a working database. `connect` opens a session as the provisioner.
 */
export async function embeddedClusterStates(dir: InstallDir, config: DforgeConfig, connect: (cluster: string) => Promise<Client>): Promise<EmbeddedClusterState[]> {
  return Promise.all(
    embeddedClusterNames(config).map(async (name): Promise<EmbeddedClusterState> => {
      const status = await embeddedCluster(dir, config, name).status();
      if (!status.running) return {cluster: name, ...status, serverVersion: null};
      try {
        const client = await connect(name);
        try {
          const {rows} = await client.query<{v: string}>("SELECT pg_catalog.current_setting('server_version') AS v");
          return {cluster: name, ...status, serverVersion: rows[0]!.v};
        } finally {
          await client.end().catch(() => undefined);
        }
      } catch (err) {
        return {cluster: name, ...status, serverVersion: null, unreachable: err instanceof Error ? err.message : String(err)};
      }
    }),
  );
}

/** What is wrong with the embedded clusters, one sentence each; empty when every one is up and answers. */
export function clusterProblems(states: readonly EmbeddedClusterState[]): string[] {
  return states.flatMap((s) => {
    if (!s.initialised) return [`PostgreSQL cluster ${s.cluster} is not initialised (${s.dataDir})`];
    if (!s.running) return [`PostgreSQL cluster ${s.cluster} is not running (start it with: dforge db start --cluster ${s.cluster})`];
    if (s.unreachable !== undefined) return [`PostgreSQL cluster ${s.cluster} is running but does not answer: ${s.unreachable}`];
    return [];
  });
}

/** The systemd unit name `dforge db unit` renders for a cluster. */
export const embeddedUnitName = (cluster: string): string => `dforge-postgres-${cluster}.service`;

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
  return names.map((name) => ({cluster: name, unitName: embeddedUnitName(name), unit: embeddedCluster(dir, config, name).renderSystemdUnit({description: `dForge embedded PostgreSQL (${name})`})}));
}
