import {Flags} from '@oclif/core';

import {BaseCommand} from '../../base-command.js';
import {embeddedStop} from '../../postgres/embedded-ops.js';

export default class DbStop extends BaseCommand<typeof DbStop> {
  static override summary = 'Stop the embedded PostgreSQL clusters (fast shutdown: sessions are ended, data is safe).';
  static override examples = ['<%= config.bin %> db stop', '<%= config.bin %> db stop --immediate'];
  static override flags = {
    cluster: Flags.string({summary: 'Only this cluster.'}),
    immediate: Flags.boolean({summary: 'Immediate shutdown: no checkpoint; crash recovery runs at the next start.'}),
  };

  async run(): Promise<{clusters: Array<{cluster: string; stopped: boolean}>}> {
    const result = await embeddedStop(this.installDir(), {cluster: this.flags.cluster, immediate: this.flags.immediate});
    for (const r of result) this.out.progress(`${r.cluster}: ${r.stopped ? 'stopped' : 'was not running'}`);
    return {clusters: result};
  }
}
