import {Args, Flags} from '@oclif/core';

import {BaseCommand} from '../../base-command.js';
import {installExportPublicKey, readExportPublicKey, verifyExport, type ExportVerification} from '../../audit/export.js';

export default class AuditVerifyExport extends BaseCommand<typeof AuditVerifyExport> {
  static override summary = "Check an audit export against its signed manifest: signature, SHA-256 and row count; exit 6 on any mismatch.";
  static override description = "Reads FILE.manifest.json beside FILE. The signature is checked with the install's export key, or with --public-key (pki/audit-export.pub of the install) where there is no install.";
  static override examples = ['<%= config.bin %> audit verify-export acme-changes.jsonl', '<%= config.bin %> audit verify-export ops-q1.csv --public-key audit-export.pub --json'];
  static override args = {
    file: Args.string({description: 'The export file.', required: true}),
  };
  static override flags = {
    'public-key': Flags.file({summary: 'The Ed25519 public key (PEM) to check the signature with, instead of the install\'s.', exists: true}),
  };

  async run(): Promise<ExportVerification> {
    const keyFile = this.flags['public-key'];
    const key = keyFile === undefined ? await installExportPublicKey(this.installDir()) : await readExportPublicKey(keyFile);
    const result = await verifyExport(this.args.file, key);
    if (!this.jsonEnabled()) this.log(`verified: ${result.file} is the export its manifest signs (${result.manifest.rows} rows of ${result.manifest.source}, sha256 ${result.manifest.file.sha256})`);
    return result;
  }
}
