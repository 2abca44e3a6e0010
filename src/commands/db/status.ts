import {Flags} from '@oclif/core';

import {BaseCommand} from '../../base-command.js';
import type {EmbeddedStatus} from '../../postgres/embedded.js';
import {embeddedStatus} from '../../postgres/embedded-ops.js';
import {renderTable} from '../../ui/table.js';
import {formatDuration} from '../../ui/time.js';

export default class DbStatus extends BaseCommand<typeof DbStatus> {
  static override summary = 'Show whether the embedded PostgreSQL clusters are initialised and running.';
  static override examples = ['<%= config.bin %> db status'];
  static override flags = {cluster: Flags.string({summary: 'Only this cluster.'})};

  async run(): Promise<{clusters: Array<EmbeddedStatus & {cluster: string}>}> {
    const status = await embeddedStatus(this.installDir(), this.flags.cluster);
    if (!this.jsonEnabled()) {
      this.log(renderTable(['cluster', 'running', 'pid', 'port', 'version', 'uptime', 'data'], status.map((s) => [s.cluster, s.running ? 'yes' : s.initialised ? 'no' : 'not initialised', String(s.pid ?? '-'), String(s.port), s.version ?? '-', s.uptimeSeconds === undefined ? '-' : formatDuration(s.uptimeSeconds), s.dataDir])));
    }
    return {clusters: status};
  }
}
