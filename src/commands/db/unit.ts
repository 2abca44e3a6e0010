import {Flags} from '@oclif/core';

import {BaseCommand} from '../../base-command.js';
import {embeddedUnit} from '../../postgres/embedded-ops.js';

export default class DbUnit extends BaseCommand<typeof DbUnit> {
  static override summary = 'Print the systemd unit that runs an embedded cluster in production.';
  static override description = 'Install it with: dforge db unit > /etc/systemd/system/dforge-postgres-<cluster>.service && systemctl daemon-reload && systemctl enable --now dforge-postgres-<cluster>';
  static override examples = ['<%= config.bin %> db unit --cluster local-1'];
  static override flags = {cluster: Flags.string({summary: 'Only this cluster.'})};

  async run(): Promise<{clusters: Array<{cluster: string; unitName: string; unit: string}>}> {
    const units = await embeddedUnit(this.installDir(), this.flags.cluster);
    if (!this.jsonEnabled()) for (const u of units) this.log(units.length > 1 ? `# ${u.unitName}\n${u.unit}` : u.unit);
    return {clusters: units};
  }
}
