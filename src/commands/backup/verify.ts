import {Args, Flags} from '@oclif/core';

import {withOpsRecord} from '../../audit/record.js';
import {BaseCommand} from '../../base-command.js';
import {verifyAll, verifyBackup, type VerifyAllResult, type VerifyResult} from '../../backup/verify.js';
import {usingControlPlane} from '../../control/plane.js';
import {formatBytes} from '../../ui/bytes.js';

export default class BackupVerify extends BaseCommand<typeof BackupVerify> {
  static override summary = 'Check backups: authenticate the header, bind it to the catalog, and check every byte; with --deep, also read the dump.';
  static override description = `The header is always authenticated with the backup's key, and must match the catalog entry, the manifest and the file's place. A catalog backup's file must then hash to the catalog's digest; a file named by path has every chunk decrypted (its manifest proves nothing on its own). --deep decrypts everything through pg_restore --list and marks the backup verified (prune never deletes the newest verified backup).
Exit 6 when a backup was tampered with, replaced or damaged. --all prints one line per backup and a summary; exit 6 if any was tampered with, 4 if some could not be checked.`;
  static override examples = ['<%= config.bin %> backup verify 20261127T120000Z-acme-1a2b3c --deep', '<%= config.bin %> backup verify --all --deep'];

  static override args = {id: Args.string({description: 'Backup id, or a path to a .dfb file.'})};
  static override flags = {
    all: Flags.boolean({summary: 'Verify every backup in the catalog.', exclusive: ['id']}),
    // default false: the result's deep field is a boolean, never absent (docs/schemas/backup-verify.schema.json).
    deep: Flags.boolean({summary: 'Decrypt the whole stream and run pg_restore --list on it.', default: false}),
  };

  async run(): Promise<VerifyResult | VerifyAllResult> {
    return usingControlPlane(this.installDir(), async (plane) => {
      if (!this.flags.all) {
        if (!this.args.id) this.error('name a backup id (or a file), or pass --all', {exit: 2});
        const result = await withOpsRecord(plane, {action: 'backup.verify', target: `backup:${this.args.id!}`, details: (r) => ({tenant: r.tenant, deep: r.deep, checks: r.checks})}, () =>
          verifyBackup(plane, this.args.id!, {deep: this.flags.deep}),
        );
        this.out.progress(`${result.id}: ok (${formatBytes(result.size)}; ${result.checks.join(', ')}${result.objects ? `; ${Object.entries(result.objects).map(([k, v]) => `${v} ${k.toLowerCase()}`).join(', ')}` : ''})`);
        return result;
      }
      return withOpsRecord(plane, {action: 'backup.verify', target: 'backups', details: (r) => ({deep: this.flags.deep, ok: r.ok, tampered: r.tampered, errors: r.errors})}, () => verifyAll(plane, {
        deep: this.flags.deep,
        report: (line) => {
          if (!this.jsonEnabled()) this.log(`${line.id}\t${line.tenant}\t${line.status}${line.reason ? `\t${line.reason}` : ''}`);
        },
        summary: (text) => this.out.progress(text),
      }));
    });
  }
}
