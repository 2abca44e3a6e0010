import {Flags} from '@oclif/core';

import {withOpsRecord} from '../../audit/record.js';
import {BaseCommand} from '../../base-command.js';
import {pruneBackups, type PruneReport, type PruneResult} from '../../backup/manage.js';
import {usingControlPlane} from '../../control/plane.js';
import {formatBytes} from '../../ui/bytes.js';
import {renderTable} from '../../ui/table.js';
import {formatTime} from '../../ui/time.js';

export default class BackupPrune extends BaseCommand<typeof BackupPrune> {
  static override summary = 'Delete backups a retention policy does not keep (keep-last, daily, weekly, monthly).';
  static override description = 'Backups are ordered by their recorded time, never by name. The newest verified backup of each tenant is always kept. Prints every backup it deletes (with --dry-run: would delete) with its size, time and the retention rules that let it go; --dry-run deletes nothing.';
  static override examples = ['<%= config.bin %> backup prune --dry-run', '<%= config.bin %> backup prune --keep-last 3 --keep-daily 7 --keep-weekly 4 --keep-monthly 6'];
  static override flags = {
    'keep-last': Flags.integer({default: 3, min: 1}),
    'keep-daily': Flags.integer({default: 7, min: 0}),
    'keep-weekly': Flags.integer({default: 4, min: 0}),
    'keep-monthly': Flags.integer({default: 6, min: 0}),
    tenant: Flags.string({summary: 'Only this tenant.'}),
    'keep-pre-restore-hours': Flags.integer({summary: 'Drop databases a restore kept aside (<db>__pre_restore_<ts>) once older than this.', default: 72, min: 0}),
    'dry-run': Flags.boolean({summary: 'List what would be deleted, and why; delete nothing.'}),
  };

  async run(): Promise<PruneResult> {
    const f = this.flags;
    const released = (r: PruneResult): number[] => (r.keys && 'destroyed' in r.keys ? r.keys.destroyed : []);
    const report: PruneReport = await usingControlPlane(this.installDir(), (plane) =>
      withOpsRecord(
        plane,
        {
          action: 'backup.prune',
          target: f.tenant ? `tenant:${f.tenant}` : 'backups',
          // A dry run, or a run that found nothing to delete, changed nothing.
          changed: (r) => !f['dry-run'] && (r.deleted.length > 0 || r.droppedDatabases.length > 0 || released(r).length > 0),
          details: (r) => ({deleted: r.deleted, droppedDatabases: r.droppedDatabases, masterVersionsDestroyed: released(r)}),
        },
        () => pruneBackups(plane, {keepLast: f['keep-last'], keepDaily: f['keep-daily'], keepWeekly: f['keep-weekly'], keepMonthly: f['keep-monthly']}, {tenant: f.tenant, dryRun: f['dry-run'], keepPreRestoreHours: f['keep-pre-restore-hours']}),
      ),
    );
    const {removals, ...result} = report;
    if (!this.jsonEnabled()) {
      const ordered = [...removals].sort((a, b) => a.tenant.localeCompare(b.tenant) || a.createdAt.localeCompare(b.createdAt));
      if (ordered.length > 0) this.log(renderTable(['id', 'tenant', 'created', 'size', 'why'], ordered.map((r) => [r.id, r.kind === 'control' ? `dforge_control (${r.region})` : r.tenant, formatTime(r.createdAt), formatBytes(r.size), r.why])));
      if (result.droppedDatabases.length > 0) this.log(`\n${f['dry-run'] ? 'would drop' : 'dropped'} pre-restore database(s) older than ${f['keep-pre-restore-hours']} h: ${result.droppedDatabases.join(', ')}`);
    }
    if (result.keys && 'destroyed' in result.keys && result.keys.destroyed.length > 0) this.out.progress(`destroyed retired master key version(s) no control backup needs: ${result.keys.destroyed.map((v) => `v${v}`).join(', ')}`);
    if (result.keys && 'skipped' in result.keys) this.out.warn(`retired master versions were not released this time: ${result.keys.skipped}`);
    this.out.progress(`${f['dry-run'] ? 'would delete' : 'deleted'} ${result.deleted.length} backup(s) (${formatBytes(removals.reduce((n, r) => n + r.size, 0))}), kept ${result.kept.length}; ${f['dry-run'] ? 'would drop' : 'dropped'} ${result.droppedDatabases.length} pre-restore database(s)`);
    return result;
  }
}
