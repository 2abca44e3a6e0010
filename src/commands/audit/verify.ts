import {BaseCommand} from '../../base-command.js';
import type {ChainVerification} from '../../audit/ops-log.js';
import {verifyOpsChain} from '../../audit/service.js';

export default class AuditVerify extends BaseCommand<typeof AuditVerify> {
  static override summary = 'Check the hash chain of the ops audit log; exit 6 if an entry was altered, removed or reordered.';
  static override examples = ['<%= config.bin %> audit verify'];

  async run(): Promise<ChainVerification> {
    const result = await verifyOpsChain(this.installDir());
    if (!this.jsonEnabled()) this.log(`ops log intact: ${result.entries} entries, chain verified`);
    return result;
  }
}
