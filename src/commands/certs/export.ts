import {Flags} from '@oclif/core';

import {BaseCommand} from '../../base-command.js';
import {exportCa} from '../../certs/service.js';
import {writeFileAtomic} from '../../state/atomic-file.js';

export default class CertsExport extends BaseCommand<typeof CertsExport> {
  static override summary = "Write the install CA certificate for clients' trust stores (PEM or PKCS#12).";
  static override description = 'The bundle holds the CA certificate only, never a key. A PKCS#12 password, if your tooling wants one, comes from DFORGE_P12_PASSWORD.';
  static override examples = ['<%= config.bin %> certs export --format p12 --out dforge-ca.p12', '<%= config.bin %> certs export --format pem --out dforge-ca.pem'];

  static override flags = {
    format: Flags.string({summary: 'Bundle format.', options: ['pem', 'p12'] as const, default: 'pem'}),
    out: Flags.string({summary: 'File to write.', required: true}),
  };

  async run(): Promise<{file: string; format: string; bytes: number}> {
    const bytes = await exportCa(this.installDir(), {format: this.flags.format as 'pem' | 'p12', password: process.env.DFORGE_P12_PASSWORD});
    await writeFileAtomic(this.flags.out, bytes, {mode: 0o644});
    this.out.progress(`wrote ${this.flags.out}`);
    return {file: this.flags.out, format: this.flags.format, bytes: bytes.length};
  }
}
