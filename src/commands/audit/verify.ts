import {BaseCommand} from '../../base-command.js';
import type {ChainVerification} from '../../audit/ops-log.js';
import {verifyOpsChain} from '../../audit/service.js';

export default class AuditVerify extends BaseCommand<typeof AuditVerify> {
  static override summary = 'Check the ops audit log: every entry MAC, every link, and the head against the anchor in the install directory; exit 6 if an entry was altered, removed or reordered.';
  static override examples = ['<%= config.bin %> audit verify', '<%= config.bin %> audit verify --json'];

  async run(): Promise<ChainVerification> {
    const result = await verifyOpsChain(this.installDir());
    if (!this.jsonEnabled()) {
      this.log(`ops log verified: ${result.entries} entries, ${result.keyed} keyed${result.anchor ? `, anchored at entry ${result.anchor.seq}` : ''}`);
      if (result.legacy > 0) this.out.warn(`entries 1 to ${result.legacy} were written before the ops log was keyed: entry ${result.legacy + 1} seals them as they were then, and nothing vouches for them before that`);
      if (result.unanchored > 0) this.out.warn(`${result.unanchored} entries past the anchor (an append was interrupted before it moved the anchor); the next recorded action anchors them`);
      for (const r of result.restores) this.out.warn(`entry ${r.seq} (${r.at}): dforge_control was restored from a backup${r.previousAnchor === null ? '' : `; the log had been anchored at entry ${r.previousAnchor}`}`);
    }
    return result;
  }
}
