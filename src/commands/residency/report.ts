import {Flags} from '@oclif/core';

import {BaseCommand} from '../../base-command.js';
import {usingControlPlane} from '../../control/plane.js';
import {ExitCode} from '../../errors.js';
import {residencyReport, type ResidencyReportRun} from '../../residency/report.js';

export default class ResidencyReport extends BaseCommand<typeof ResidencyReport> {
  static override summary = "The auditor's record of where every tenant's data lives and every transfer out of its region (GDPR Art. 30(1)(e)).";
  static override description = `Per region: jurisdiction, clusters, destinations. Per tenant: region, cluster, every backup object and the region it is in. Every cross-region exception with its reason and every tenant move, from the ops log. The scope statement says what dforge_control holds for the whole install and what never leaves a region.
--verify asks the live systems: each cluster's system identifier and address, each destination's device or bucket location (the first run records them as the baseline), every object in every destination (attributed by its authenticated header), every catalogued object present. Any finding is drift: exit 3, and the report is still printed or written.
The run is recorded in the ops log (residency.report). --out files are written atomically, mode 0600 (they name tenants and the reasons for transfers), and never overwrite an existing file without --force.`;

  static override examples = [
    '<%= config.bin %> residency report',
    '<%= config.bin %> residency report --verify --out residency-2026-11.md',
    '<%= config.bin %> residency report --verify --format json --out residency.json',
    '<%= config.bin %> residency report --verify --accept-drift us-1',
  ];

  static override flags = {
    verify: Flags.boolean({summary: 'Check the record against the live clusters and destinations; drift exits 3.'}),
    format: Flags.option({summary: 'Document format (stdout, or the --out file).', options: ['md', 'json'] as const, default: 'md' as const})(),
    out: Flags.file({summary: 'Write the document to this file (0600, atomically) instead of stdout.'}),
    force: Flags.boolean({summary: 'Let --out replace an existing file.', dependsOn: ['out']}),
    'accept-drift': Flags.string({
      summary: 'Accept the changed identity of this cluster or destination as the new baseline (with --verify; repeatable; recorded in the ops log).',
      multiple: true,
      dependsOn: ['verify'],
    }),
  };

  async run(): Promise<ResidencyReportRun> {
    const {document, ...run} = await usingControlPlane(this.installDir(), (plane) =>
      residencyReport(plane, {
        verify: this.flags.verify,
        accept: this.flags['accept-drift'] ?? [],
        format: this.flags.format,
        out: this.flags.out,
        force: this.flags.force,
      }),
    );
    if (!this.jsonEnabled() && run.out === null) process.stdout.write(document);
    if (run.out !== null) this.out.progress(`residency report written to ${run.out} (${run.format}, mode 0600)`);
    const v = run.report.verification;
    if (v?.baselineRecorded) this.out.progress('baseline recorded: later runs of --verify compare each cluster and destination against it');
    for (const a of v?.accepted ?? []) this.out.progress(`accepted: ${a.kind} ${a.name} is now recorded as ${a.to} (was ${a.from})`);
    if (run.report.summary.unapprovedOutsideRegion > 0) this.out.warn(`${run.report.summary.unapprovedOutsideRegion} catalogued backup(s) sit outside their tenant's region with no approved exception`);
    if (v?.drift) {
      for (const f of v.findings) this.out.warn(`${f.kind}: ${f.message}`);
      this.out.warn(`residency drift: ${v.findings.length} finding(s). Remove misplaced objects, restore missing ones, or, for a legitimate change of a cluster or destination, re-run with --verify --accept-drift NAME`);
      process.exitCode = ExitCode.checkFailed;
    }
    return run;
  }
}
