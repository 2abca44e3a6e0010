import {Args, Flags} from '@oclif/core';

import {withOpsRecord} from '../../audit/record.js';
import {BaseCommand} from '../../base-command.js';
import {renewCertificates, type GeneratedCertificate} from '../../certs/service.js';

export default class CertsRenew extends BaseCommand<typeof CertsRenew> {
  static override summary = 'Re-issue certificates that reached 2/3 of their lifetime (or the named ones).';
  static override description = 'Imported certificates are not touched: import a new one instead. Restart or reload the services that use a renewed certificate.';
  static override examples = ['<%= config.bin %> certs renew', '<%= config.bin %> certs renew proxy', '<%= config.bin %> certs renew --force'];
  static override strict = false;

  static override args = {names: Args.string({description: 'Certificates to re-issue now: proxy, postgres, auth, app.'})};
  static override flags = {force: Flags.boolean({summary: 'Re-issue every internal leaf, due or not.'})};

  async run(): Promise<GeneratedCertificate[]> {
    const names = this.positionals;
    const renewed = await withOpsRecord(this.installDir(), {action: 'certs.renew', target: 'pki', changed: (r) => r.some((c) => c.action === 'renewed' || c.action === 'created'), details: (r) => ({certificates: r.filter((c) => c.action === 'renewed' || c.action === 'created').map((c) => `${c.name} ${c.action}`)})}, () => renewCertificates(this.installDir(), {names: names.length > 0 ? names : undefined, force: this.flags.force, command: 'dforge certs renew'}));

    for (const c of renewed) this.out.progress(`${c.name}: ${c.action} (expires ${c.notAfter.slice(0, 10)})`);
    return renewed;
  }
}
