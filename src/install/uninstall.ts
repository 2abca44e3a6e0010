import {promises as fs} from 'node:fs';
import path from 'node:path';

import {withOpsRecord} from '../audit/record.js';
import {loadConfigFile} from '../config/load.js';
import {pkiDir} from '../control/plane.js';
import {UsageError} from '../errors.js';
import type {InstallDir} from '../state/install-dir.js';
import {composeStack} from './lifecycle.js';

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
