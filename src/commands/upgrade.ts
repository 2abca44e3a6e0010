import {Flags} from '@oclif/core';

import {BaseCommand} from '../base-command.js';
import {withStackLock} from '../install/lifecycle.js';
import {prepareUpgrade, type UpgradePlan} from '../install/upgrade.js';
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
    const options = {provided: {}, ignore: []};
    const ctx = newInstallContext();
    const plan = await withStackLock(dir, `dforge upgrade --to ${this.flags.to}`, async () => {
      // The engine is asked only for a compose install; Kubernetes pulls from its registry.
      const engine = (async () => {
        const [{connectDockerEngine}, {imagePresent}] = await Promise.all([import('../docker/engine.js'), import('../docker/images.js')]);
        const docker = await connectDockerEngine();
        return (ref: string) => imagePresent(docker, ref);
      });
      let present: Promise<(ref: string) => Promise<boolean>> | undefined;
      const prepared = await prepareUpgrade(dir, this.flags.to, {
        report: (outcome) => process.stderr.write(`${JSON.stringify({event: 'backup', ...outcome})}\n`),
        imagePresent: async (ref) => (await (present ??= engine()))(ref),
      });
      for (const p of prepared.pinned) this.out.warn(`image ${p} is pinned to something other than release ${prepared.from}: left as it is`);
      this.out.progress(`backed up ${prepared.backups.tenants.length} tenant(s); release ${prepared.from} → ${prepared.to}`);
      await runSteps(commonInstallSteps(dir, options), ctx, this.out);
      await runSteps(await targetInstallSteps(dir, options, ctx.config!.target), ctx, this.out);
      return prepared;
    });
    const {backups, ...rest} = plan;
    return {upgrade: {...rest, backups: backups.tenants.length}, install: await installResult(dir, ctx)};
  }
}
