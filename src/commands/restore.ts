import {Flags} from '@oclif/core';

import {withOpsRecord} from '../audit/record.js';
import {BaseCommand} from '../base-command.js';
import {planUndo, restoreCommand, restoreTarget, restoreTenant, undoCommand, undoRestore, type RestoreResult, type UndoResult} from '../backup/restore.js';
import {throwIfTampered} from '../backup/manage.js';
import {restoreControl, type ControlRestoreResult} from '../backup/restore-control.js';
import {crossRegionFlags} from '../cli/cross-region-flags.js';
import {pgToolsFlag} from '../cli/pg-tools-flag.js';
import {CONTROL_DATABASE} from '../control/bootstrap.js';
import {usingControlPlane} from '../control/plane.js';
import {UsageError} from '../errors.js';
import {approvalFromFlags} from '../residency/policy.js';
import {changingTenants} from '../runtime/tenant-catalog.js';
import {confirmDestructive} from '../ui/confirm.js';
import {formatTime} from '../ui/time.js';

export default class Restore extends BaseCommand<typeof Restore> {
  static override summary = "Restore a tenant from a backup (into a new database, swapped in at the end), or dforge_control itself; --undo swaps the previous database back.";
  static override description = `Steps: verify the whole backup (a tampered or truncated file exits 6 before any database is created), restore into a scratch database owned by the tenant's role, compare object counts with the dump, then swap it in: both renames in one transaction. The tenant's open sessions are ended. The previous database is kept as <db>__pre_restore_<ts> unless --drop-previous.
A restore in place replaces a live database: it needs --confirm <slug>, or the slug typed on a terminal (--as replaces nothing and needs none). --undo <slug> (with --confirm <slug>) swaps the newest kept database back in and keeps the one it replaces the same way, so running it again redoes the restore.
--as restores into a new tenant with new credentials; a deleted tenant comes back this way (--as <its slug>). --control rebuilds dforge_control on a fresh cluster (after: dforge db init) and needs --confirm ${CONTROL_DATABASE}, from the newest control backup (by its authenticated creation time; a control backup that fails authentication stops it with exit 6) unless --from names one; then restore the tenants one by one.
Nothing is decided on a backup's header before it is authenticated; a header that does not match the catalog entry, the manifest or the file's place exits 6. A backup of another tenant than --tenant is refused (exit 1).
Residency: --as puts the new tenant in the backup's region, or --to-region R. A restore that would put the data in another region than the backup's (--as --to-region elsewhere, or in place from a file of another region) is refused (exit 1) unless --allow-cross-region --reason is given, which is written to the ops log before any database is created. A restore in place never changes a tenant's region: move it with dforge tenant move.`;
  static override examples = [
    '<%= config.bin %> restore --tenant acme --from 20261127T021500Z-acme-1a2b3c --confirm acme',
    '<%= config.bin %> restore --undo acme --confirm acme',
    '<%= config.bin %> restore --tenant acme --from /backups/eu/acme/20261127T021500Z-acme-1a2b3c.dfb --as acme-copy',
    `<%= config.bin %> restore --control --confirm ${CONTROL_DATABASE}`,
  ];

  static override flags = {
    tenant: Flags.string({summary: 'The tenant the backup belongs to.', exactlyOne: ['tenant', 'control', 'undo']}),
    from: Flags.string({summary: 'Backup id from the catalog, or a path to a .dfb file.'}),
    as: Flags.string({summary: 'Restore as a new tenant with this slug.', dependsOn: ['tenant']}),
    'to-region': Flags.string({summary: "With --as: the new tenant's region (default: the backup's). In place: must be the tenant's own region (a pin changes only by dforge tenant move).", dependsOn: ['tenant']}),
    'drop-previous': Flags.boolean({summary: 'Drop the replaced database instead of keeping it (no --undo afterwards).', dependsOn: ['tenant']}),
    confirm: Flags.string({summary: `Repeat the tenant's slug (or ${CONTROL_DATABASE} with --control) to confirm replacing its database.`}),
    undo: Flags.string({summary: "Swap this tenant's newest kept previous database back in.", exactlyOne: ['tenant', 'control', 'undo']}),
    control: Flags.boolean({summary: 'Restore dforge_control (disaster recovery).', exactlyOne: ['tenant', 'control', 'undo']}),
    'pg-tools': pgToolsFlag(),
    ...crossRegionFlags,
  };

