import {BaseCommand} from '../../base-command.js';
import {certificatesStatus, type CertsStatus} from '../../certs/service.js';
import {renderTable} from '../../ui/table.js';

export default class CertsStatusCommand extends BaseCommand<typeof CertsStatusCommand> {
  static override summary = 'Show expiry, chain, SANs and key type of every certificate; warn at 30 days.';
  static override examples = ['<%= config.bin %> certs status', '<%= config.bin %> certs status --json'];

  async run(): Promise<CertsStatus> {
    const status = await certificatesStatus(this.installDir());
    if (!this.jsonEnabled()) {
      this.log(
        renderTable(
          ['name', 'source', 'key', 'expires', 'days left', 'chain', 'names'],
          status.certificates.map(({name, source, report: r}) => [
            name,
            source,
            r.keyType,
            r.notAfter.slice(0, 10),
            String(r.daysLeft),
            r.isCa ? `CA (pathlen ${r.pathLength ?? '-'})` : r.chainValid === undefined ? 'external' : r.chainValid ? 'ok' : 'BROKEN',
            [...r.dnsNames, ...r.ipAddresses].join(', '),
          ]),
        ),
      );
    }
    for (const warning of status.warnings) this.out.warn(warning);
    return status;
  }
}
