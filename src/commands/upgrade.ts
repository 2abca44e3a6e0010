import {Flags} from '@oclif/core';
import type Docker from 'dockerode';

import {withOpsRecord} from '../audit/record.js';
import {BaseCommand} from '../base-command.js';
import {withStackLock} from '../install/lifecycle.js';
import {applyRollback, planRollback, prepareUpgrade, restorePreUpgradeBackups, type ImageIdOf, type RestoredTenant, type UpgradePlan} from '../install/upgrade.js';
import {newInstallContext, type InstallContext, type InstallResult} from '../install/context.js';
import {commonInstallSteps, installResult, targetInstallSteps} from '../install/steps.js';
import type {InstallDir} from '../state/install-dir.js';
import {confirmDestructive} from '../ui/confirm.js';
import {runSteps} from '../ui/tasks.js';

export interface UpgradeOutput {
  upgrade: Omit<UpgradePlan, 'backups'> & {backups: number};
  install: InstallResult;
}

export interface RollbackOutput {
  rollback: {from: string; to: string; history: number; restored: RestoredTenant[]};
  install: InstallResult;
}

export default class Upgrade extends BaseCommand<typeof Upgrade> {
  static override summary = 'Upgrade to another release: back up every tenant, switch the images, reconcile; or roll back to the release before.';
  static override description = `Refused before anything changes: a release older than the current one (semantic-version order; --allow-downgrade to mean it), and an upgrade that would run the same images (every image pinned to something other than the old release's tag). If any backup fails the upgrade stops (exit 4) before anything changes. Then dforge.yaml moves to the release (images pinned to the old release follow), the release is recorded in state/releases.json, and the stack is reconciled exactly like dforge install.
--rollback returns to the release recorded before the current one: its saved dforge.yaml and the very images it ran, reconciled like install. With --restore-backups (and --confirm <domain>) each tenant is also restored from the backup taken just before the upgrade; the live databases are kept as <db>__pre_restore_<ts>.`;
  static override examples = ['<%= config.bin %> upgrade --to 1.5.0', '<%= config.bin %> upgrade --rollback', '<%= config.bin %> upgrade --rollback --restore-backups --confirm dforge.example.com'];

  static override flags = {
    to: Flags.string({summary: 'The release to move to.', exactlyOne: ['to', 'rollback']}),
    'allow-downgrade': Flags.boolean({summary: 'Allow --to a release older than the current one (or not a semantic version).', dependsOn: ['to']}),
    rollback: Flags.boolean({summary: 'Return to the release before this one in the release history.', exactlyOne: ['to', 'rollback']}),
    'restore-backups': Flags.boolean({summary: 'With --rollback: also restore every tenant from its pre-upgrade backup (replaces live databases; needs --confirm).', dependsOn: ['rollback']}),
    confirm: Flags.string({summary: 'With --restore-backups: the install\'s domain, to confirm replacing the live databases.', dependsOn: ['restore-backups']}),
  };

  async run(): Promise<UpgradeOutput | RollbackOutput> {
    return this.flags.rollback ? this.rollback() : this.upgrade(this.flags.to!);
  }

  private async upgrade(to: string): Promise<UpgradeOutput> {
    const dir = this.installDir();
    const ctx = newInstallContext();
    const plan = await withOpsRecord(
      dir,
      {action: 'upgrade', target: `release:${to}`, details: (p: UpgradePlan) => ({from: p.from, to: p.to, history: p.history, backupIds: p.backups.tenants.map((t) => t.backupId).filter(Boolean), pinned: p.pinned})},
      () =>
        withStackLock(dir, `dforge upgrade --to ${to}`, async () => {
          const prepared = await prepareUpgrade(dir, to, {
            allowDowngrade: this.flags['allow-downgrade'],
            report: (outcome) => process.stderr.write(`${JSON.stringify({event: 'backup', ...outcome})}\n`),
            imageId: engineImageId(),
            dforgeVersion: this.config.version,
          });
          for (const p of prepared.pinned) this.out.warn(`image ${p} is pinned to something other than release ${prepared.from}: left as it is`);
          this.out.progress(`backed up ${prepared.backups.tenants.length} tenant(s); release ${prepared.from} → ${prepared.to}`);
          await reconcile(dir, ctx, this.out);
          return prepared;
        }),
    );
    const {backups, ...rest} = plan;
    return {upgrade: {...rest, backups: backups.tenants.length}, install: await installResult(dir, ctx)};
  }

  private async rollback(): Promise<RollbackOutput> {
    const dir = this.installDir();
    const ctx = newInstallContext();
    const restoreBackups = this.flags['restore-backups'];
    const result = await withOpsRecord(
      dir,
      {action: 'upgrade.rollback', target: 'release', details: (r: RollbackOutput['rollback']) => ({...r, restored: r.restored.map((t) => `${t.tenant}:${t.backupId}`)})},
      () =>
        withStackLock(dir, 'dforge upgrade --rollback', async () => {
          const plan = await planRollback(dir, {restoreBackups, imageId: engineImageId()});
          if (restoreBackups) {
            await confirmDestructive({
              provided: this.flags.confirm,
              expected: plan.domain,
              flag: '--confirm',
              question: `This replaces the live databases of ${plan.restore.length} tenant(s) with their backups from before the upgrade to ${plan.from.release}. Type the domain (${plan.domain}) to confirm`,
              rerun: `dforge upgrade --rollback --restore-backups --confirm ${plan.domain}`,
            });
          }
          const entry = await applyRollback(dir, plan, {dforgeVersion: this.config.version});
          this.out.progress(`release ${plan.from.release} → ${plan.to.release} (dforge.yaml from ${plan.to.config})`);
          await reconcile(dir, ctx, this.out);
          const restored = restoreBackups ? await restorePreUpgradeBackups(dir, plan.restore) : [];
          for (const r of restored) this.out.progress(`restored ${r.tenant} from ${r.backupId}${r.previousDatabase ? `; previous kept as ${r.previousDatabase}` : ''}`);
          return {from: plan.from.release, to: plan.to.release, history: entry.seq, restored};
        }),
    );
    return {rollback: result, install: await installResult(dir, ctx)};
  }
}

/** The stack reconciled exactly like dforge install, on the dforge.yaml now in place. */
async function reconcile(dir: InstallDir, ctx: InstallContext, out: Parameters<typeof runSteps>[2]): Promise<void> {
  const options = {provided: {}, ignore: []};
  await runSteps(commonInstallSteps(dir, options), ctx, out);
  await runSteps(await targetInstallSteps(dir, options, ctx.config!.target), ctx, out);
}

/** Image ids from the local engine, connected on first use: a Kubernetes install never asks it. */
function engineImageId(): ImageIdOf {
  let docker: Promise<Docker> | undefined;
  return async (ref) => {
    docker ??= import('../docker/engine.js').then(({connectDockerEngine}) => connectDockerEngine());
    return (await docker)
      .getImage(ref)
      .inspect()
      .then(
        (info) => info.Id,
        () => undefined,
      );
  };
}
