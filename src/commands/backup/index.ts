import {Flags} from '@oclif/core';

import {BaseCommand} from '../../base-command.js';
import type {BackupRecord} from '../../backup/catalog.js';
import {backupAll, backupTenant, type BackupAllResult, type BackupOutcome} from '../../backup/service.js';
import {crossRegionFlags} from '../../cli/cross-region-flags.js';
import {pgToolsFlag} from '../../cli/pg-tools-flag.js';
import {usingControlPlane} from '../../control/plane.js';
import {DforgeError, UsageError} from '../../errors.js';
import {approvalFromFlags} from '../../residency/policy.js';
import {formatBytes} from '../../ui/bytes.js';
import {renderTable} from '../../ui/table.js';
import {formatDuration} from '../../ui/time.js';

/**
 * How `backup --all` reports. On a terminal, an operator watches: progress on stderr, a table at the
 * end. Off a terminal (cron, systemd), mail or a journal reads it: one JSON object per line on stdout
 * per tenant as it finishes, then a summary line. --json: the one result object, as every command.
 */
type AllReport = 'table' | 'lines' | 'json';

export default class Backup extends BaseCommand<typeof Backup> {
  static override summary = 'Take encrypted backups: one tenant, or every tenant plus dforge_control.';
  static override description = `pg_dump -Fc runs as the tenant's own role and streams through AES-256-GCM (STREAM) into <destination>/<tenant>/<id>.dfb, with a sidecar manifest (size, SHA-256). The file appears only when complete and on disk; then the catalog in dforge_control records it. --destination of another region is a cross-region transfer: refused (exit 1) unless --allow-cross-region --reason is given, which is written to the ops log before the dump starts; not with --all.
--all backs tenants up in parallel. On a terminal it shows progress on stderr and a table at the end. Off a terminal (cron) it prints one JSON object per line on stdout: {"event":"backup",...} per tenant as it finishes, then {"event":"summary",...}. With --json it prints the one result object. If some fail, the others still run, and the command exits 4 naming them. --all holds a run-wide lock: an overlapping --all exits 5 at once, naming the holder (pid, host, command, since when). A tenant that a concurrent backup --tenant is backing up is reported as locked and skipped, not failed; a run that finds every tenant locked exits 5.`;
  static override examples = ['<%= config.bin %> backup --tenant acme', '<%= config.bin %> backup --all --concurrency 4'];

  static override flags = {
    tenant: Flags.string({summary: 'Back up this tenant.', exactlyOne: ['tenant', 'all']}),
    all: Flags.boolean({summary: 'Back up every tenant, and dforge_control to each region.', exactlyOne: ['tenant', 'all']}),
    concurrency: Flags.integer({summary: 'With --all: tenants backed up at once.', default: 2, min: 1, max: 32}),
    destination: Flags.string({summary: "With --tenant: a destination of the tenant's region (default: its first); another region's needs --allow-cross-region."}),
    'pg-tools': pgToolsFlag(),
    ...crossRegionFlags,
  };

  async run(): Promise<BackupRecord | BackupAllResult> {
    const approval = approvalFromFlags(this.flags);
    // An approval names one transfer of one tenant; --all never sends a tenant outside its region anyway.
    if (approval && this.flags.all) {
      throw new UsageError('--allow-cross-region applies to one tenant: it cannot be combined with --all', {
        nextSteps: ['Drop --allow-cross-region and --reason (--all writes each tenant to its own region), or run: dforge backup --tenant <slug> --destination <name> --allow-cross-region --reason "<why>"'],
      });
    }
    return usingControlPlane(this.installDir(), async (plane) => {
      if (this.flags.tenant) {
        const record = await backupTenant(plane, this.flags.tenant, {destination: this.flags.destination, approval});
        this.out.progress(`backed up ${record.tenant}: ${record.id} (${formatBytes(record.size)}) to ${record.destination}`);
        return record;
      }
      const mode: AllReport = this.jsonEnabled() ? 'json' : process.stdout.isTTY ? 'table' : 'lines';
      const started = Date.now();
      const outcomes: BackupOutcome[] = [];
      let result: BackupAllResult;
      try {
        result = await backupAll(plane, {
          concurrency: this.flags.concurrency,
          report: (outcome) => {
            outcomes.push(outcome);
            if (mode === 'lines') this.log(JSON.stringify({event: 'backup', ...outcome}));
            else this.out.progress(outcomeLine(outcome));
          },
        });
      } catch (err) {
        // A partial run (exit 4) still reports every tenant, before the error names the failures.
        this.reportAll(mode, outcomes, controlOf(err), started, err);
        throw err;
      }
      this.reportAll(mode, outcomes, result.control, started);
      if (result.keys && 'destroyed' in result.keys && result.keys.destroyed.length > 0) {
        this.out.progress(`the fresh control backup released retired master key version(s) ${result.keys.destroyed.map((v) => `v${v}`).join(', ')}: destroyed`);
      }
      if (result.keys && 'skipped' in result.keys) this.out.warn(`retired master versions were not released this time: ${result.keys.skipped}`);
      return result;
    }, {pgTools: this.flags['pg-tools']});
  }

