import type {BackupRecord} from '../backup/catalog.js';
import {UserError} from '../errors.js';
import {holdingKeysLock, MASTER_KEY_ID, readKeyringState, writeKeyringState, type KeyringState} from '../secrets/master-key.js';
import type {WrappedKeySet} from '../secrets/wrapped-key-set.js';
import {crashPoint} from '../state/crash-point.js';
import type {InstallDir} from '../state/install-dir.js';
import {acquireLock} from '../state/lock.js';
import {openKeyServices, wrappedKeySets, type KeyServices} from './context.js';

/**
 * How long a retired master version keeps its material.
 *
 * Control backups (pg_dumps of dforge_control) wrap their file key directly under the master
 * key, and a backup file cannot be re-wrapped in place. So a retired version stays
 * decrypt-only while any control backup in the catalog needs it, and is destroyed only once
 * none does. Control backups under retired versions become obsolete once every region that has
 * control backups has one under the active version: from then on the newest control backup of
 * each region rebuilds the install without them. Release hands the obsolete ones to
 * `removeObsolete` (the backup service's deletion: file, manifest and catalog row), then destroys
 * every retired version no remaining control backup needs.
 */

/** Control backups in the catalog, all regions (read-only). */
export type ControlBackupSource = () => Promise<readonly BackupRecord[]>;

export interface KeptVersion {
  readonly version: number;
  /** Why the material stays: the control backups that need it. */
  readonly reason: string;
  readonly controlBackups: string[];
}

export interface RetirementOutcome {
  /** Retired versions whose material dforge destroyed in this run. */
  readonly destroyed: number[];
  /** Retired versions kept decrypt-only. */
  readonly kept: KeptVersion[];
  /** What the operator still has to do (providers whose material dforge does not own). */
  readonly operatorActions: string[];
}

/** Control backups per master version (only those wrapped by the master key). */
export function controlBackupsByVersion(records: readonly BackupRecord[]): Map<number, BackupRecord[]> {
  const byVersion = new Map<number, BackupRecord[]>();
  for (const r of records) {
    if (r.kind !== 'control' || r.keyId !== MASTER_KEY_ID) continue;
    byVersion.set(r.keyVersion, [...(byVersion.get(r.keyVersion) ?? []), r]);
  }
  return byVersion;
}

/**
 * The control backups under versions other than `active` that are obsolete: every region with a
 * control backup has one under `active`. Empty while any region lacks one.
 */
export function obsoleteControlBackups(records: readonly BackupRecord[], active: number): BackupRecord[] {
  const control = records.filter((r) => r.kind === 'control' && r.keyId === MASTER_KEY_ID);
  const regions = new Set(control.map((r) => r.region));
  const fresh = new Set(control.filter((r) => r.keyVersion === active).map((r) => r.region));
  if ([...regions].some((region) => !fresh.has(region))) return [];
  return control.filter((r) => r.keyVersion !== active);
}

/** Whether a retired version's material is gone, for status and release. */
export function isDestroyed(version: KeyringState['versions'][number], materialPresent: boolean): boolean {
  return version.state === 'retired' && (version.destroyedAt !== undefined || !materialPresent);
}

/**
 * Under the exclusive keys lock (the caller holds it): destroys every retired version that no
 * control backup needs, after making sure no item of any set is still wrapped by it (re-wrapping
 * stragglers to the active version, or refusing). Keeps the others decrypt-only.
 */
export async function retireUnneeded(
  dir: InstallDir,
  services: KeyServices,
  sets: readonly WrappedKeySet[],
  controlBackups: readonly BackupRecord[],
  clock: () => Date,
): Promise<RetirementOutcome> {
  const state = await readKeyringState(dir);
  if (!state || state.rotation) {
    throw new UserError('a master rotation is recorded as in flight: refusing to destroy key material', {nextSteps: ['Finish it first: dforge keys rotate --master']});
  }
  const needs = controlBackupsByVersion(controlBackups);
  const kept: KeptVersion[] = [];
  const destroyed: number[] = [];
  const operatorActions: string[] = [];
  const toDestroy: number[] = [];
  for (const v of state.versions) {
    if (v.state !== 'retired' || v.destroyedAt !== undefined) continue;
    const needing = needs.get(v.version) ?? [];
    if (needing.length > 0) {
      kept.push({
        version: v.version,
        reason: `${needing.length} control backup${needing.length === 1 ? '' : 's'} in the catalog ${needing.length === 1 ? 'is' : 'are'} wrapped under it; it stays decrypt-only until a control backup under the active version exists in every region and the old ones are released`,
        controlBackups: needing.map((r) => r.id),
      });
    } else {
      toDestroy.push(v.version);
    }
  }
  if (toDestroy.length === 0) return {destroyed, kept, operatorActions};

  await requireNothingWrappedUnder(sets, toDestroy, services.keyring.activeVersion());
  const recorded = new Set<number>();
  for (const version of toDestroy) {
    const record = state.versions.find((v) => v.version === version)!;
    if ((await services.keyring.provider.material(record)) === undefined) {
      recorded.add(version);
      continue;
    }
    const action = await services.keyring.provider.destroy(version);
    if (action) {
      operatorActions.push(action);
      continue;
    }
    destroyed.push(version);
    recorded.add(version);
    crashPoint('master.destroy');
  }
  if (recorded.size > 0) {
    const at = clock().toISOString();
    await writeKeyringState(dir, {...state, versions: state.versions.map((v) => (recorded.has(v.version) ? {...v, destroyedAt: at} : v))});
    crashPoint('master.keyring.destroyed-recorded');
  }
  return {destroyed, kept, operatorActions};
}

