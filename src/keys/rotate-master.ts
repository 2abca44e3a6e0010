import {BugError} from '../errors.js';
import {keyCheckValue} from '../secrets/envelope.js';
import {LocalMasterKeyring, readKeyringState, writeKeyringState, type KeyringState} from '../secrets/master-key.js';
import type {InstallDir} from '../state/install-dir.js';
import {acquireLock} from '../state/lock.js';
import {openKeyServices, servicesOver, wrappedKeySets, type KeyServices} from './context.js';
import type {WrappedKeySet} from '../secrets/wrapped-key-set.js';

export interface MasterRotationResult {
  readonly from: number;
  readonly to: number;
  /** True when this run finished a rotation that an earlier, interrupted run started. */
  readonly resumed: boolean;
  /** Items re-wrapped, per set: sealedSecrets, dataKeys, and control when dforge_control exists. */
  readonly rewrapped: Record<string, number>;
  /** Retired versions whose material dforge destroyed. */
  readonly destroyed: number[];
  /** What the operator still has to do (for providers whose material dforge does not own). */
  readonly operatorActions: string[];
}

/**
 * Rotates the master key: re-wraps every data key and sealed secret under a new version, never
 * touching the data they protect, then retires the old version.
 *
 * Crash safety comes from the order of durable steps, each an atomic file replacement:
 *  1. mint the new version and record {rotation: from → to} in the keyring (new wraps go to `to`);
 *  2. re-wrap all data keys (one file, one atomic write), then each sealed secret still on `from`;
 *  3. commit: `to` active, `from` retired, rotation cleared;
 *  4. destroy the retired material.
 * Until step 3 both versions exist, so a kill anywhere leaves every item readable; a rerun finds
 * the recorded rotation and finishes it. A kill after step 3 leaves only step 4, which a rerun
 * (or the next rotation) completes.
 */
export async function rotateMasterKey(
  dir: InstallDir,
  options: {env?: NodeJS.ProcessEnv; clock?: () => Date; command: string; extraSets?: (services: KeyServices) => Promise<WrappedKeySet[]>},
): Promise<MasterRotationResult> {
  const clock = options.clock ?? (() => new Date());
  const lock = await acquireLock(dir.locksDir, 'keys', {command: options.command});
  try {
    let services = await openKeyServices(dir, {env: options.env, clock});
    let state = services.keyring.state;
    const resumed = state.rotation !== undefined;
    if (!state.rotation) {
      // A run killed after its commit left only the destruction of the old material to do.
      const tail = await destroyRetired(dir, services.keyring.provider, state);
      if (tail.destroyed.length > 0) {
        const active = services.keyring.activeVersion();
        return {from: Math.max(...tail.destroyed), to: active, resumed: true, rewrapped: {}, ...tail};
      }
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
      services = servicesOver(dir, services.settings, await LocalMasterKeyring.open(dir, services.keyring.provider), clock);
    }
    const {from, to} = state.rotation!;

    const rewrapped: Record<string, number> = {};
    for (const set of await wrappedKeySets(services, options.extraSets)) rewrapped[set.id] = await set.rewrapAll(to);

    const committed: KeyringState = {
      format: 1,
      provider: state.provider,
      versions: state.versions.map((v) =>
        v.version === to ? {...v, state: 'active'} : v.state === 'retired' ? v : {...v, state: 'retired', retiredAt: clock().toISOString()},
      ),
    };
    await writeKeyringState(dir, committed);
    const {destroyed, operatorActions} = await destroyRetired(dir, services.keyring.provider, committed);
    return {from, to, resumed, rewrapped, destroyed, operatorActions};
  } finally {
    await lock.release();
  }
}

/** Destroys the material of every retired version the provider still holds. */
async function destroyRetired(dir: InstallDir, provider: LocalMasterKeyring['provider'], state: KeyringState): Promise<{destroyed: number[]; operatorActions: string[]}> {
  const current = await readKeyringState(dir);
  if (current?.rotation) throw new BugError('refusing to destroy key material while a rotation is recorded as in flight');
  const destroyed: number[] = [];
  const operatorActions: string[] = [];
  for (const v of state.versions.filter((x) => x.state === 'retired')) {
    if ((await provider.material(v)) === undefined) continue;
    const action = await provider.destroy(v.version);
    if (action) operatorActions.push(action);
    else destroyed.push(v.version);
  }
  return {destroyed, operatorActions};
}
