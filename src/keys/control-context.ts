import {BackupCatalog} from '../backup/catalog.js';
import {optionalControlConnection} from '../control/optional-connection.js';
import {ControlDataKeyStore, ControlWrappedKeys} from '../control/keys-store.js';
import type {DataKeyRecord} from '../secrets/data-keys.js';
import type {WrappedKeySet} from '../secrets/wrapped-key-set.js';
import type {InstallDir} from '../state/install-dir.js';
import type {KeyServices} from './context.js';
import type {ControlBackupSource} from './retention.js';

/** What the key commands need from dforge_control: its wrapped keys and the control backups in its catalog. */
export interface KeyControlContext {
  readonly extraSets: (services: KeyServices) => Promise<WrappedKeySet[]>;
  readonly controlBackups: ControlBackupSource;
  /** The tenant data keys in dforge_control.data_keys (none before it exists). */
  readonly tenantDataKeys: () => Promise<DataKeyRecord[]>;
}

/**
 * Opens dforge_control if this install has one (key commands work before it exists: then there
 * is nothing there to re-wrap and no control backup), runs `fn`, and closes it.
 */
export async function withKeyControlContext<T>(dir: InstallDir, fn: (context: KeyControlContext) => Promise<T>): Promise<T> {
  const control = await optionalControlConnection(dir);
  try {
    return await fn({
      extraSets: async (services) => (control ? [new ControlWrappedKeys(control, services.keyring)] : []),
      controlBackups: async () => (control ? new BackupCatalog(control).list({kind: 'control'}) : []),
      tenantDataKeys: async () => (control ? new ControlDataKeyStore(control).list() : []),
    });
  } finally {
    await control?.end().catch(() => undefined);
  }
}
