import {BaseCommand} from '../base-command.js';
import {CheckFailedError} from '../errors.js';
import {installStatus, type StatusReport} from '../install/lifecycle.js';
import {renderTable} from '../ui/table.js';
import {formatTime, formatTimeAgo} from '../ui/time.js';

export default class Status extends BaseCommand<typeof Status> {
  static override summary = 'Services and their health, embedded clusters, versions, tenants with their last backup, and certificate expiry.';
  static override description = `Every part is read live: container states and health checks from the engine, embedded clusters from pg_ctl and a session on each, tenants and backup markers from dforge_control, certificates from pki/.
A service that is down or unhealthy, a cluster that is stopped or does not answer, and a part that cannot be read are listed under problems, and the exit status is then 3; with --json the report is then under error.data.`;
  static override examples = ['<%= config.bin %> status', '<%= config.bin %> status --json'];

  async run(): Promise<StatusReport> {
    const s = await installStatus(this.installDir());
    if (!this.jsonEnabled()) {
      this.log(`${s.domain}: ${s.target} install, release ${s.release}\n`);
      if (s.services.length > 0) this.log(`${renderTable(['service', 'state', 'health', 'image'], s.services.map((x) => [x.service, x.state, x.health, x.image]))}\n`);
      if (s.clusters.length > 0) {
        this.log(`${renderTable(['cluster', 'port', 'data directory', 'state', 'version'], s.clusters.map((c) => [c.cluster, String(c.port), c.dataDir, c.running ? (c.unreachable === undefined ? 'running' : 'not answering') : c.initialised ? 'stopped' : 'not initialised', c.serverVersion ?? c.version ?? '?']))}\n`);
      }
      this.log(`${renderTable(['tenant', 'status', 'region', 'last backup'], s.tenants.map((t) => [t.slug, t.status, t.region, t.lastBackup && t.staleHours !== null ? formatTimeAgo(t.lastBackup, t.staleHours) : 'never']))}\n`);
      this.log(renderTable(['certificate', 'expires', 'days left'], s.certificates.map((c) => [c.name, formatTime(c.notAfter), String(c.daysLeft)])));
    }
    if (s.problems.length > 0) {
      throw new CheckFailedError(`${s.problems.length} problem${s.problems.length === 1 ? '' : 's'}: ${s.problems.join('; ')}`, {
        nextSteps: ['Fix each problem as it says, then re-run: dforge status', 'Container logs: docker logs <container>; embedded server logs: the run/postgres/<cluster> directory of the install.'],
        data: {...s},
      });
    }
    return s;
  }
}
