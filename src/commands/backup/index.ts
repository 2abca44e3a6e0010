import {Flags} from '@oclif/core';

import {BaseCommand} from '../../base-command.js';
import type {BackupRecord} from '../../backup/catalog.js';
import {backupAll, backupTenant, type BackupAllResult} from '../../backup/service.js';
import {pgToolsFlag} from '../../cli/pg-tools-flag.js';
import {usingControlPlane} from '../../control/plane.js';

export default class Backup extends BaseCommand<typeof Backup> {
  static override summary = 'Take encrypted backups: one tenant, or every tenant plus dforge_control.';
  static override description = `pg_dump -Fc runs as the tenant's own role and streams through AES-256-GCM (STREAM) into <destination>/<tenant>/<id>.dfb, with a sidecar manifest (size, SHA-256). The file appears only when complete and on disk; then the catalog in dforge_control records it.
--all backs tenants up in parallel and writes one JSON line per tenant to stderr (for cron mail). If some fail, the others still run, and the command exits 4 naming them. --all holds a run-wide lock: an overlapping --all exits 5 at once, naming the holder (pid, host, command, since when). A tenant that a concurrent backup --tenant is backing up is reported as locked and skipped, not failed; a run that finds every tenant locked exits 5.`;
  static override examples = ['<%= config.bin %> backup --tenant acme', '<%= config.bin %> backup --all --concurrency 4'];

  static override flags = {
    tenant: Flags.string({summary: 'Back up this tenant.', exactlyOne: ['tenant', 'all']}),
    all: Flags.boolean({summary: 'Back up every tenant, and dforge_control to each region.', exactlyOne: ['tenant', 'all']}),
    concurrency: Flags.integer({summary: 'With --all: tenants backed up at once.', default: 2, min: 1, max: 32}),
    destination: Flags.string({summary: "With --tenant: a destination of the tenant's region (default: its first)."}),
    'pg-tools': pgToolsFlag(),
  };

  async run(): Promise<BackupRecord | BackupAllResult> {
    return usingControlPlane(this.installDir(), async (plane) => {
      if (this.flags.tenant) {
        const record = await backupTenant(plane, this.flags.tenant, {destination: this.flags.destination});
        this.out.progress(`backed up ${record.tenant}: ${record.id} (${record.size} bytes) to ${record.destination}`);
        return record;
      }
      const result = await backupAll(plane, {
        concurrency: this.flags.concurrency,
        report: (outcome) => process.stderr.write(`${JSON.stringify({event: 'backup', ...outcome})}\n`),
      });
      if (result.keys && 'destroyed' in result.keys && result.keys.destroyed.length > 0) {
        this.out.progress(`the fresh control backup released retired master key version(s) ${result.keys.destroyed.map((v) => `v${v}`).join(', ')}: destroyed`);
      }
      if (result.keys && 'skipped' in result.keys) this.out.warn(`retired master versions were not released this time: ${result.keys.skipped}`);
      return result;
    }, {pgTools: this.flags['pg-tools']});
  }
}
