import {Args, Flags} from '@oclif/core';

import {BaseCommand} from '../../base-command.js';
import {BackupCatalog} from '../../backup/catalog.js';
import {verifyBackup, type VerifyResult} from '../../backup/verify.js';
import {usingControlPlane} from '../../control/plane.js';
import {PartialError} from '../../errors.js';

export default class BackupVerify extends BaseCommand<typeof BackupVerify> {
  static override summary = 'Check backups: size and SHA-256 against the manifest; with --deep, decrypt everything and read the dump.';
  static override description = 'Exit 6 when a backup was tampered with or damaged. --deep needs the tenant\'s data key and marks the backup verified (prune never deletes the newest verified backup).';
  static override examples = ['<%= config.bin %> backup verify 20261127T120000Z-acme-1a2b3c --deep', '<%= config.bin %> backup verify --all'];

  static override args = {id: Args.string({description: 'Backup id, or a path to a .dfb file.'})};
  static override flags = {
    all: Flags.boolean({summary: 'Verify every backup in the catalog.', exclusive: ['id']}),
    deep: Flags.boolean({summary: 'Decrypt the whole stream and run pg_restore --list on it.'}),
  };

  async run(): Promise<VerifyResult | VerifyResult[]> {
    return usingControlPlane(this.installDir(), async (plane) => {
      if (!this.flags.all) {
        if (!this.args.id) this.error('name a backup id (or a file), or pass --all', {exit: 2});
        const result = await verifyBackup(plane, this.args.id!, {deep: this.flags.deep});
        this.out.progress(`${result.id}: ok (${result.size} bytes${result.deep ? `, ${Object.entries(result.objects ?? {}).map(([k, v]) => `${v} ${k.toLowerCase()}`).join(', ')}` : ''})`);
        return result;
      }
      const results: VerifyResult[] = [];
      const failures: string[] = [];
      for (const record of await new BackupCatalog(plane.control).list()) {
        try {
          results.push(await verifyBackup(plane, record.id, {deep: this.flags.deep}));
        } catch (err) {
          failures.push(`${record.id}: ${err instanceof Error ? err.message : String(err)}`);
        }
      }
      if (failures.length > 0) throw new PartialError(`${failures.length} backup(s) failed verification: ${failures.join('; ')}`, {nextSteps: ['Take fresh backups of the affected tenants and remove the damaged files.'], data: {failures}});
      return results;
    });
  }
}