  /** The end of a --all run: the table on a terminal, the summary line off one; nothing more with --json. */
  private reportAll(mode: AllReport, outcomes: readonly BackupOutcome[], control: ReadonlyArray<BackupRecord | string>, started: number, err?: unknown): void {
    const count = (status: BackupOutcome['status']): number => outcomes.filter((o) => o.status === status).length;
    if (mode === 'lines') {
      // ok; partial (exit 4) or locked (exit 5); any other error by its kind.
      const status = err === undefined ? 'ok' : err instanceof DforgeError ? err.kind : 'bug';
      this.log(
        JSON.stringify({
          event: 'summary',
          status,
          tenants: outcomes.length,
          ok: count('ok'),
          failed: count('failed'),
          locked: count('locked'),
          control: control.map((c) => (typeof c === 'string' ? c : c.id)),
          seconds: (Date.now() - started) / 1000,
          ...(err === undefined ? {} : {error: err instanceof Error ? err.message : String(err)}),
        }),
      );
    }
    // A run refused before any tenant (another --all holds the run lock) has only its error to say.
    if (mode !== 'table' || (outcomes.length === 0 && err !== undefined)) return;
    const sorted = [...outcomes].sort((a, b) => a.tenant.localeCompare(b.tenant));
    const rows = sorted.map((o) => [o.tenant, o.status === 'ok' ? 'ok' : o.status === 'locked' ? 'locked (skipped)' : 'FAILED', o.backupId ?? '-', o.bytes === undefined ? '-' : formatBytes(o.bytes), formatDuration(o.seconds)]);
    for (const c of control) rows.push(typeof c === 'string' ? ['dforge_control', 'ok', c, '-', '-'] : [`dforge_control (${c.region})`, 'ok', c.id, formatBytes(c.size), '-']);
    this.log(renderTable(['tenant', 'result', 'backup id', 'size', 'duration'], rows));
    this.log(`\n${count('ok')} of ${outcomes.length} tenant(s) backed up${count('failed') > 0 ? `, ${count('failed')} failed` : ''}${count('locked') > 0 ? `, ${count('locked')} locked by other runs` : ''}; ${control.length} control backup(s); ${formatDuration((Date.now() - started) / 1000)}`);
  }
}

/** One tenant's outcome, as a progress line. */
function outcomeLine(o: BackupOutcome): string {
  if (o.status === 'ok') return `${o.tenant}: backed up, ${o.backupId} (${formatBytes(o.bytes ?? 0)}) in ${formatDuration(o.seconds)}`;
  if (o.status === 'locked') return `${o.tenant}: skipped, another run is backing it up (${o.error})`;
  return `${o.tenant}: FAILED after ${formatDuration(o.seconds)}: ${o.error}`;
}

/** The control backups a failed run still took (its error data carries their ids). */
function controlOf(err: unknown): string[] {
  const control = err instanceof DforgeError ? err.data.control : undefined;
  return Array.isArray(control) ? control.filter((c): c is string => typeof c === 'string') : [];
}
