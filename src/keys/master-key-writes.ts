import type {LocalMasterKeyring} from '../secrets/master-key.js';
import type {InstallDir} from '../state/install-dir.js';
import {acquireLock} from '../state/lock.js';

/**
 * Runs `fn`, which wraps something under the master key and makes it durable (a sealed file, a
 * row in dforge_control, a control backup in the catalog), under the shared keys lock. A master
 * rotation takes that lock exclusively, so it never commits and destroys a version between a
 * writer's wrap and the moment the wrapped blob is where the rotation's re-wrap can find it.
 * The keyring is re-read under the lock: a rotation may have finished since it was opened.
 */
export async function withMasterKeyWrites<T>(dir: InstallDir, keyring: LocalMasterKeyring, command: string, fn: () => Promise<T>): Promise<T> {
  const lock = await acquireLock(dir.locksDir, 'keys', {command, mode: 'shared'});
  try {
    await keyring.reload(dir);
    return await fn();
  } finally {
    await lock.release();
  }
}
