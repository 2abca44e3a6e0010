import {Flags} from '@oclif/core';

import {BaseCommand} from '../../base-command.js';
import type {StoredOpsEntry} from '../../audit/ops-log.js';
import {tailOpsLog} from '../../audit/service.js';
import {renderTable} from '../../ui/table.js';

export default class AuditTail extends BaseCommand<typeof AuditTail> {
  static override summary = 'Show the newest entries of the ops audit log: who did what, when, and the outcome.';
  static override examples = ['<%= config.bin %> audit tail', '<%= config.bin %> audit tail --tenant acme --limit 50 --json'];
  static override flags = {
    limit: Flags.integer({summary: 'How many entries.', default: 20, min: 1}),
    tenant: Flags.string({summary: 'Only entries about this tenant.'}),
  };

  async run(): Promise<StoredOpsEntry[]> {
    const entries = await tailOpsLog(this.installDir(), {limit: this.flags.limit, tenant: this.flags.tenant});
    if (!this.jsonEnabled()) this.log(renderTable(['seq', 'at', 'actor', 'action', 'target', 'outcome'], entries.map((e) => [String(e.seq), e.at.slice(0, 19).replace('T', ' '), e.actor, e.action, e.target, e.outcome])));
    return entries;
  }
}
