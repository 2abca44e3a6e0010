import {Args, Flags} from '@oclif/core';

import {BaseCommand} from '../../base-command.js';
import {crossRegionFlags} from '../../cli/cross-region-flags.js';
import {usingControlPlane} from '../../control/plane.js';
import {UsageError} from '../../errors.js';
import {approvalFromFlags} from '../../residency/policy.js';
import {changingTenants} from '../../runtime/tenant-catalog.js';
import type {MoveRecord} from '../../tenants/move-journal.js';
import {moveStatus, moveTenant, purgeSource, resumeMove, rollbackMove, type PurgeResult} from '../../tenants/move.js';
import type {TableChecksum} from '../../tenants/table-checksums.js';
import {confirmDestructive} from '../../ui/confirm.js';

type MoveOutput =
  | {action: 'move' | 'resume' | 'rollback'; tenant: string; move: MoveRecord; checksums: readonly TableChecksum[]}
  | {action: 'status'; tenant: string; move: MoveRecord | null}
  | ({action: 'purge-source'} & PurgeResult);

export default class TenantMove extends BaseCommand<typeof TenantMove> {
  static override summary = "Move a tenant's database to another cluster or region, through a journal that --resume or --rollback finishes after any crash.";
  static override description = `Steps: plan (recorded before anything exists on the target), freeze (the tenant's role cannot log in), copy (pg_dump piped into pg_restore over verified TLS, loaded with the tenant's power only), verify (row counts and checksums of every table, object counts), cutover (the registry and the app catalog name the target), unfreeze.
A move to another region needs --allow-cross-region --reason, written to the ops log, and rotates the tenant's data key before cutover. The source database and the backups in the source region stay until --purge-source, which deletes them, or crypto-shreds a backup it cannot delete.`;
  static override examples = [
    '<%= config.bin %> tenant move acme --to-cluster eu-2',
    '<%= config.bin %> tenant move acme --to-region us --allow-cross-region --reason "DPA-2026-14 customer-requested move"',
    '<%= config.bin %> tenant move acme --status',
    '<%= config.bin %> tenant move acme --resume',
    '<%= config.bin %> tenant move acme --rollback',
    '<%= config.bin %> tenant move acme --purge-source --confirm acme',
  ];

  static override args = {slug: Args.string({required: true})};

  static override flags = {
    'to-cluster': Flags.string({summary: 'The target cluster; its region follows.'}),
    'to-region': Flags.string({summary: 'The target region; its cluster with the most free capacity is chosen.'}),
    status: Flags.boolean({summary: "Show the tenant's open move, else its last one."}),
    resume: Flags.boolean({summary: 'Continue the open move from the step its journal records.'}),
    rollback: Flags.boolean({summary: 'Undo the open move (before cutover only): drop what it made on the target, let the source log in again.'}),
    'purge-source': Flags.boolean({summary: "After a finished move, drop the source database and roles and, after a move out of a region, delete or crypto-shred the tenant's backups there (needs --confirm <slug>)."}),
    confirm: Flags.string({summary: 'Repeat the slug to confirm --purge-source.'}),
    ...crossRegionFlags,
  };

  async run(): Promise<MoveOutput> {
    const slug = this.args.slug;
    const f = this.flags;
    const modes = [f['to-cluster'] !== undefined || f['to-region'] !== undefined, f.status, f.resume, f.rollback, f['purge-source']].filter(Boolean).length;
    if (modes !== 1) {
      throw new UsageError('give exactly one of --to-cluster/--to-region, --status, --resume, --rollback, --purge-source', {nextSteps: [`Start a move with: dforge tenant move ${slug} --to-cluster <cluster>`]});
    }
    if (f.status) return usingControlPlane(this.installDir(), async (plane) => ({action: 'status', tenant: slug, move: await moveStatus(plane, slug)}));
    if (f['purge-source']) {
      const confirm = await confirmDestructive({provided: f.confirm, expected: slug, flag: '--confirm', question: `Drop the source database and roles of ${slug} left by its move, and its backups in the source region? Type the slug to confirm`});
      const purged = await usingControlPlane(this.installDir(), (plane) => purgeSource(plane, slug, confirm, (line) => this.out.progress(line)));
      this.out.progress(`dropped ${purged.dropped.join(', ') || 'nothing'} of ${slug} on ${purged.cluster}; source-region backups: ${purged.backupsDeleted.length} deleted, ${purged.backupsShredded.length} crypto-shredded`);
      if (purged.completeTheShred) this.out.warn(`control backups taken before this purge still hold the destroyed key versions; complete the shred with: ${purged.completeTheShred.join(', then ')}`);
      return {action: 'purge-source', ...purged};
    }
    const approval = approvalFromFlags(f);
    const action = f.resume ? 'resume' : f.rollback ? 'rollback' : 'move';
    const result = await usingControlPlane(this.installDir(), (plane) =>
      // The app catalog follows the registry: republished after every run, a rollback included.
      changingTenants(plane, [slug], () =>
        action === 'resume' ? resumeMove(plane, slug) : action === 'rollback' ? rollbackMove(plane, slug) : moveTenant(plane, {tenant: slug, toCluster: f['to-cluster'], toRegion: f['to-region'], approval}),
        (text) => this.out.warn(text),
      ),
    );
    this.out.progress(`move #${result.move.id} of ${slug}: ${result.move.fromCluster} -> ${result.move.toCluster}, ${result.move.state}${result.checksums.length ? ` (${result.checksums.length} tables verified)` : ''}`);
    return {action, ...result};
  }
}
