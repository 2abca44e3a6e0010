import {Flags} from '@oclif/core';

import {BaseCommand} from '../base-command.js';
import {loadConfigFile} from '../config/load.js';
import {withStackLock} from '../install/lifecycle.js';
import {backupsNeedingMasterKey, uninstall, type UninstallResult} from '../install/uninstall.js';
import {exportMasterKey, type MasterKeyExport} from '../keys/export-master.js';
import {confirmDestructive} from '../ui/confirm.js';
import {offerMasterKeyExport} from '../ui/offer-export.js';

// How many orphaned backups the prompt names before it says "and N more".
const LISTED_BACKUPS = 10;

export default class Uninstall extends BaseCommand<typeof Uninstall> {
  static override summary = 'Stop the install (the compose stack, or embedded PostgreSQL); data and secrets stay unless --purge.';
  static override description = `Without --purge this is reversible: dforge install (compose) or dforge quickstart / db start (embedded) brings the same install back on the same data.
--purge also deletes the data (compose volumes, or the embedded data directory), and dforge.yaml, secrets/ (the master key), runtime/, rendered/, pki/ and state/ in the install directory. Template overrides, other files and backup destinations are left alone, but without the master key no backup can be decrypted: the backups this orphans are listed first, and --export-master-key FILE (or the prompt on a terminal) writes the master key out before anything is removed. --purge needs --confirm <domain>, or the domain typed on a terminal.`;
  static override examples = [
    '<%= config.bin %> uninstall',
    '<%= config.bin %> uninstall --purge --export-master-key /media/usb/dforge-master-key.json --confirm erp.example.com',
  ];

  static override flags = {
    purge: Flags.boolean({summary: 'Also delete the data and every secret.'}),
    confirm: Flags.string({summary: 'With --purge: the install domain, to confirm.', dependsOn: ['purge']}),
    'export-master-key': Flags.string({summary: 'With --purge: first write the master key to this new file (0600), so the backups stay readable.', dependsOn: ['purge']}),
  };

  async run(): Promise<UninstallResult & {masterKeyExport: MasterKeyExport | null}> {
    const dir = this.installDir();
    let exportTo = this.flags['export-master-key'];
    if (this.flags.purge) {
      const config = await loadConfigFile(dir.configFile);
      const {domain} = config;
      const orphaned = await backupsNeedingMasterKey(config);
      if (orphaned.length > 0 && exportTo === undefined) {
        this.out.warn(`${orphaned.length} backup(s) cannot be decrypted once the master key is deleted:`);
        for (const file of orphaned.slice(0, LISTED_BACKUPS)) this.out.warn(`  ${file}`);
        if (orphaned.length > LISTED_BACKUPS) this.out.warn(`  and ${orphaned.length - LISTED_BACKUPS} more`);
      }
      exportTo ??= await offerMasterKeyExport();
      const what = `every ${config.target === 'compose' ? 'database volume' : 'database'} and secret of ${domain}${orphaned.length > 0 && exportTo === undefined ? `, leaving ${orphaned.length} backup(s) unreadable` : ''}`;
      await confirmDestructive({provided: this.flags.confirm, expected: domain, flag: '--confirm', question: `Delete ${what}? Type the domain to confirm`, rerun: `dforge uninstall --purge --confirm ${domain}`});
    }
    // Before anything is removed: a failed export (an existing file, no key material) stops the purge.
    const masterKeyExport = exportTo === undefined ? null : await exportMasterKey(dir, exportTo);
    if (masterKeyExport) this.out.progress(`exported master key version(s) ${masterKeyExport.versions.join(', ')} to ${masterKeyExport.file}`);
    const result = await withStackLock(dir, 'dforge uninstall', () => uninstall(dir, {purge: this.flags.purge}));
    const down = result.target === 'compose' ? 'removed the stack' : result.stopped.length > 0 ? `stopped PostgreSQL (${result.stopped.join(', ')})` : 'PostgreSQL was not running';
    this.out.progress(result.purged ? `${down}; deleted its data and ${result.removed.length} path(s)` : `${down}; kept: ${result.kept.join(', ')}`);
    if (result.purged && result.orphanedBackups.length > 0) {
      this.out.warn(masterKeyExport ? `${result.orphanedBackups.length} backup(s) kept; they open with the master key in ${masterKeyExport.file}` : `${result.orphanedBackups.length} backup(s) kept that nothing can decrypt any more`);
    }
    return {...result, masterKeyExport};
  }
}
