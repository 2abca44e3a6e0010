import {Flags} from '@oclif/core';

import {BaseCommand} from '../base-command.js';
import {bundleTrustFlags, checkBundleFromFlags} from '../cli/bundle-trust-flags.js';
import {CheckFailedError} from '../errors.js';
import {loadOptionalConfig, runPreflight, type PreflightReport} from '../preflight/service.js';
import {renderTable} from '../ui/table.js';

export default class Preflight extends BaseCommand<typeof Preflight> {
  static override summary = 'Check this host, its container runtime, the domain, external PostgreSQL and certificates before install.';
  static override description = `Runs every check that applies to the target and reports each one (pass, warn, fail or waived) with what to do; it never stops at the first failure. Exits 3 when a check fails; with --json the report is then under error.data.
Reads dforge.yaml from --dir when there is one; without it, the host and runtime checks run with the target's defaults.
--ignore waives a check: its warn or fail becomes "waived", and each waiver is written to the ops log once the install has a control database.`;

  static override examples = ['<%= config.bin %> preflight', '<%= config.bin %> preflight --target embedded --json', '<%= config.bin %> preflight --ignore host.cpu --ignore host.encryption'];

  static override flags = {
    target: Flags.option({summary: 'Target to check for. Default: the target in dforge.yaml, else compose.', options: ['compose', 'k8s', 'embedded'] as const})(),
    ignore: Flags.string({summary: 'Waive a check by id (repeatable); the waiver is recorded in the ops log.', multiple: true, delimiter: ','}),
    bundle: Flags.file({summary: "Also check this offline bundle: its signature and every hash, and room for its images in the engine's data-root.", exists: true}),
    ...bundleTrustFlags,
  };

  async run(): Promise<PreflightReport> {
    const dir = this.installDir();
    const config = await loadOptionalConfig(dir);
    const target = this.flags.target ?? config?.target ?? 'compose';
    if (!config) this.out.progress(`no ${dir.configFile}: checking the host and runtime with the ${target} defaults`);
    const file = this.flags.bundle;
    const bundle = file === undefined ? undefined : async () => (await checkBundleFromFlags(file, this.flags, {installDir: dir, out: this.out})).verified;
    const report = await runPreflight({dir, config, target, ignore: this.flags.ignore, bundle});
    if (!this.jsonEnabled()) this.log(renderReport(report));
    if (report.waived.length > 0 && !report.waiversLogged) this.out.warn(`no control database reachable, so the ops log does not record the waiver of ${report.waived.join(', ')}`);
    if (report.failed.length > 0) {
      throw new CheckFailedError(`${report.failed.length} preflight check${report.failed.length === 1 ? '' : 's'} failed: ${report.failed.join(', ')}`, {
        nextSteps: ['Fix each as its remedy says, then re-run: dforge preflight', `To go ahead anyway, waive (recorded in the ops log): dforge preflight ${report.failed.map((id) => `--ignore ${id}`).join(' ')}`],
        data: {...report},
      });
    }
    return report;
  }
}

/** The table, what to do about each non-passing check, and a one-line summary. */
function renderReport(report: PreflightReport): string {
  const table = renderTable(
    ['status', 'check', 'detail'],
    report.checks.map((c) => [c.status === 'waived' ? `waived (${c.waivedStatus})` : c.status, c.id, c.detail]),
  );
  const todo = report.checks.filter((c) => c.remedy !== null && c.status !== 'pass').map((c) => `  ${c.id}${c.status === 'waived' ? ' (waived)' : ''}: ${c.remedy}`);
  const count = (status: string): number => report.checks.filter((c) => c.status === status).length;
  const summary = `${report.target} preflight${report.usedDefaults ? ' (defaults, no dforge.yaml)' : ''}: ${count('pass')} pass, ${count('warn')} warn, ${count('fail')} fail, ${count('waived')} waived`;
  return [table, ...(todo.length > 0 ? ['', 'What to do:', ...todo] : []), '', summary].join('\n');
}