/** Items of one set still wrapped under a version that should wrap nothing. */
export interface Stragglers {
  readonly set: WrappedKeySet;
  readonly n: number;
}

/**
 * Recounts every set and re-wraps to `to` each set holding items under a version `isStale` names,
 * up to `passes` times (each pass only picks up what the one before missed: a writer that did not
 * take the keys lock). Re-wrapped counts are added to `rewrapped`. Returns what is still left.
 */
export async function rewrapStragglers(sets: readonly WrappedKeySet[], to: number, isStale: (version: number) => boolean, passes: number, rewrapped: Record<string, number> = {}): Promise<Stragglers[]> {
  for (let pass = 0; ; pass++) {
    const left: Stragglers[] = [];
    for (const set of sets) {
      let n = 0;
      for (const [version, count] of await set.countByVersion()) if (isStale(version)) n += count;
      if (n > 0) left.push({set, n});
    }
    if (left.length === 0 || pass === passes) return left;
    for (const {set} of left) rewrapped[set.id] = (rewrapped[set.id] ?? 0) + (await set.rewrapAll(to));
  }
}

/** Right before material is destroyed: nothing may still be wrapped under `versions`. */
async function requireNothingWrappedUnder(sets: readonly WrappedKeySet[], versions: readonly number[], active: number): Promise<void> {
  const left = await rewrapStragglers(sets, active, (v) => versions.includes(v), 1);
  if (left.length === 0) return;
  throw new UserError(`refusing to destroy master key version ${versions.join(', ')}: still wrapped under it: ${left.map((l) => `${l.n} in ${l.set.label}`).join(', ')}`, {
    nextSteps: ['Nothing was destroyed. Re-run dforge keys rotate --master; if this repeats, a writer is not taking the keys lock: report it.'],
  });
}

export interface ReleaseResult {
  readonly activeVersion: number;
  /** Control backups under retired versions made obsolete by fresh ones in every region. */
  readonly obsoleteControlBackups: string[];
  /** Of those, the ones removeObsolete deleted. */
  readonly removedControlBackups: string[];
  readonly destroyed: number[];
  readonly kept: KeptVersion[];
  readonly operatorActions: string[];
}

/**
 * Destroys the retired master versions no control backup needs any more. Run after
 * `backup prune` and after a fresh control backup under the active version: with
 * `removeObsolete`, control backups under retired versions that fresh ones have replaced in
 * every region are deleted first, which frees their versions. Takes the keys lock exclusively.
 */
export async function releaseRetiredMasterVersions(
  dir: InstallDir,
  options: {
    command: string;
    controlBackups: ControlBackupSource;
    removeObsolete?: (records: BackupRecord[]) => Promise<void>;
    extraSets?: (services: KeyServices) => Promise<WrappedKeySet[]>;
    env?: NodeJS.ProcessEnv;
    clock?: () => Date;
  },
): Promise<ReleaseResult> {
  const clock = options.clock ?? (() => new Date());
  const lock = await acquireLock(dir.locksDir, 'keys', {command: options.command});
  try {
    return await holdingKeysLock(dir, async () => {
      const services = await openKeyServices(dir, {env: options.env, clock});
      const active = services.keyring.activeVersion();
      const obsolete = obsoleteControlBackups(await options.controlBackups(), active);
      let removed: string[] = [];
      if (obsolete.length > 0 && options.removeObsolete) {
        await options.removeObsolete(obsolete);
        const left = new Set((await options.controlBackups()).map((r) => r.id));
        removed = obsolete.filter((r) => !left.has(r.id)).map((r) => r.id);
      }
      const sets = await wrappedKeySets(services, options.extraSets);
      const outcome = await retireUnneeded(dir, services, sets, await options.controlBackups(), clock);
      return {activeVersion: active, obsoleteControlBackups: obsolete.map((r) => r.id), removedControlBackups: removed, ...outcome};
    });
  } finally {
    await lock.release();
  }
}
