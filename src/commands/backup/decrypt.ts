import {Args, Flags} from '@oclif/core';

import {BaseCommand} from '../../base-command.js';
import {decryptBackup, decryptWithControlBackup, type ConfirmDecrypt, type DecryptResult} from '../../backup/decrypt.js';
import {crossRegionFlags} from '../../cli/cross-region-flags.js';
import {usingControlPlane} from '../../control/plane.js';
import {approvalFromFlags} from '../../residency/policy.js';
import {openKeyServices} from '../../keys/context.js';
import {formatBytes} from '../../ui/bytes.js';
import {confirmDestructive} from '../../ui/confirm.js';

export default class BackupDecrypt extends BaseCommand<typeof BackupDecrypt> {
  static override summary = "Emergency: write a backup's plain pg_dump file, after verifying every byte.";
  static override description = `Authenticates the header and every chunk first (exactly as restore does); only then is the plain pg_dump custom-format dump written to --out, mode 0600, atomically. A tampered backup exits 6 and writes nothing. An existing --out is never overwritten.
The plain file holds the tenant's data outside its encryption: it needs --confirm <backup id or tenant>, or a typed confirmation on a terminal, and is recorded in the ops log (id, tenant, path, size, SHA-256).
--from-control-backup <file> needs no live dforge_control: the tenant's data key is read from that control backup, opened with the install's master key. The ops-log entry is then written only if dforge_control is reachable; otherwise stderr says so.
The plain file is written on this host, in region operatorRegion of dforge.yaml (default primaryRegion): a tenant backup of another region is refused (exit 1) unless --allow-cross-region --reason is given, which is written to the ops log before the file exists (so then dforge_control must be reachable, even with --from-control-backup).`;
  static override examples = [
    '<%= config.bin %> backup decrypt 20261127T120000Z-acme-1a2b3c --out acme.dump --confirm acme',
    '<%= config.bin %> backup decrypt /backups/acme/20261127T120000Z-acme-1a2b3c.dfb --from-control-backup /backups/_control/20261127T120500Z-_control-4d5e6f.dfb --out acme.dump',
  ];

  static override args = {backup: Args.string({required: true, description: 'Backup id, or a path to a .dfb file (a file with --from-control-backup).'})};
  static override flags = {
    out: Flags.string({required: true, summary: 'The plain dump to write (must not exist).'}),
    'from-control-backup': Flags.string({summary: 'Take the data key from this control backup file; no live dforge_control needed.'}),
    confirm: Flags.string({summary: 'Repeat the backup id or the tenant to confirm.'}),
    ...crossRegionFlags,
  };

  async run(): Promise<DecryptResult> {
    const confirm: ConfirmDecrypt = (header) =>
      confirmDestructive({
        provided: this.flags.confirm,
        expected: header.backupId,
        accepts: [header.tenant],
        flag: '--confirm',
        question: `Write the data of ${header.tenant} (backup ${header.backupId}) unencrypted to ${this.flags.out}? Type the backup id or the tenant to confirm`,
      });
    const approval = approvalFromFlags(this.flags);
    const options = {out: this.flags.out, confirm, ...(approval ? {approval} : {})};
    const controlBackup = this.flags['from-control-backup'];
    const result = controlBackup
      ? await decryptWithControlBackup({dir: this.installDir(), keyring: (await openKeyServices(this.installDir())).keyring, warn: (t) => this.out.warn(t)}, this.args.backup, controlBackup, options)
      : await usingControlPlane(this.installDir(), (plane) => decryptBackup(plane, this.args.backup, options));
    this.out.progress(`${result.backupId}: verified; plain dump written to ${result.out} (${formatBytes(result.bytes)}, sha256 ${result.sha256}). It is unencrypted: delete it when done.`);
    return result;
  }
}
