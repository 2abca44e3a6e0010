import {Args} from '@oclif/core';

import {BaseCommand} from '../../base-command.js';
import {usingControlPlane} from '../../control/plane.js';
import type {TenantService} from '../../tenants/service.js';
import {formatTime} from '../../ui/time.js';

type TenantDetails = Awaited<ReturnType<TenantService['show']>>;

export default class TenantShow extends BaseCommand<typeof TenantShow> {
  static override summary = 'Show one tenant, with live checks of its role and database.';
  static override examples = ['<%= config.bin %> tenant show acme'];

  static override args = {slug: Args.string({required: true})};

  async run(): Promise<TenantDetails> {
    const t = await usingControlPlane(this.installDir(), (plane) => plane.tenants.show(this.args.slug));
    if (!this.jsonEnabled()) {
      const rows: Array<[string, string]> = [
        ['status', t.status],
        ['region / cluster', `${t.region} / ${t.cluster}`],
        ['role / database', `${t.role} / ${t.database}`],
        ['connection limit', String(t.connectionLimit)],
        ['role can log in', String(t.roleCanLogin)],
        ['PUBLIC can connect', String(t.publicCanConnect)],
        ['data key', `v${t.activeDataKeyVersion ?? '-'} active (versions: ${t.dataKeyVersions.join(', ') || 'none'})`],
        ['created', formatTime(t.createdAt)],
      ];
      for (const [k, v] of rows) this.log(`${k.padEnd(20)} ${v}`);
      if (t.status === 'active') this.out.progress(`Connect with: dforge tenant credentials ${t.slug} (or dforge db psql --tenant ${t.slug})`);
    }
    return t;
  }
}
