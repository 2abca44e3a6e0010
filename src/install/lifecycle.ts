import {promises as fs} from 'node:fs';
import path from 'node:path';

import {listBackups} from '../backup/manage.js';
import {certificatesStatus} from '../certs/service.js';
import {loadConfigFile} from '../config/load.js';
import type {DforgeConfig, InstallTarget} from '../config/schema.js';
import {openControlPlane} from '../control/plane.js';
import {UserError} from '../errors.js';
import {COMPOSE_FILE} from '../render/compose.js';
import {resolvedImages} from '../render/values.js';
import {clusterProblems, embeddedClusterStates, type EmbeddedClusterState} from '../postgres/embedded-ops.js';
import {ComposeStack, serviceProblems, type ServiceState} from '../runtime/compose-stack.js';
import {acquireLock} from '../state/lock.js';
import type {InstallDir} from '../state/install-dir.js';
import {composeDir} from './compose-steps.js';

/**
 * One install, upgrade or uninstall at a time per install directory: two first installs racing
 * would each generate credentials, and one of them would lock the other out of its own database.
 * A concurrent run exits 5 and names the holder.
 */
export async function withStackLock<T>(dir: InstallDir, command: string, fn: () => Promise<T>): Promise<T> {
  await fs.mkdir(dir.root, {recursive: true, mode: 0o755});
  const lock = await acquireLock(dir.locksDir, 'stack', {command});
  try {
    return await fn();
  } finally {
    await lock.release();
  }
}

/** The compose stack of an install, driven by its rendered compose file. */
export async function composeStack(dir: InstallDir, config: DforgeConfig): Promise<ComposeStack> {
  const [{connectDockerEngine}, {detectComposeCli}] = await Promise.all([import('../docker/engine.js'), import('../runtime/compose-cli.js')]);
  const composeFile = path.join(composeDir(dir), COMPOSE_FILE);
  await fs.access(composeFile).catch(() => {
    throw new UserError(`no rendered stack at ${composeFile}`, {nextSteps: ['Run dforge install first (it renders and starts the stack).']});
  });
  return new ComposeStack({cli: await detectComposeCli(), composeFile, project: config.compose.project, docker: await connectDockerEngine()});
}

export interface StatusReport {
  readonly target: InstallTarget;
  readonly domain: string;
  readonly release: string;
  readonly images: Record<string, string>;
  readonly services: ServiceState[];
  /** The embedded clusters (none for compose and k8s): pg_ctl's view and a live session's server_version. */
  readonly clusters: EmbeddedClusterState[];
  readonly tenants: Array<{slug: string; status: string; region: string; lastBackup: string | null; staleHours: number | null}>;
  readonly certificates: Array<{name: string; notAfter: string; daysLeft: number}>;
  /**
   * What is wrong, one sentence each: a service down or unhealthy, a cluster stopped or not
   * answering, a part that could not be read (engine down, control database unreachable).
   */
  readonly problems: string[];
}

/**
 * Everything `dforge status` shows; each part is read live. A part that cannot be read, or a
 * service or cluster that is not up, is a problem entry rather than an exception, so the rest of
 * the report still shows; the command exits 3 when there is any.
 */
export async function installStatus(dir: InstallDir, options: {clock?: () => Date} = {}): Promise<StatusReport> {
  const config = await loadConfigFile(dir.configFile);
  const problems: string[] = [];
  const note = (what: string) => (err: unknown) => {
    problems.push(`could not read ${what}: ${err instanceof Error ? err.message : String(err)}`);
    return undefined;
  };
  const plane = await openControlPlane(dir, {clock: options.clock}).catch(note('tenants'));
  try {
    const [services, clusters, tenants, certs] = await Promise.all([
      config.target === 'compose' ? composeStack(dir, config).then((s) => s.services()).catch(note('services')) : [],
      embeddedClusterStates(dir, config, async (cluster) => {
        if (!plane) throw new Error('no session: dforge_control could not be reached (see the tenants problem)');
        return plane.provisionerOn(cluster);
      }).catch(note('embedded clusters')),
      plane
        ? Promise.all([plane.tenants.list(), listBackups(plane, {clock: options.clock})])
            .then(([list, backups]) =>
              list.map((t) => {
                const b = backups.tenants.find((x) => x.tenant === t.slug);
                return {slug: t.slug, status: t.status, region: t.region, lastBackup: b?.lastSuccess ?? null, staleHours: b?.staleHours ?? null};
              }),
            )
            .catch(note('tenants'))
        : [],
      certificatesStatus(dir, {clock: options.clock}).catch(note('certificates')),
    ]);
    if (services && config.target === 'compose') problems.push(...serviceProblems(services));
    if (clusters) problems.push(...clusterProblems(clusters));
    return {
      target: config.target,
      domain: config.domain,
      release: config.release,
      images: resolvedImages(config),
      services: services ?? [],
      clusters: clusters ?? [],
      tenants: tenants ?? [],
      certificates: (certs?.certificates ?? []).map((c) => ({name: c.name, notAfter: c.report.notAfter, daysLeft: c.report.daysLeft})),
      problems,
    };
  } finally {
    await plane?.close();
  }
}
