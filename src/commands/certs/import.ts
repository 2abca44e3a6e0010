import {Flags} from '@oclif/core';

import {withOpsRecord} from '../../audit/record.js';
import {BaseCommand} from '../../base-command.js';
import {importCertificate, type ImportResult} from '../../certs/service.js';

export default class CertsImport extends BaseCommand<typeof CertsImport> {
  static override summary = 'Install an operator-provided certificate and key (default: for the HTTPS proxy).';
  static override description = 'Refused, with the reason, when the key does not match the certificate, the chain does not verify (system trust store, install CA or --ca), or the SANs do not cover the domain.';
  static override examples = ['<%= config.bin %> certs import --cert fullchain.pem --key privkey.pem', '<%= config.bin %> certs import --cert proxy.pem --key proxy.key --ca corporate-root.pem'];

  static override flags = {
    cert: Flags.file({summary: 'Certificate, optionally followed by its intermediates (PEM).', required: true, exists: true}),
    key: Flags.file({summary: 'Private key (PEM: PKCS#8, SEC1 or PKCS#1). It is sealed; delete your copy afterwards.', required: true, exists: true}),
    ca: Flags.file({summary: 'A trust anchor to verify the chain against, when it is not publicly trusted.', exists: true}),
    name: Flags.string({summary: 'Which certificate to replace.', default: 'proxy', options: ['proxy']}),
  };

  async run(): Promise<ImportResult> {
    const result = await withOpsRecord(this.installDir(), {action: 'certs.import', target: 'pki'}, () => importCertificate(this.installDir(), {name: this.flags.name, certFile: this.flags.cert, keyFile: this.flags.key, caFile: this.flags.ca, command: 'dforge certs import'}));

    this.out.progress(`imported ${result.name}: ${result.report.subject}, expires ${result.report.notAfter.slice(0, 10)}, chain to ${result.anchor}`);
    return result;
  }
}
