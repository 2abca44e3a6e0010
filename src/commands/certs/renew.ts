import {Args, Flags} from '@oclif/core';

import {withOpsRecord} from '../../audit/record.js';
import {BaseCommand} from '../../base-command.js';
import {renewCertificates, type RenewResult} from '../../certs/service.js';

export default class CertsRenew extends BaseCommand<typeof CertsRenew> {
  static override summary = 'Re-issue certificates that reached 2/3 of their lifetime (or the named ones).';
  static override description = `Imported certificates are not touched: import a new one instead. Leaves the current CA did not issue, or whose names the configuration no longer calls for, are re-issued too.
When the CA's name constraints are not the ones the install needs (a CA from before the internal names moved under dforge.internal, or tls.extraSans changed), a new CA is minted and every internal leaf re-issued: clients must then trust the new CA (dforge certs export). Run dforge install afterwards so the services load the new certificates.`;
  static override examples = ['<%= config.bin %> certs renew', '<%= config.bin %> certs renew proxy', '<%= config.bin %> certs renew --force'];
  static override strict = false;

  static override args = {names: Args.string({description: 'Certificates to re-issue now: proxy, postgres, auth, app.'})};
  static override flags = {force: Flags.boolean({summary: 'Re-issue every internal leaf, due or not.'})};

  async run(): Promise<RenewResult> {
    const names = this.positionals;
    const issued = (r: RenewResult): string[] => r.certificates.filter((c) => c.action !== 'kept' && c.action !== 'skipped-imported').map((c) => `${c.name} ${c.action}`);
    const result = await withOpsRecord(
      this.installDir(),
      {action: 'certs.renew', target: 'pki', changed: (r) => issued(r).length > 0, details: (r) => ({...(r.caReplaced ? {caReplaced: r.caReplaced.fingerprint} : {}), certificates: issued(r)})},
      () => renewCertificates(this.installDir(), {names: names.length > 0 ? names : undefined, force: this.flags.force, command: 'dforge certs renew'}),
    );

    for (const c of result.certificates) this.out.progress(`${c.name}: ${c.action} (expires ${c.notAfter.slice(0, 10)})${c.reason ? `: ${c.reason}` : ''}`);
    if (result.caReplaced) {
      this.out.warn(`a new install CA replaced the old one (${result.caReplaced.reason}).`);
      this.out.warn(`every client must now trust the new CA, SHA-256 ${result.caReplaced.fingerprint} (dforge certs export, or ${result.caReplaced.trustStore}); then run dforge install so the services use the new certificates.`);
    }
    return result;
  }
}
