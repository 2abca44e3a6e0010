import {keySourceFor, LocalMasterKeyring} from '../secrets/master-key.js';
import type {InstallDir} from '../state/install-dir.js';
import {acquireLock} from '../state/lock.js';
import {keySettings, servicesOver} from './context.js';
import {ensureJwtSigningKey, jwksFile} from './jwt.js';

export interface KeysInitResult {
  readonly provider: string;
  readonly masterVersion: number;
  readonly masterCreated: boolean;
  readonly jwt: {readonly kid: string; readonly alg: string; readonly created: boolean; readonly jwksFile: string};
}

/** Creates the master key and the first JWT signing key where they do not exist yet. Idempotent. */
export async function initKeys(dir: InstallDir, options: {env?: NodeJS.ProcessEnv; clock?: () => Date; command: string}): Promise<KeysInitResult> {
  const now = (options.clock ?? (() => new Date()))();
  await dir.ensureLayout();
  const lock = await acquireLock(dir.locksDir, 'keys', {command: options.command, queue: true});
  try {
    const settings = await keySettings(dir);
    const {keyring, created} = await LocalMasterKeyring.init(dir, keySourceFor(settings, dir, options.env), now);
    const services = servicesOver(dir, settings, keyring, options.clock);
    const jwt = await ensureJwtSigningKey(dir, services.sealed, settings.jwt.algorithm, now);
    return {
      provider: settings.masterKeyProvider,
      masterVersion: keyring.activeVersion(),
      masterCreated: created,
      jwt: {kid: jwt.key.kid, alg: jwt.key.alg, created: jwt.created, jwksFile: jwksFile(dir)},
    };
  } finally {
    await lock.release();
  }
}
