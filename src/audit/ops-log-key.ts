import {randomBytes} from 'node:crypto';

import {UserError} from '../errors.js';
import {crashPoint} from '../state/crash-point.js';
import type {LocalMasterKeyring} from '../secrets/master-key.js';
import type {SealedStore} from '../secrets/sealed-store.js';
import type {InstallDir} from '../state/install-dir.js';

/**
 * The key of the ops log's MACs: 32 random bytes, the sealed secret `audit/ops-log-key-<id>`.
 * The master key wraps it like any sealed secret, so a master rotation re-wraps it and the chain
 * verifies across rotations. Entries name the key id they were written with, so a later key
 * change can add `k2` while `k1` still verifies the older entries.
 */
export const CURRENT_OPS_LOG_KEY_ID = 'k1';
const KEY_BYTES = 32;

export interface OpsLogKeyServices {
  readonly dir: InstallDir;
  readonly keyring: LocalMasterKeyring;
  readonly sealed: SealedStore;
}

export const opsLogKeySecret = (id: string): string => `audit/ops-log-key-${id}`;

export class OpsLogKeys {
  private readonly cache = new Map<string, Buffer>();

  constructor(private readonly services: OpsLogKeyServices) {}

  /**
   * The key new entries are written with, created on first use. The caller holds the append lock,
   * which serialises creation between processes. A key is only created for a log that has no keyed
   * entry yet: otherwise the key was lost (secrets/ restored from an older copy), and a new one
   * would write entries that no longer verify with the old ones.
   */
  async writerKey(logHasKeyedEntries: () => Promise<boolean>): Promise<Buffer> {
    const existing = await this.verifierKey(CURRENT_OPS_LOG_KEY_ID);
    if (existing) return existing;
    if (await logHasKeyedEntries()) {
      throw new UserError(`the ops log has keyed entries but this install has no ops-log key (secrets/${opsLogKeySecret(CURRENT_OPS_LOG_KEY_ID)}.sealed)`, {
        nextSteps: [`Restore secrets/${opsLogKeySecret(CURRENT_OPS_LOG_KEY_ID)}.sealed from a backup of the install directory; nothing was written.`],
      });
    }
    const {keyring, sealed} = this.services;
    const key = randomBytes(KEY_BYTES);
    await keyring.withWrites('dforge ops log: create the ops-log key', () => sealed.put(opsLogKeySecret(CURRENT_OPS_LOG_KEY_ID), key));
    crashPoint('ops-log.key-sealed');
    this.cache.set(CURRENT_OPS_LOG_KEY_ID, key);
    return key;
  }

  /** A key by the id an entry or the anchor names; undefined if this install does not have it. */
  async verifierKey(id: string): Promise<Buffer | undefined> {
    // The id comes from dforge_control, which the attacker may write: only well-formed ids name files.
    if (!/^k[1-9][0-9]{0,5}$/.test(id)) return undefined;
    const cached = this.cache.get(id);
    if (cached) return cached;
    const {keyring, sealed} = this.services;
    const name = opsLogKeySecret(id);
    if (!(await sealed.has(name))) return undefined;
    // Under the shared keys lock with the keyring re-read: a rotation may have re-wrapped the file
    // under a version this keyring, opened earlier, does not know yet.
    const key = await keyring.withWrites('dforge ops log: read the ops-log key', () => sealed.get(name));
    if (key.length !== KEY_BYTES) {
      throw new UserError(`the sealed ops-log key ${name} is ${key.length} bytes, not ${KEY_BYTES}`, {nextSteps: [`Restore secrets/${name}.sealed from a backup of the install directory.`]});
    }
    this.cache.set(id, key);
    return key;
  }
}
