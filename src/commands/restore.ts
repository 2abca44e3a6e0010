import {Flags} from '@oclif/core';

import {withOpsRecord} from '../audit/record.js';
import {BaseCommand} from '../base-command.js';
import {restoreTenant, type RestoreResult} from '../backup/restore.js';
import {throwIfTampered} from '../backup/manage.js';
import {restoreControl, type ControlRestoreResult} from '../backup/restore-control.js';
import {pgToolsFlag} from '../cli/pg-tools-flag.js';
import {usingControlPlane} from '../control/plane.js';
import {changingTenants} from '../runtime/tenant-catalog.js';

export default class Restore extends BaseCommand<typeof Restore> {
  static override summary = "Restore a tenant from a backup (into a new database, swapped in at the end), or dforge_control itself.";
  static override description = `Steps: verify the whole backup (a tampered or truncated file exits 6 before any database is created), restore into a scratch database owned by the tenant's role, compare object counts with the dump, then swap it in: both renames in one transaction. The previous database is kept as <db>_pre_restore_<ts> unless --drop-previous.
--as restores into a new tenant with new credentials. --control rebuilds dforge_control on a fresh cluster (after: dforge db init), from the newest control backup (by its authenticated creation time; a control backup that fails authentication stops it with exit 6) unless --from names one; then restore the tenants one by one.
Nothing is decided on a backup's header before it is authenticated; a header that does not match the catalog entry, the manifest or the file's place exits 6.`;
  static override examples = [
    '<%= config.bin %> restore --tenant acme --from 20261127T021500Z-acme-1a2b3c',
    '<%= config.bin %> restore --tenant acme --from /backups/eu/acme/20261127T021500Z-acme-1a2b3c.dfb --as acme-copy',
    '<%= config.bin %> restore --control',
  ];

  static override flags = {
    tenant: Flags.string({summary: 'The tenant the backup belongs to.', exactlyOne: ['tenant', 'control']}),
    from: Flags.string({summary: 'Backup id from the catalog, or a path to a .dfb file.'}),
    as: Flags.string({summary: 'Restore as a new tenant with this slug.', dependsOn: ['tenant']}),
    'drop-previous': Flags.boolean({summary: 'Drop the replaced database instead of keeping it.', dependsOn: ['tenant']}),
    control: Flags.boolean({summary: 'Restore dforge_control (disaster recovery).', exactlyOne: ['tenant', 'control']}),
    'pg-tools': pgToolsFlag(),
  };

  async run(): Promise<RestoreResult | ControlRestoreResult> {
    if (this.flags.control) {
      // Success is recorded by the restore itself, in the restored log, where it re-anchors it.
      const result = await withOpsRecord(this.installDir(), {action: 'restore.control', target: 'control', changed: () => false}, () =>
        restoreControl(this.installDir(), {from: this.flags.from, pgTools: this.flags['pg-tools']}),
      );
      this.out.progress(`dforge_control restored from ${result.backupId} (${result.createdAt}); ${result.tenants} tenants registered, ${result.catalog.added} backups adopted into the catalog`);
      throwIfTampered(result.catalog, `dforge_control was restored from ${result.backupId}`);
      return result;
    }
    if (!this.flags.from) this.error('--from is required with --tenant (a backup id or file; see dforge backup list)', {exit: 2});
    const result = await usingControlPlane(
      this.installDir(),
      (plane) =>
        withOpsRecord(
          plane,
          {action: 'restore.tenant', target: `tenant:${this.flags.as ?? this.flags.tenant!}`, details: (r) => ({backupId: r.backupId, from: this.flags.tenant, database: r.database, previousDatabase: r.previousDatabase})},
          () => changingTenants(plane, () => restoreTenant(plane, {tenant: this.flags.tenant!, from: this.flags.from!, as: this.flags.as, dropPrevious: this.flags['drop-previous']})),
        ),
      {pgTools: this.flags['pg-tools']},
    );
    this.out.progress(`restored ${result.backupId} into ${result.database}${result.previousDatabase ? `; previous kept as ${result.previousDatabase}` : ''}`);
    return result;
  }
}
