import {Flags} from '@oclif/core';

import {BaseCommand} from '../base-command.js';
import {prepareUpgrade, type UpgradePlan} from '../install/lifecycle.js';
import {commonInstallSteps, installResult, newInstallContext, targetInstallSteps, type InstallResult} from '../install/service.js';
import {runSteps} from '../ui/tasks.js';

export default class Upgrade extends BaseCommand<typeof Upgrade> {
  static override summary = 'Upgrade to another release: back up every tenant, switch the images, reconcile.';
  static override description = `If any backup fails the upgrade stops (exit 4) before anything changes. Then dforge.yaml moves to the release (images pinned to the old release follow), and the stack is reconciled exactly like dforge install.`;
  static override examples = ['<%= config.bin %> upgrade --to 1.5.0'];

  static override flags = {
    to: Flags.string({summary: 'The release to move to.', required: true}),
  };

  async run(): Promise<{upgrade: Omit<UpgradePlan, 'backups'> & {backups: number}; install: InstallResult}> {
    const dir = this.installDir();
    const plan = await prepareUpgrade(dir, this.flags.to, {report: (outcome) => process.stderr.write(`${JSON.stringify({event: 'backup', ...outcome})}\n`)});
    this.out.progress(`backed up ${plan.backups.tenants.length} tenant(s); release ${plan.from} → ${plan.to}`);
    const options = {provided: {}, ignore: [], cliPath: process.argv[1] ?? 'dforge'};
    const ctx = newInstallContext();
    await runSteps(commonInstallSteps(dir, options), ctx, this.out);
    await runSteps(await targetInstallSteps(dir, options, ctx.config!.target), ctx, this.out);
    const {backups, ...rest} = plan;
    return {upgrade: {...rest, backups: backups.tenants.length}, install: await installResult(dir, ctx, options)};
  }
}
