import {BaseCommand} from '../base-command.js';
import {installStatus, type StatusReport} from '../install/lifecycle.js';
import {renderTable} from '../ui/table.js';

export default class Status extends BaseCommand<typeof Status> {
  static override summary = 'Services and their health, versions, tenants with their last backup, and certificate expiry.';
  static override description = 'Every part is read live: container states and health checks from the engine, tenants and backup markers from dforge_control, certificates from pki/. A part that cannot be read is listed under problems.';
  static override examples = ['<%= config.bin %> status', '<%= config.bin %> status --json'];

  async run(): Promise<StatusReport> {
    const s = await installStatus(this.installDir());
    if (!this.jsonEnabled()) {
      this.log(`${s.domain}: ${s.target} install, release ${s.release}\n`);
      if (s.services.length > 0) this.log(`${renderTable(['service', 'state', 'health', 'image'], s.services.map((x) => [x.service, x.state, x.health, x.image]))}\n`);
      this.log(`${renderTable(['tenant', 'status', 'region', 'last backup'], s.tenants.map((t) => [t.slug, t.status, t.region, t.lastBackup ? `${t.lastBackup} (${t.staleHours} h ago)` : 'never']))}\n`);
      this.log(renderTable(['certificate', 'expires', 'days left'], s.certificates.map((c) => [c.name, c.notAfter, String(c.daysLeft)])));
      for (const p of s.problems) this.out.warn(`could not read ${p}`);
    }
    return s;
  }
}
