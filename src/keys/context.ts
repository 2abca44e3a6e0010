import {promises as fs} from 'node:fs';

import {loadConfigFile} from '../config/load.js';
import type {DforgeConfig} from '../config/schema.js';
import {DataKeys, FileDataKeyStore} from '../secrets/data-keys.js';
import {keySourceFor, LocalMasterKeyring} from '../secrets/master-key.js';
import {SealedStore, sealedSecretSet} from '../secrets/sealed-store.js';
import type {WrappedKeySet} from '../secrets/wrapped-key-set.js';
import type {InstallDir} from '../state/install-dir.js';

export type KeySettings = DforgeConfig['keys'];

const DEFAULT_SETTINGS: KeySettings = {masterKeyProvider: 'file', jwt: {algorithm: 'EdDSA', graceDays: 7}};

/** Key settings from dforge.yaml; the defaults when the install has no config yet. */
export async function keySettings(dir: InstallDir): Promise<KeySettings> {
  const exists = await fs.stat(dir.configFile).then(
    () => true,
    () => false,
  );
  return exists ? (await loadConfigFile(dir.configFile)).keys : DEFAULT_SETTINGS;
}

/** The key services of an install, opened over its master keyring. */
export interface KeyServices {
  readonly dir: InstallDir;
  readonly settings: KeySettings;
  readonly keyring: LocalMasterKeyring;
  readonly sealed: SealedStore;
  readonly dataKeys: DataKeys;
  readonly dataKeyStore: FileDataKeyStore;
}

export async function openKeyServices(dir: InstallDir, options: {env?: NodeJS.ProcessEnv; clock?: () => Date} = {}): Promise<KeyServices> {
  const settings = await keySettings(dir);
  const keyring = await LocalMasterKeyring.open(dir, keySourceFor(settings, dir, options.env));
  return servicesOver(dir, settings, keyring, options.clock);
}

export function servicesOver(dir: InstallDir, settings: KeySettings, keyring: LocalMasterKeyring, clock?: () => Date): KeyServices {
  const dataKeyStore = new FileDataKeyStore(dir);
  return {dir, settings, keyring, sealed: new SealedStore(dir, keyring), dataKeys: new DataKeys(dataKeyStore, keyring, clock), dataKeyStore};
}

/** Everything the master key wraps: the install's own sets plus any the caller adds (dforge_control). */
export async function wrappedKeySets(services: KeyServices, extra?: (services: KeyServices) => Promise<WrappedKeySet[]>): Promise<WrappedKeySet[]> {
  return [sealedSecretSet(services.sealed), services.dataKeys.asWrappedKeySet(), ...(extra ? await extra(services) : [])];
}
