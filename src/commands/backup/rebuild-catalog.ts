import {BaseCommand} from '../../base-command.js';
import {rebuildCatalog} from '../../backup/manage.js';
import {usingControlPlane} from '../../control/plane.js';

export default class BackupRebuildCatalog extends BaseCommand<typeof BackupRebuildCatalog> {
  static override summary = "Re-create catalog entries from the destinations' manifests.";
  static override description = 'For backups the catalog does not know: after restore --control, or if a run was killed after its file was complete.';
  static override examples = ['<%= config.bin %> backup rebuild-catalog'];

  async run(): Promise<{added: number; scanned: number}> {
    const result = await usingControlPlane(this.installDir(), (plane) => rebuildCatalog(plane));
    this.out.progress(`scanned ${result.scanned} manifests, added ${result.added} catalog entries`);
    return result;
  }
}
