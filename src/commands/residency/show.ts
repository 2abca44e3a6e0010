import {BaseCommand} from '../../base-command.js';
import {usingControlPlane} from '../../control/plane.js';
import {residencyShow, type ResidencyShow as ResidencyShowResult} from '../../residency/report.js';
import {renderTable} from '../../ui/table.js';

export default class ResidencyShow extends BaseCommand<typeof ResidencyShow> {
  static override summary = 'Show each region (jurisdiction, clusters, backup destinations) and the region and cluster every tenant is pinned to.';
  static override description = 'Read from dforge.yaml and dforge_control; nothing is asked of the live systems (dforge residency report --verify does that).';
  static override examples = ['<%= config.bin %> residency show', '<%= config.bin %> residency show --json'];

  async run(): Promise<ResidencyShowResult> {
    const result = await usingControlPlane(this.installDir(), (plane) => residencyShow(plane));
    if (!this.jsonEnabled()) {
      this.log(
        renderTable(
          ['region', 'jurisdiction', 'cluster', 'kind', 'address', 'capacity', 'tenants'],
          result.regions.flatMap((r) => r.clusters.map((c) => [`${r.name}${r.primary ? ' (primary)' : ''}`, r.jurisdiction, c.name, c.kind, c.address, c.capacity === null ? 'unlimited' : String(c.capacity), String(c.tenants)])),
        ),
      );
      this.log('');
      this.log(renderTable(['region', 'destination', 'kind', 'where'], result.regions.flatMap((r) => r.destinations.map((d) => [r.name, d.name, d.kind, d.where]))));
      this.log('');
      this.log(renderTable(['tenant', 'region', 'jurisdiction', 'cluster', 'status'], result.tenants.map((t) => [t.slug, t.region, t.jurisdiction, t.cluster, t.status])));
    }
    return result;
  }
}
