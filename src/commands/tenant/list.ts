import {BaseCommand} from '../../base-command.js';
import {usingControlPlane} from '../../control/plane.js';
import type {Tenant} from '../../tenants/registry.js';
import {renderTable} from '../../ui/table.js';
import {formatTime} from '../../ui/time.js';

export default class TenantList extends BaseCommand<typeof TenantList> {
  static override summary = 'List tenants with their region, cluster and status.';
  static override examples = ['<%= config.bin %> tenant list', '<%= config.bin %> tenant list --json'];

  async run(): Promise<{tenants: Tenant[]}> {
    const tenants = await usingControlPlane(this.installDir(), (plane) => plane.tenants.list());
    if (!this.jsonEnabled()) {
      this.log(renderTable(['slug', 'status', 'region', 'cluster', 'database', 'created'], tenants.map((t) => [t.slug, t.status, t.region, t.cluster, t.database, formatTime(t.createdAt)])));
    }
    return {tenants};
  }
}
