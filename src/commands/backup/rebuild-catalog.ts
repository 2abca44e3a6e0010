import {withOpsRecord} from '../../audit/record.js';
import {BaseCommand} from '../../base-command.js';
import {rebuildCatalog, throwIfTampered, type RebuildResult} from '../../backup/manage.js';
import {usingControlPlane} from '../../control/plane.js';

export default class BackupRebuildCatalog extends BaseCommand<typeof BackupRebuildCatalog> {
  static override summary = 'Adopt into the catalog the backup files of every destination that it does not list.';
  static override description = `For backups the catalog does not know: after restore --control, or if a run was killed after its file was complete. A file is adopted only if its header authenticates, matches its manifest and its place in the destination, and every chunk decrypts. Anything else is reported and not adopted; a tampered or substituted file makes the command exit 6.`;
  static override examples = ['<%= config.bin %> backup rebuild-catalog'];

  async run(): Promise<RebuildResult> {
    return usingControlPlane(this.installDir(), (plane) =>
      withOpsRecord(plane, {action: 'backup.rebuild-catalog', target: 'catalog', changed: (r) => r.added > 0, details: (r) => ({scanned: r.scanned, added: r.entries.filter((e) => e.status === 'added').map((e) => e.location)})}, async () => {
        const result = await rebuildCatalog(plane);
        for (const e of result.entries) if (e.status !== 'added') this.out.warn(`${e.destination}:${e.location}: ${e.status}${e.reason ? `: ${e.reason}` : ''}`);
        this.out.progress(`scanned ${result.scanned} backup files: ${result.known} already listed, ${result.added} added`);
        // A tamper is recorded as this command's failure, naming the files.
        throwIfTampered(result, 'the catalog was rebuilt');
        return result;
      }),
    );
  }
}
