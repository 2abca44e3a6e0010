import {promises as fs} from 'node:fs';
import path from 'node:path';

import {withOpsRecord} from '../audit/record.js';
import {listBackups} from '../backup/manage.js';
import {backupAll, type BackupAllResult} from '../backup/service.js';
import {certificatesStatus} from '../certs/service.js';
import {loadConfigFile} from '../config/load.js';
import {configSchema, type DforgeConfig} from '../config/schema.js';
import {openControlPlane, pkiDir, usingControlPlane} from '../control/plane.js';
import {UsageError, UserError} from '../errors.js';
import {COMPOSE_FILE} from '../render/compose.js';
import {resolvedImages} from '../render/values.js';
import {clusterProblems, embeddedClusterStates, type EmbeddedClusterState} from '../postgres/embedded-ops.js';
import {ComposeStack, serviceProblems, type ServiceState} from '../runtime/compose-stack.js';
import {writeFileAtomic} from '../state/atomic-file.js';
import {acquireLock} from '../state/lock.js';
import type {InstallDir} from '../state/install-dir.js';
import {composeDir} from './service.js';

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
async function composeStack(dir: InstallDir, config: DforgeConfig): Promise<ComposeStack> {
  const [{connectDockerEngine}, {detectComposeCli}] = await Promise.all([import('../docker/engine.js'), import('../runtime/compose-cli.js')]);
  const composeFile = path.join(composeDir(dir), COMPOSE_FILE);
  await fs.access(composeFile).catch(() => {
    throw new UserError(`no rendered stack at ${composeFile}`, {nextSteps: ['Run dforge install first (it renders and starts the stack).']});
  });
  return new ComposeStack({cli: await detectComposeCli(), composeFile, project: config.compose.project, docker: await connectDockerEngine()});
}

export interface StatusReport {
  readonly target: DforgeConfig['target'];
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

export interface UninstallResult {
  readonly project: string;
  readonly purged: boolean;
  /** What --purge deleted from the install directory. */
  readonly removed: string[];
  /** What stays: the data volumes and secrets without --purge; backups always. */
  readonly kept: string[];
}

/**
 * Stops and removes the stack. Volumes (the databases) and the install directory's secrets stay
 * unless `purge`, which the command only passes after --confirm <domain>. Backup destinations are
 * never touched; with the master key gone, their files are unreadable.
 */
export async function uninstall(dir: InstallDir, options: {purge: boolean}): Promise<UninstallResult> {
  const config = await loadConfigFile(dir.configFile);
  if (config.target !== 'compose') {
    throw new UsageError(`uninstall removes a compose stack; this install's target is ${config.target}`, {
      nextSteps: config.target === 'k8s' ? ['Delete the Kubernetes objects with: kubectl delete -k <dir>/runtime/k8s (the volume claims of the StatefulSets stay until you delete them).'] : ['Stop the embedded cluster with: dforge db stop'],
    });
  }
  const stack = await composeStack(dir, config);
  // Written before the stack goes: afterwards there is no control database to write to.
  await withOpsRecord(dir, {action: options.purge ? 'uninstall.purge' : 'uninstall', target: config.domain, details: () => ({phase: 'requested'})}, async () => undefined);
  await stack.down({volumes: options.purge});
  const backups = Object.values(config.regions).flatMap((r) => r.backup?.destinations ?? []).map((d) => (d.kind === 'local' ? path.resolve(d.path) : `${d.kind}:${d.name}`));
  if (!options.purge) return {project: config.compose.project, purged: false, removed: [], kept: ['data volumes', dir.secretsDir, dir.configFile, ...backups]};
  // Exactly what dforge put in the install directory; templates/ overrides and anything else an
  // operator keeps there stay, and so does a backup destination inside one of these paths.
  const removed: string[] = [];
  const owned = [dir.configFile, path.join(dir.root, 'dforge.schema.json'), dir.secretsDir, dir.runtimeDir, dir.renderedDir, pkiDir(dir), path.join(dir.root, 'state'), dir.libpqSessionsDir];
  for (const entry of owned) {
    if (backups.some((b) => b === entry || b.startsWith(`${entry}${path.sep}`))) continue;
    if (await fs.stat(entry).then(() => true, () => false)) {
      await fs.rm(entry, {recursive: true, force: true});
      removed.push(entry);
    }
  }
  return {project: config.compose.project, purged: true, removed, kept: backups};
}

export interface UpgradePlan {
  readonly from: string;
  readonly to: string;
  readonly backups: BackupAllResult;
  readonly images: Record<string, string>;
  /** Images set to something other than the old release's tag (a digest, another tag): left as they are. */
  readonly pinned: string[];
}

/**
 * The first half of `dforge upgrade --to V`: a backup of every tenant (and of dforge_control),
 * then dforge.yaml moved to release V. Images pinned to the old release follow it; images pinned
 * to anything else are the operator's choice and stay. The caller then reconciles like install.
 */
export async function prepareUpgrade(dir: InstallDir, to: string, options: {report: Parameters<typeof backupAll>[1]['report']; imagePresent: (ref: string) => Promise<boolean>}): Promise<UpgradePlan> {
  const config = await loadConfigFile(dir.configFile);
  const parsedTo = configSchema.shape.release.safeParse(to);
  if (!parsedTo.success) throw new UsageError(`--to ${to}: ${parsedTo.error.issues[0]!.message}`, {nextSteps: ['Give a release version such as 1.4.2.']});
  const from = config.release;
  if (from === to) {
    throw new UsageError(`this install is already at release ${to}`, {nextSteps: ['To finish an interrupted upgrade, or to reconcile, run: dforge install']});
  }
  const images = {...config.images};
  const pinned: string[] = [];
  // Every image set in dforge.yaml, the backup job's dforge image included.
  const services = Object.keys(images) as Array<keyof typeof images>;
  for (const service of services) {
    const ref = images[service];
    if (ref?.endsWith(`:${from}`)) images[service] = `${ref.slice(0, -from.length)}${to}`;
    else if (ref) pinned.push(`${service}=${ref}`);
  }
  const next: DforgeConfig = {...config, release: to, images};
  // Nothing changes unless every image of the new release is there to start. On Kubernetes the
  // cluster pulls them from its registry, which this host need not reach.
  const missing: string[] = [];
  if (config.target === 'compose') for (const ref of new Set(Object.values(resolvedImages(next)))) if (!(await options.imagePresent(ref))) missing.push(ref);
  if (missing.length > 0) {
    throw new UserError(`the images of release ${to} are not in the local engine: ${missing.join(', ')}`, {
      nextSteps: ['Pull them (docker pull <image>) or load their archives (docker load -i <file>), then run the upgrade again. Nothing was changed.'],
    });
  }
  // backupAll throws PartialError (exit 4) naming the tenants that failed: the upgrade stops before changing anything.
  const backups = await usingControlPlane(dir, (plane) => backupAll(plane, {concurrency: 2, report: options.report}));
  // The operator's file is edited in place (comments and layout kept), with the previous one beside it.
  const text = await fs.readFile(dir.configFile, 'utf8');
  const {parseDocument} = await import('yaml');
  const doc = parseDocument(text);
  doc.set('release', to);
  for (const service of services) if (images[service] !== config.images[service]) doc.setIn(['images', service], images[service]);
  // One copy per release left, never overwritten: the way back to exactly what ran before.
  await writeFileAtomic(`${dir.configFile}.pre-upgrade-${from}`, text, {mode: 0o644});
  await writeFileAtomic(dir.configFile, doc.toString({lineWidth: 0}));
  return {from, to, backups, images: resolvedImages(next), pinned};
}
