import type {ControlPlane} from '../control/plane.js';
import {ControlWrappedKeys} from '../control/keys-store.js';
import {LockedError, VerificationError} from '../errors.js';
import {releaseRetiredMasterVersions, type ReleaseResult} from '../keys/retention.js';
import type {BackupDestination} from './backup-destination.js';
import {BackupCatalog, manifestLocation, type BackupRecord} from './catalog.js';
import {regionDestinations} from './destination.js';
import {verifyBackup} from './verify.js';

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

/**
 * Deletes one backup the other way round: the file and its manifest first, the catalog entry last.
 * For a tenant move's purge, where a destination that fails midway must leave the backup listed, so
 * the operator sees it and the rerun finds it again (removeBackup, for prune, prefers an orphan
 * file that rebuild-catalog can adopt).
 */
export async function removeBackupFilesFirst(plane: ControlPlane, destination: BackupDestination, record: BackupRecord): Promise<void> {
  await destination.remove(record.location);
  await destination.remove(manifestLocation(record.location));
  await new BackupCatalog(plane.control).remove(record.id);
}

/** What releasing retired master versions did, or why it could not run this time. */
export type KeyRelease = ReleaseResult | {readonly skipped: string};

/**
 * After a prune or a fresh control backup: deletes control backups that fresh ones under the active
 * master version have made obsolete in every region, then destroys the retired versions that no
 * control backup needs any more (src/keys/retention.ts). A rotation or release running in another
 * process holds the keys lock; the backup or prune has still succeeded, so that is reported, not
 * thrown, and the next run releases.
 *
 * "Fresh" is read from the catalog, which whoever can write dforge_control can forge. So before
 * anything is deleted, every control backup that makes others obsolete must authenticate and match
 * its catalog entry: a forged row stops the release (exit 6) with nothing deleted or destroyed.
 */
export async function releaseRetiredKeys(plane: ControlPlane, command: string): Promise<KeyRelease> {
  const catalog = new BackupCatalog(plane.control);
  try {
    return await releaseRetiredMasterVersions(plane.keys.dir, {
      command,
      controlBackups: () => catalog.list({kind: 'control'}),
      removeObsolete: async (records) => {
        const obsolete = new Set(records.map((r) => r.id));
        for (const fresh of (await catalog.list({kind: 'control'})).filter((r) => !obsolete.has(r.id))) await requireAuthentic(plane, fresh, command);
        for (const record of records) await removeBackup(plane, record);
      },
      extraSets: async (services) => [new ControlWrappedKeys(plane.control, services.keyring)],
    });
  } catch (err) {
    if (err instanceof LockedError) return {skipped: err.message};
    throw err;
  }
}

async function requireAuthentic(plane: ControlPlane, record: BackupRecord, command: string): Promise<void> {
  try {
    await verifyBackup(plane, record.id, {deep: false});
  } catch (err) {
    if (!(err instanceof VerificationError)) throw err;
    throw new VerificationError(`${command} finished, but releasing retired master key versions stopped: control backup ${record.id}, which would replace the older ones, failed verification: ${err.message}`, {
      nextSteps: [
        'Nothing was deleted and no key was destroyed. Find out who changed the catalog in dforge_control or the destination.',
        `Check it with: dforge backup verify ${record.id} --deep; remove the bad entry or file, then run dforge backup --all again.`,
      ],
      data: {backupId: record.id, reason: 'binding', cause: err.data},
    });
  }
}
