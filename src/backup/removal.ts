import type {ControlPlane} from '../control/plane.js';
import {ControlWrappedKeys} from '../control/keys-store.js';
import {LockedError} from '../errors.js';
import {releaseRetiredMasterVersions, type ReleaseResult} from '../keys/retention.js';
import {BackupCatalog, manifestLocation, type BackupRecord} from './catalog.js';
import {regionDestinations} from './destination.js';

/**
 * Deletes one backup: the catalog entry first, then the manifest, then the file. A crash leaves an
 * orphan file that rebuild-catalog can adopt again, never an entry whose file is gone.
 */
export async function removeBackup(plane: ControlPlane, record: BackupRecord): Promise<void> {
  const destination = regionDestinations(plane, record.region).find((d) => d.name === record.destination);
  await new BackupCatalog(plane.control).remove(record.id);
  await destination?.remove(manifestLocation(record.location));
  await destination?.remove(record.location);
}

/** What releasing retired master versions did, or why it could not run this time. */
export type KeyRelease = ReleaseResult | {readonly skipped: string};

/**
 * After a prune or a fresh control backup: deletes control backups that fresh ones under the active
 * master version have made obsolete in every region, then destroys the retired versions that no
 * control backup needs any more (src/keys/retention.ts). A rotation or release running in another
 * process holds the keys lock; the backup or prune has still succeeded, so that is reported, not
 * thrown, and the next run releases.
 */
export async function releaseRetiredKeys(plane: ControlPlane, command: string): Promise<KeyRelease> {
  const catalog = new BackupCatalog(plane.control);
  try {
    return await releaseRetiredMasterVersions(plane.keys.dir, {
      command,
      controlBackups: () => catalog.list({kind: 'control'}),
      removeObsolete: async (records) => {
        for (const record of records) await removeBackup(plane, record);
      },
      extraSets: async (services) => [new ControlWrappedKeys(plane.control, services.keyring)],
    });
  } catch (err) {
    if (err instanceof LockedError) return {skipped: err.message};
    throw err;
  }
}
