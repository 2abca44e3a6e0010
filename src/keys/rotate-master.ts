import type {BackupRecord} from '../backup/catalog.js';
import {UserError} from '../errors.js';
import {keyCheckValue} from '../secrets/envelope.js';
import {holdingKeysLock, LocalMasterKeyring, writeKeyringState, type KeyringState} from '../secrets/master-key.js';
import type {WrappedKeySet} from '../secrets/wrapped-key-set.js';
import {crashPoint} from '../state/crash-point.js';
import type {InstallDir} from '../state/install-dir.js';
import {acquireLock} from '../state/lock.js';
import {openKeyServices, servicesOver, wrappedKeySets, type KeyServices} from './context.js';
import {retireUnneeded, rewrapStragglers, type ControlBackupSource, type KeptVersion} from './retention.js';

export interface MasterRotationResult {
  readonly from: number;
  readonly to: number;
  /** True when this run finished a rotation that an earlier, interrupted run started. */
  readonly resumed: boolean;
  /** Items re-wrapped, per set: sealedSecrets, dataKeys, and control when dforge_control exists. */
  readonly rewrapped: Record<string, number>;
  /** Retired versions whose material dforge destroyed. */
  readonly destroyed: number[];
  /** Retired versions kept decrypt-only, and why (control backups still need them). */
  readonly kept: KeptVersion[];
  /** What the operator still has to do (for providers whose material dforge does not own). */
  readonly operatorActions: string[];
}

/** Re-wrap passes before the commit gives up: each pass only picks up what a previous one missed. */
const RECOUNT_PASSES = 3;

/**
 * Rotates the master key: re-wraps every data key and sealed secret under a new version, never
 * touching the data they protect, then retires the old version.
 *
 * It holds the keys lock exclusively; every other master-key writer holds it shared around its
 * wrap and write (kek.withWrites), so nothing is wrapped under the old
 * version once the re-wrap starts. Crash safety comes from the order of durable steps:
 *  1. mint the new version and record {rotation: from → to} in the keyring (new wraps go to `to`);
 *  2. re-wrap each set (the data-key file, each sealed file, dforge_control in one transaction),
 *     then recount every set and re-wrap again until nothing is left on another version;
 *  3. commit: `to` active, `from` retired, rotation cleared;
 *  4. destroy retired versions no control backup in the catalog needs (recounting every set
 *     first); the others stay decrypt-only (src/keys/retention.ts).
 * Until step 3 both versions exist, so a kill anywhere leaves every item readable; a rerun finds
 * the recorded rotation and finishes it. A rerun after step 3 finishes step 4 and rotates again.
 */
export async function rotateMasterKey(
  dir: InstallDir,
  options: {
    env?: NodeJS.ProcessEnv;
    clock?: () => Date;
    command: string;
    extraSets?: (services: KeyServices) => Promise<WrappedKeySet[]>;
    /** Control backups in the catalog; none when the install has no control plane. */
    controlBackups?: ControlBackupSource;
  },
): Promise<MasterRotationResult> {
  const clock = options.clock ?? (() => new Date());
  const controlBackups = async (): Promise<readonly BackupRecord[]> => (options.controlBackups ? options.controlBackups() : []);
  const lock = await acquireLock(dir.locksDir, 'keys', {command: options.command, queue: true});
  try {
    return await holdingKeysLock(dir, async () => {
      let services = await openKeyServices(dir, {env: options.env, clock});
      let state = services.keyring.state;
      const resumed = state.rotation !== undefined;
      const earlier = {destroyed: [] as number[], operatorActions: [] as string[]};
      if (!state.rotation) {
        // A run killed after its commit may have left retired material to destroy.
        const tail = await retireUnneeded(dir, services, await wrappedKeySets(services, options.extraSets), await controlBackups(), clock);
        earlier.destroyed.push(...tail.destroyed);
        earlier.operatorActions.push(...tail.operatorActions);
        services = await openKeyServices(dir, {env: options.env, clock});
        state = services.keyring.state;
        // Open everything first: a damaged item aborts the rotation before anything has changed.
        for (const set of await wrappedKeySets(services, options.extraSets)) await set.verifyAll();
        const from = services.keyring.activeVersion();
        const to = Math.max(...state.versions.map((v) => v.version)) + 1;
        const {material, salt} = await services.keyring.provider.mint(to);
        state = {
          ...state,
          versions: [...state.versions, {version: to, state: 'pending', createdAt: clock().toISOString(), keyCheck: keyCheckValue(material).toString('hex'), ...(salt ? {salt} : {})}],
          rotation: {from, to, startedAt: clock().toISOString()},
        };
        await writeKeyringState(dir, state);
        crashPoint('master.keyring.rotation-started');
        services = servicesOver(dir, services.settings, await LocalMasterKeyring.open(dir, services.keyring.provider), clock);
      }
      const {from, to} = state.rotation!;

      const sets = await wrappedKeySets(services, options.extraSets);
      const rewrapped: Record<string, number> = {};
      for (const set of sets) rewrapped[set.id] = await set.rewrapAll(to);
      await requireAllUnder(sets, to, rewrapped);

      const committed: KeyringState = {
        format: 1,
        provider: state.provider,
        versions: state.versions.map((v) =>
          v.version === to ? {...v, state: 'active'} : v.state === 'retired' ? v : {...v, state: 'retired', retiredAt: clock().toISOString()},
        ),
      };
      await writeKeyringState(dir, committed);
      crashPoint('master.keyring.committed');
      services = servicesOver(dir, services.settings, await LocalMasterKeyring.open(dir, services.keyring.provider), clock);
      const retirement = await retireUnneeded(dir, services, await wrappedKeySets(services, options.extraSets), await controlBackups(), clock);
      return {
        from,
        to,
        resumed,
        rewrapped,
        destroyed: [...earlier.destroyed, ...retirement.destroyed],
        kept: retirement.kept,
        operatorActions: [...earlier.operatorActions, ...retirement.operatorActions],
      };
    });
  } finally {
    await lock.release();
  }
}

/**
 * Recounts every set just before the commit. Anything not yet under `to` (a writer that did not
 * take the keys lock, a row added behind the re-wrap) is re-wrapped; if some remains after a few
 * passes, the rotation refuses to commit rather than retire a version that still wraps something.
 */
async function requireAllUnder(sets: readonly WrappedKeySet[], to: number, rewrapped: Record<string, number>): Promise<void> {
  const left = await rewrapStragglers(sets, to, (v) => v !== to, RECOUNT_PASSES, rewrapped);
  if (left.length === 0) return;
  throw new UserError(`refusing to commit the master rotation to v${to}: still wrapped under an older version: ${left.map((l) => `${l.n} in ${l.set.label}`).join(', ')}`, {
    nextSteps: ['Nothing was retired; both versions are kept. Re-run dforge keys rotate --master; if this repeats, a writer is not taking the keys lock: report it.'],
    data: {left: Object.fromEntries(left.map((l) => [l.set.id, l.n]))},
  });
}
