import {Flags} from '@oclif/core';

import {withOpsRecord} from '../../audit/record.js';
import {BaseCommand} from '../../base-command.js';
import {generateCertificates, type GenerateResult} from '../../certs/service.js';
import {renderTable} from '../../ui/table.js';

export default class CertsGenerate extends BaseCommand<typeof CertsGenerate> {
  static override summary = 'Create the install CA and the proxy, PostgreSQL and internal-service certificates.';
  static override description = `The CA (ECDSA P-256 by default) has pathLen 0 and name constraints limited to the domain, tls.extraSans, the internal names (dforge.internal, or the install's namespace on Kubernetes), localhost and loopback. Private keys are sealed under the master key; certificates go to pki/, with the CA also as pki/ca.p12 for trust stores.
Existing certificates are never replaced: use dforge certs renew (which also moves an install off a CA whose constraints are not the ones it needs).`;
  static override examples = ['<%= config.bin %> certs generate', '<%= config.bin %> certs generate --algorithm rsa-3072'];

  static override flags = {
    algorithm: Flags.string({summary: 'Key algorithm of new keys.', options: ['ecdsa-p256', 'rsa-3072'] as const, default: 'ecdsa-p256'}),
  };

  async run(): Promise<GenerateResult> {
    const result = await withOpsRecord(this.installDir(), {action: 'certs.generate', target: 'pki', changed: (r) => r.certificates.some((c) => c.action === 'created' || c.action === 'renewed'), details: (r) => ({certificates: r.certificates.filter((c) => c.action !== 'kept' && c.action !== 'skipped-imported').map((c) => `${c.name} ${c.action}`)})}, () => generateCertificates(this.installDir(), {algorithm: this.flags.algorithm as 'ecdsa-p256' | 'rsa-3072', command: 'dforge certs generate'}));

    if (!this.jsonEnabled()) {
      this.log(renderTable(['name', 'action', 'expires', 'names'], result.certificates.map((c) => [c.name, c.action, c.notAfter.slice(0, 10), [...c.dnsNames, ...c.ipAddresses].join(', ')])));
      this.log(`\nCA ${result.caFile}\nCA SHA-256 fingerprint ${result.caFingerprint}\ntrust store ${result.trustStore}`);
    }
    return result;
  }
}
