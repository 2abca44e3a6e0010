import {Flags} from '@oclif/core';

import {BaseCommand} from '../base-command.js';
import {loadConfigFile} from '../config/load.js';
import {UsageError} from '../errors.js';
import {withStackLock} from '../install/lifecycle.js';
import {uninstall, type UninstallResult} from '../install/uninstall.js';
import {confirmDestructive} from '../ui/confirm.js';

export default class Uninstall extends BaseCommand<typeof Uninstall> {
  static override summary = 'Stop and remove the stack; data volumes and secrets stay unless --purge.';
  static override description = `Without --purge this is reversible: dforge install brings the same stack back on the same data.
--purge also deletes the database volumes, and dforge.yaml, secrets/ (the master key), runtime/, rendered/, pki/ and state/ in the install directory. Template overrides, other files and backup destinations are left alone, but without the master key backups cannot be decrypted. It needs --confirm <domain>, or the domain typed on a terminal.`;
  static override examples = ['<%= config.bin %> uninstall', '<%= config.bin %> uninstall --purge --confirm erp.example.com'];

  static override flags = {
    purge: Flags.boolean({summary: 'Also delete the data volumes and every secret.'}),
    confirm: Flags.string({summary: 'With --purge: the install domain, to confirm.', dependsOn: ['purge']}),
  };

  async run(): Promise<UninstallResult> {
    const dir = this.installDir();
    if (this.flags.purge) {
      const {domain} = await loadConfigFile(dir.configFile);
      const answer = await confirmDestructive({provided: this.flags.confirm, expected: domain, flag: '--confirm', question: `Delete every database volume and secret of ${domain}? Type the domain to confirm`});
      if (answer !== domain) throw new UsageError(`--confirm ${answer} does not match the install domain`, {nextSteps: [`Re-run with --confirm ${domain}`]});
    }
    const result = await withStackLock(dir, 'dforge uninstall', () => uninstall(dir, {purge: this.flags.purge}));
    this.out.progress(result.purged ? `removed the stack, its volumes and ${result.removed.length} path(s)` : `removed the stack; kept: ${result.kept.join(', ')}`);
    return result;
  }
}
