import {Flags} from '@oclif/core';

import {crossRegionFlags} from '../../cli/cross-region-flags.js';
import {approvalFromFlags} from '../../residency/policy.js';
import {BaseCommand} from '../../base-command.js';
import {changeLine, parseAuditTime, tailChangeLog, type ChangeEntry} from '../../audit/change-log.js';
import type {StoredOpsEntry} from '../../audit/ops-log.js';
import {tailOpsLog} from '../../audit/service.js';
import {UsageError} from '../../errors.js';
import {renderTable} from '../../ui/table.js';
import {terminalSafe} from '../../ui/terminal-safe.js';
import {formatTime} from '../../ui/time.js';

export default class AuditTail extends BaseCommand<typeof AuditTail> {
  static override summary = "Show the newest entries of the ops log, or with --tenant of that tenant's change log: who changed which row, when, and which fields.";
  static override description = `Without --tenant: the ops log (operator actions); --ops --tenant S: its entries about tenant S. With --tenant: the tenant's audit.change_log, read as the tenant's own role, one line per row change:
  16:42:08  alice@acme.io  update    Lead#3214  stage: qualified → won
--follow keeps printing changes as they commit (woken by LISTEN/NOTIFY) until Ctrl-C or SIGTERM; with --json it prints one JSON object per line: a change entry (an element of entries) with schemaVersion (docs/schemas/audit-tail-follow-line.schema.json).`;
  static override examples = [
    '<%= config.bin %> audit tail',
    '<%= config.bin %> audit tail --ops --tenant acme',
    '<%= config.bin %> audit tail --tenant acme --follow',
    '<%= config.bin %> audit tail --tenant acme --since 2025-01-01T00:00:00Z --limit 100 --json',
  ];
  static override flags = {
    limit: Flags.integer({summary: 'How many entries (the newest).', default: 20, min: 1}),
    tenant: Flags.string({summary: "This tenant's change log instead of the ops log (with --ops: the ops entries about this tenant)."}),
    ops: Flags.boolean({summary: 'The ops log, also with --tenant.'}),
    follow: Flags.boolean({char: 'f', summary: 'Keep printing changes as they commit (needs --tenant).'}),
    since: Flags.string({summary: 'Only changes at or after this time (ISO 8601; needs --tenant).'}),
    ...crossRegionFlags,
  };

  async run(): Promise<{entries: StoredOpsEntry[]} | {entries: ChangeEntry[]} | undefined> {
    const {tenant, follow, limit, ops} = this.flags;
    if (!tenant || ops) {
      if (follow || this.flags.since) throw new UsageError("--follow and --since read a tenant's change log: name the tenant with --tenant, without --ops", {nextSteps: ['Run: dforge audit tail --tenant <slug> --follow']});
      const entries = await tailOpsLog(this.installDir(), {limit, tenant});
      // dforge_control is writable by the provisioner role: its text is not trusted with the terminal either.
      if (!this.jsonEnabled()) this.log(renderTable(['seq', 'at', 'actor', 'action', 'target', 'outcome'], entries.map((e) => [String(e.seq), formatTime(e.at), e.actor, e.action, e.target, e.outcome].map(terminalSafe))));
      return {entries};
    }
    const since = this.flags.since === undefined ? undefined : parseAuditTime('--since', this.flags.since);
    const approval = approvalFromFlags(this.flags);
    if (!follow) {
      const entries = await tailChangeLog(this.installDir(), {tenant, since, limit, approval});
      if (!this.jsonEnabled()) for (const e of entries) this.log(changeLine(e));
      return {entries};
    }
    const stop = new AbortController();
    const onSignal = (): void => stop.abort();
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    try {
      await tailChangeLog(this.installDir(), {
        tenant,
        since,
        limit,
        approval,
        follow: {
          signal: stop.signal,
          onEntries: (entries) => process.stdout.write(entries.map((e) => `${this.jsonEnabled() ? JSON.stringify({schemaVersion: AuditTail.schemaVersion, ...e}) : changeLine(e)}\n`).join('')),
          onWarning: (message) => this.out.warn(message),
        },
      });
    } finally {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    }
    return undefined;
  }
}
