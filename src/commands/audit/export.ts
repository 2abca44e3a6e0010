import {Flags} from '@oclif/core';

import {BaseCommand} from '../../base-command.js';
import {parseAuditTime} from '../../audit/change-log.js';
import {crossRegionFlags} from '../../cli/cross-region-flags.js';
import {approvalFromFlags} from '../../residency/policy.js';
import {EXPORT_FORMATS, exportAudit, type ExportFormat, type ExportResult} from '../../audit/export.js';

export default class AuditExport extends BaseCommand<typeof AuditExport> {
  static override summary = "Export a tenant's change log or the ops log to a file, with a signed manifest beside it.";
  static override description = `Writes FILE (0600, atomically) and FILE.manifest.json: format, source, range, row count, the file's SHA-256, and an Ed25519 signature under the install's export key (public key: pki/audit-export.pub). Check it with dforge audit verify-export FILE, or with openssl. CSV cells that start with = + - @ are prefixed with ' so a spreadsheet does not run them. The export is recorded in the ops log (source, range, rows, hash; never the rows).
The file is written on this host, in region operatorRegion of dforge.yaml (default primaryRegion): a tenant of another region is refused (exit 1) unless --allow-cross-region --reason is given, which is written to the ops log first. The ops log is global and exports anywhere.`;
  static override examples = [
    '<%= config.bin %> audit export --tenant acme --format jsonl --out acme-changes.jsonl',
    '<%= config.bin %> audit export --ops --since 2025-01-01T00:00:00Z --until 2025-04-01T00:00:00Z --format csv --out ops-q1.csv',
  ];
  static override flags = {
    tenant: Flags.string({summary: "Export this tenant's change log.", exactlyOne: ['tenant', 'ops']}),
    ops: Flags.boolean({summary: 'Export the ops log.', exactlyOne: ['tenant', 'ops']}),
    since: Flags.string({summary: 'Only rows at or after this time (ISO 8601).'}),
    until: Flags.string({summary: 'Only rows before this time (ISO 8601).'}),
    format: Flags.string({summary: 'File format.', options: [...EXPORT_FORMATS], required: true}),
    out: Flags.file({summary: 'The file to write (replaced if it exists); the manifest goes beside it.', required: true}),
    ...crossRegionFlags,
  };

  async run(): Promise<ExportResult> {
    const {tenant, format, out} = this.flags;
    const approval = approvalFromFlags(this.flags);
    const result = await exportAudit(this.installDir(), {
      source: tenant === undefined ? 'ops' : {tenant},
      format: format as ExportFormat,
      out,
      since: this.flags.since === undefined ? undefined : parseAuditTime('--since', this.flags.since),
      until: this.flags.until === undefined ? undefined : parseAuditTime('--until', this.flags.until),
      dforgeVersion: this.config.version,
      ...(approval ? {approval} : {}),
    });
    if (!this.jsonEnabled()) this.log(`exported ${result.manifest.rows} rows of ${result.manifest.source} to ${result.file} (sha256 ${result.manifest.file.sha256}); manifest: ${result.manifestFile}`);
    return result;
  }
}
