import {promises as fs} from 'node:fs';
import path from 'node:path';

import {withOpsRecord} from '../audit/record.js';
import {listBackups} from '../backup/manage.js';
import {backupAll, type BackupAllResult} from '../backup/service.js';
import {certificatesStatus} from '../certs/service.js';
import {configText} from '../config/init.js';
import {loadConfigFile} from '../config/load.js';
import {configSchema, type DforgeConfig} from '../config/schema.js';
import {usingControlPlane} from '../control/plane.js';
import {UsageError, UserError} from '../errors.js';
import {COMPOSE_FILE} from '../render/compose.js';
import {IMAGE_SERVICES, resolvedImages} from '../render/values.js';
import {ComposeStack, type ServiceState} from '../runtime/compose-stack.js';
import {writeFileAtomic} from '../state/atomic-file.js';
import type {InstallDir} from '../state/install-dir.js';
import {composeDir} from './service.js';

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
  readonly tenants: Array<{slug: string; status: string; region: string; lastBackup: string | null; staleHours: number | null}>;
  readonly certificates: Array<{name: string; notAfter: string; daysLeft: number}>;
  /** What could not be read (engine down, control database unreachable), each with its cause. */
  readonly problems: string[];
}

/** Everything `dforge status` shows; each part is read live, and a part that cannot be read is reported, not fatal. */
export async function installStatus(dir: InstallDir, options: {clock?: () => Date} = {}): Promise<StatusReport> {
  const config = await loadConfigFile(dir.configFile);
  const problems: string[] = [];
  const note = (what: string) => (err: unknown) => {
    problems.push(`${what}: ${err instanceof Error ? err.message : String(err)}`);
    return undefined;
  };
  const services = config.target === 'compose' ? ((await composeStack(dir, config).then((s) => s.services()).catch(note('services'))) ?? []) : [];
  const tenants =
    (await usingControlPlane(dir, async (plane) => {
      const [list, backups] = await Promise.all([plane.tenants.list(), listBackups(plane, {clock: options.clock})]);
      return list.map((t) => {
        const b = backups.tenants.find((x) => x.tenant === t.slug);
        return {slug: t.slug, status: t.status, region: t.region, lastBackup: b?.lastSuccess ?? null, staleHours: b?.staleHours ?? null};
      });
    }).catch(note('tenants'))) ?? [];
  const certs = (await certificatesStatus(dir, {clock: options.clock}).catch(note('certificates')))?.certificates ?? [];
  return {
    target: config.target,
    domain: config.domain,
    release: config.release,
    images: resolvedImages(config),
    services,
    tenants,
    certificates: certs.map((c) => ({name: c.name, notAfter: c.report.notAfter, daysLeft: c.report.daysLeft})),
    problems,
  };
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
  const stack = await composeStack(dir, config);
  await withOpsRecord(dir, {action: options.purge ? 'uninstall.purge' : 'uninstall', target: config.domain}, async () => undefined);
  await stack.down({volumes: options.purge});
  const backups = Object.values(config.regions).flatMap((r) => r.backup?.destinations ?? []).map((d) => (d.kind === 'local' ? d.path : `${d.kind}:${d.name}`));
  if (!options.purge) return {project: config.compose.project, purged: false, removed: [], kept: ['data volumes', dir.secretsDir, dir.configFile, ...backups]};
  // Everything in the install directory goes, except what holds a local backup destination.
  const removed: string[] = [];
  const localBackups = backups.filter((b) => path.isAbsolute(b));
  for (const name of await fs.readdir(dir.root)) {
    const entry = path.join(dir.root, name);
    if (localBackups.some((b) => b === entry || b.startsWith(`${entry}${path.sep}`))) continue;
    await fs.rm(entry, {recursive: true, force: true});
    removed.push(entry);
  }
  return {project: config.compose.project, purged: true, removed, kept: backups};
}

export interface UpgradePlan {
  readonly from: string;
  readonly to: string;
  readonly backups: BackupAllResult;
  readonly images: Record<string, string>;
}

/**
 * The first half of `dforge upgrade --to V`: a backup of every tenant (and of dforge_control),
 * then dforge.yaml moved to release V. Images pinned to the old release follow it; images pinned
 * to anything else are the operator's choice and stay. The caller then reconciles like install.
 */
export async function prepareUpgrade(dir: InstallDir, to: string, options: {report: Parameters<typeof backupAll>[1]['report']}): Promise<UpgradePlan> {
  const config = await loadConfigFile(dir.configFile);
  const parsedTo = configSchema.shape.release.safeParse(to);
  if (!parsedTo.success) throw new UsageError(`--to ${to}: ${parsedTo.error.issues[0]!.message}`, {nextSteps: ['Give a release version such as 1.4.2.']});
  // backupAll throws PartialError (exit 4) naming the tenants that failed: the upgrade stops before changing anything.
  const backups = await usingControlPlane(dir, (plane) => backupAll(plane, {concurrency: 2, report: options.report}));
  const from = config.release;
  const images = {...config.images};
  for (const service of IMAGE_SERVICES) {
    const ref = images[service];
    if (ref?.endsWith(`:${from}`)) images[service] = `${ref.slice(0, -from.length)}${to}`;
  }
  const next: DforgeConfig = {...config, release: to, images};
  await writeFileAtomic(dir.configFile, configText(next));
  return {from, to, backups, images: resolvedImages(next)};
}