  async run(): Promise<RestoreResult | ControlRestoreResult | UndoResult> {
    // dforge_control holds only global data, and an undo swaps back a database the tenant had in its
    // own region: there is no crossing to approve, so an approval given here would mean nothing.
    if ((this.flags.control || this.flags.undo !== undefined) && (this.flags['allow-cross-region'] || this.flags.reason !== undefined)) {
      throw new UsageError(`--allow-cross-region and --reason apply to restore --tenant only; ${this.flags.control ? '--control' : '--undo'} never moves a tenant's data out of its region`, {nextSteps: ['Re-run without --allow-cross-region and --reason']});
    }
    if (this.flags.control) return this.restoreControl();
    if (this.flags.undo !== undefined) return this.undo(this.flags.undo);
    const slug = this.flags.tenant!;
    const from = this.flags.from;
    if (!from) this.error('--from is required with --tenant (a backup id or file; see dforge backup list)', {exit: 2});
    const dropPrevious = this.flags['drop-previous'];
    const approval = approvalFromFlags(this.flags);
    const toRegion = this.flags['to-region'];
    const result = await usingControlPlane(
      this.installDir(),
      async (plane) => {
        let confirm: string | undefined;
        if (this.flags.as === undefined) {
          // Asked before anything is created: the answer names the database and where the old one goes.
          const tenant = await restoreTarget(plane, slug, from, toRegion);
          confirm = await confirmDestructive({
            provided: this.flags.confirm,
            expected: tenant.slug,
            flag: '--confirm',
            question: `Restore ${from} over tenant ${tenant.slug}: its database ${tenant.database} is replaced and its open sessions are ended; the current one is ${dropPrevious ? 'dropped (no undo)' : `kept as ${tenant.database}__pre_restore_<time> (undo: ${undoCommand(tenant.slug)})`}. Type the slug to confirm`,
            rerun: restoreCommand(tenant.slug, from, dropPrevious),
          });
        }
        return withOpsRecord(
          plane,
          {action: 'restore.tenant', target: `tenant:${this.flags.as ?? slug}`, details: (r) => ({backupId: r.backupId, from: slug, database: r.database, previousDatabase: r.previousDatabase})},
          () => changingTenants(plane, [slug, ...(this.flags.as === undefined ? [] : [this.flags.as])], () => restoreTenant(plane, {tenant: slug, from, as: this.flags.as, toRegion, approval, dropPrevious, confirm}), (text) => this.out.warn(text)),
        );
      },
      {pgTools: this.flags['pg-tools']},
    );
    this.out.progress(`restored ${result.backupId} into ${result.database}${result.previousDatabase ? `; previous kept as ${result.previousDatabase} (undo: ${undoCommand(result.tenant)})` : ''}`);
    return result;
  }

  private async restoreControl(): Promise<ControlRestoreResult> {
    const confirm = await confirmDestructive({
      provided: this.flags.confirm,
      expected: CONTROL_DATABASE,
      flag: '--confirm',
      question: `Replace ${CONTROL_DATABASE} (tenant registry, sealed passwords, data keys, backup catalog, ops log) with a control backup? Its open sessions are ended; the current one is kept as ${CONTROL_DATABASE}_pre_restore_<time>. Type ${CONTROL_DATABASE} to confirm`,
      // Refused here, before the ops log records a restore that never started.
      rerun: `dforge restore --control --confirm ${CONTROL_DATABASE}`,
    });
    // Success is recorded by the restore itself, in the restored log, where it re-anchors it.
    const result = await withOpsRecord(this.installDir(), {action: 'restore.control', target: 'control', changed: () => false}, () =>
      restoreControl(this.installDir(), {from: this.flags.from, confirm, pgTools: this.flags['pg-tools']}),
    );
    this.out.progress(`dforge_control restored from ${result.backupId} (${formatTime(result.createdAt)}); ${result.tenants} tenants registered, ${result.catalog.added} backups adopted into the catalog`);
    throwIfTampered(result.catalog, `dforge_control was restored from ${result.backupId}`);
    return result;
  }

  private async undo(slug: string): Promise<UndoResult> {
    const result = await usingControlPlane(
      this.installDir(),
      async (plane) => {
        // A tenant with nothing kept is refused here, before the question.
        const plan = await planUndo(plane, {tenant: slug});
        const confirm = await confirmDestructive({
          provided: this.flags.confirm,
          expected: plan.tenant.slug,
          flag: '--confirm',
          question: `Swap ${plan.restoredDatabase} (kept since ${plan.keptSince}) back in as ${plan.database} of tenant ${plan.tenant.slug}? Its open sessions are ended; the current database is kept as ${plan.previousDatabase}. Type the slug to confirm`,
          rerun: undoCommand(plan.tenant.slug),
        });
        return withOpsRecord(
          plane,
          {action: 'restore.undo', target: `tenant:${plan.tenant.slug}`, details: (r) => ({database: r.database, restoredDatabase: r.restoredDatabase, previousDatabase: r.previousDatabase})},
          () => undoRestore(plane, {tenant: plan.tenant.slug, confirm, planned: plan}),
        );
      },
    );
    this.out.progress(`${result.restoredDatabase} is ${result.database} again; the database it replaced is kept as ${result.previousDatabase} (run --undo again to swap it back)`);
    return result;
  }
}
