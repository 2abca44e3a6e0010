import {promises as fs} from 'node:fs';

import {backupAll, type BackupAllResult} from '../backup/service.js';
import {loadConfigFile} from '../config/load.js';
import {configSchema, type DforgeConfig} from '../config/schema.js';
import {usingControlPlane} from '../control/plane.js';
import {UsageError, UserError} from '../errors.js';
import {resolvedImages} from '../render/values.js';
import {writeFileAtomic} from '../state/atomic-file.js';
import type {InstallDir} from '../state/install-dir.js';

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
