import {Flags} from '@oclif/core';

import {BaseCommand} from '../../base-command.js';
import {embeddedStart} from '../../postgres/embedded-ops.js';

export default class DbStart extends BaseCommand<typeof DbStart> {
  static override summary = 'Start the embedded PostgreSQL clusters (no-op if running).';
  static override description = 'For production, run them under systemd instead: dforge db unit.';
  static override examples = ['<%= config.bin %> db start'];
  static override flags = {cluster: Flags.string({summary: 'Only this cluster.'})};

  async run(): Promise<{clusters: Array<{cluster: string; started: boolean}>}> {
    const result = await embeddedStart(this.installDir(), this.flags.cluster);
    for (const r of result) this.out.progress(`${r.cluster}: ${r.started ? 'started' : 'already running'}`);
    return {clusters: result};
  }
}
