import {promises as fs} from 'node:fs';
import path from 'node:path';

import {withOpsRecord} from '../audit/record.js';
import {destinationFor, destinationsOf} from '../backup/destination.js';
import {loadConfigFile} from '../config/load.js';
import type {DforgeConfig} from '../config/schema.js';
import {pkiDir} from '../certs/pki-paths.js';
import {UsageError} from '../errors.js';
import {embeddedClusterNames, embeddedClusterPaths} from '../postgres/embedded-install.js';
import {embeddedStop} from '../postgres/embedded-ops.js';
import type {InstallDir} from '../state/install-dir.js';
import {composeStack} from './lifecycle.js';

export interface UninstallResult {
  readonly target: 'compose' | 'embedded';
  /** The compose project taken down; null for an embedded install. */
  readonly project: string | null;
  /** Embedded clusters that were running and were stopped. */
  readonly stopped: string[];
  readonly purged: boolean;
  /** What --purge deleted from the install directory. */
  readonly removed: string[];
  /** What stays: the data and secrets without --purge; backups always. */
  readonly kept: string[];
  /** With --purge: the backup files that nothing can decrypt once the master key is gone (unless it was exported). */
  readonly orphanedBackups: string[];
}

/** The install's backup destinations, as paths (local) or kind:name. */
function destinationLabels(config: DforgeConfig): string[] {
  return [...destinationsOf(config).values()].map(({config: d}) => (d.kind === 'local' ? path.resolve(d.path) : `${d.kind}:${d.name}`));
}

/**
 * Every backup file in the install's destinations: what becomes unreadable when the master key
 * goes. Read from the destinations rather than the catalog, because the files are what is
 * orphaned, and the catalog lives in a database uninstall is about to stop.
 */
export async function backupsNeedingMasterKey(config: DforgeConfig): Promise<string[]> {
  const found: string[] = [];
  for (const [region, r] of Object.entries(config.regions)) {
    for (const d of r.backup?.destinations ?? []) {
      if (d.kind !== 'local') {
        // Not listed from here; every backup there is as unreadable, so the destination is named.
        found.push(`${d.kind}:${d.name} (every backup in it; not listed)`);
        continue;
      }
      const destination = destinationFor(region, d);
      for (const location of await destination.list('')) if (location.endsWith('.dfb')) found.push(destination.describe(location));
    }
  }
  return found;
}

/**
 * Stops the install: compose takes the stack down, embedded stops PostgreSQL. The data (volumes,
 * the embedded data directory) and the install directory's secrets stay unless `purge`, which the
 * command only passes after --confirm <domain>. Backup destinations are never touched; with the
 * master key gone, their files are unreadable, and the result names them.
 */
export async function uninstall(dir: InstallDir, options: {purge: boolean}): Promise<UninstallResult> {
  const config = await loadConfigFile(dir.configFile);
  if (config.target === 'k8s') {
    throw new UsageError(`uninstall removes a compose stack or an embedded install; this install's target is ${config.target}`, {
      nextSteps: ['Delete the Kubernetes objects with: kubectl delete -k <dir>/runtime/k8s (the volume claims of the StatefulSets stay until you delete them).'],
    });
  }
  const backups = destinationLabels(config);
  const orphanedBackups = options.purge ? await backupsNeedingMasterKey(config) : [];
  // Written before the stack goes: afterwards there is no control database to write to.
  await withOpsRecord(dir, {action: options.purge ? 'uninstall.purge' : 'uninstall', target: config.domain, details: () => ({phase: 'requested', target: config.target, orphanedBackups: orphanedBackups.length})}, async () => undefined);

  let project: string | null = null;
  let stopped: string[] = [];
  const dataPaths: string[] = [];
  if (config.target === 'compose') {
    project = config.compose.project;
    await (await composeStack(dir, config)).down({volumes: options.purge});
  } else {
    stopped = (await embeddedStop(dir, {})).filter((s) => s.stopped).map((s) => s.cluster);
    for (const name of embeddedClusterNames(config)) {
      const {dataDir, runDir} = embeddedClusterPaths(dir, name);
      dataPaths.push(dataDir, runDir);
    }
  }
  const base = {target: config.target, project, stopped};
  if (!options.purge) {
    return {...base, purged: false, removed: [], kept: [...(config.target === 'compose' ? ['data volumes'] : dataPaths), dir.secretsDir, dir.configFile, ...backups], orphanedBackups};
  }
  // Exactly what dforge put in the install directory; templates/ overrides and anything else an
  // operator keeps there stay, and so does a backup destination inside one of these paths.
  const removed: string[] = [];
  const owned = [dir.configFile, path.join(dir.root, 'dforge.schema.json'), dir.secretsDir, dir.runtimeDir, dir.renderedDir, pkiDir(dir), path.join(dir.root, 'state'), dir.libpqSessionsDir, ...dataPaths];
  for (const entry of owned) {
    if (backups.some((b) => b === entry || b.startsWith(`${entry}${path.sep}`))) continue;
    if (await fs.stat(entry).then(() => true, () => false)) {
      await fs.rm(entry, {recursive: true, force: true});
      removed.push(entry);
    }
  }
  // The parents dforge made for the cluster directories go too, when nothing else is left in them.
  for (const parent of [...new Set(dataPaths.flatMap((p) => [path.dirname(p), path.dirname(path.dirname(p))]))].sort((a, b) => b.length - a.length)) {
    if (await fs.rmdir(parent).then(() => true, () => false)) removed.push(parent);
  }
  return {...base, purged: true, removed, kept: backups, orphanedBackups};
}
