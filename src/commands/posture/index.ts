import {Flags} from '@oclif/core';

import {BaseCommand} from '../../base-command.js';
import {isWaived} from '../../posture/check.js';
import {toJunit} from '../../posture/junit.js';
import {checkPosture} from '../../posture/run.js';
import type {PostureReport} from '../../posture/service.js';
import {writeFileAtomic} from '../../state/atomic-file.js';
import {renderTable} from '../../ui/table.js';
import {terminalSafe} from '../../ui/terminal-safe.js';

export default class Posture extends BaseCommand<typeof Posture> {
  static override summary = 'Verify every security promise live: isolation, encryption at rest and in transit, audit trail, backups, keys, residency, runtime.';
  static override description = `Every check is measured now, against the running install: catalog queries, a real cross-tenant login attempt, TLS handshakes (a TLS 1.2-only ClientHello must be refused), backup headers authenticated, the ops-log chain verified, containers inspected. A check that could not be evaluated is ERROR, never PASS.
Exit codes: 0 nothing at or above --fail-on; 3 something is (a FAIL, or a WARN with --fail-on warn); 1 nothing failed but checks could not be evaluated; 2 usage. --json prints the report (docs/schemas/posture.json) whatever the exit code.`;

  static override examples = [
    '<%= config.bin %> posture',
    '<%= config.bin %> posture --tenant acme --json',
    '<%= config.bin %> posture --junit posture.xml --fail-on warn --waivers waivers.yaml',
    '<%= config.bin %> posture --record',
  ];

  static override flags = {
    tenant: Flags.string({summary: "Only this tenant's checks (install-wide checks still run)."}),
    junit: Flags.file({summary: 'Also write the report as JUnit XML to this file, for CI.'}),
    'fail-on': Flags.option({summary: 'Lowest status that makes the exit code 3.', options: ['warn', 'fail'] as const, default: 'fail' as const})(),
    waivers: Flags.file({summary: 'YAML file of waivers (id, check, scope, reason, approver, expires); each one used goes to the ops log.', exists: true}),
    record: Flags.boolean({summary: "Store this run under state/posture/ (MAC'd with the ops-log key) for posture diff."}),
    concurrency: Flags.integer({summary: 'How many connections and handshakes at once.', min: 1, max: 64, default: 8}),
  };

  async run(): Promise<PostureReport> {
    const report = await checkPosture(this.installDir(), {
      tenant: this.flags.tenant,
      failOn: this.flags['fail-on'],
      waiversFile: this.flags.waivers,
      record: this.flags.record,
      concurrency: this.flags.concurrency,
    });
    if (this.flags.junit) await writeFileAtomic(this.flags.junit, toJunit(report), {mode: 0o644});
    if (!this.jsonEnabled()) this.log(renderReport(report));
    if (report.exitCode === 3) this.out.warn(`posture is ${report.overall}: ${report.counts.FAIL} FAIL${this.flags['fail-on'] === 'warn' ? `, ${report.counts.WARN} WARN` : ''}; each line under "What to do" names its fix`);
    if (report.exitCode === 1) this.out.warn(`${report.counts.ERROR} check${report.counts.ERROR === 1 ? '' : 's'} could not be evaluated (ERROR): coverage is ${report.coverage}%, so this is not a clean bill of health`);
    if (report.waivers.ignored) this.out.warn(`waivers ${report.waivers.ignored}`);
    if (report.record) this.out.progress(`recorded as ${report.record.id}`);
    process.exitCode = report.exitCode;
    return report;
  }
}

const DOT: Record<string, string> = {green: '● green', amber: '● amber', red: '● red', grey: '● grey (not all evaluated)'};

/** Observed values quote tenants' object names: everything printed goes through terminalSafe. */
function renderReport(r: PostureReport): string {
  const width = Math.max(...r.panel.map((l) => l.label.length), 'security posture'.length) + 2;
  const valueWidth = Math.max(...r.panel.map((l) => l.value.length)) + 2;
  const panel = [`${'security posture'.padEnd(width)}${DOT[r.overall]}    score ${r.score} · coverage ${r.coverage}%`, ...r.panel.filter((l) => l.status !== 'SKIP' || l.area !== 'runtime').map((l) => `${l.label.padEnd(width)}${l.value.padEnd(valueWidth)}(${l.evidence})`)];
  const table = renderTable(
    ['status', 'check', 'scope', 'observed'],
    r.checks.map((c) => [isWaived(c) ? `${c.status}*` : c.status, c.id, c.scope, terminalSafe(c.observed)]),
  );
  const todo = r.checks
    .filter((c) => c.status !== 'PASS' && c.status !== 'SKIP')
    .map((c) => `  ${c.status} ${c.id} [${c.scope}]: ${c.reason ? `${terminalSafe(c.reason)}. ` : ''}${c.status === 'MANUAL' ? 'Attest, or waive with an approver' : `Fix: ${c.fix}`}${c.waiver ? ` (waiver ${c.waiver.id}${c.waiver.expired ? ' EXPIRED' : `, until ${c.waiver.expires.slice(0, 10)}`})` : ''}`);
  const counts = (['PASS', 'WARN', 'FAIL', 'ERROR', 'SKIP', 'MANUAL'] as const).map((s) => `${r.counts[s]} ${s}`).join(', ');
  return [
    panel.join('\n'),
    '',
    table,
    ...(todo.length > 0 ? ['', 'What to do:', ...todo] : []),
    '',
    `${r.checks.length} checks: ${counts}${r.counts.waived > 0 ? ` (${r.counts.waived} waived, marked *)` : ''}; ${(r.durationMs / 1000).toFixed(1)} s`,
  ].join('\n');
}
