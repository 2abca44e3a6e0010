import {Flags} from '@oclif/core';

import {BaseCommand} from '../../base-command.js';
import {loadConfigFile} from '../../config/load.js';
import {openKeyServices} from '../../keys/context.js';
import {embeddedClusterNames, setUpEmbeddedCluster, type EmbeddedSetUp} from '../../postgres/embedded-install.js';

export default class DbInit extends BaseCommand<typeof DbInit> {
  static override summary = 'Initialise, start and bootstrap the embedded PostgreSQL clusters (idempotent).';
  static override description = 'Needs the keys and the PKI (dforge keys init, dforge certs generate). Creates no tenant: use it to rebuild a cluster before restore --control.';
  static override examples = ['<%= config.bin %> db init'];
  static override flags = {cluster: Flags.string({summary: 'Only this cluster.'})};

  async run(): Promise<{clusters: EmbeddedSetUp[]}> {
    const dir = this.installDir();
    const config = await loadConfigFile(dir.configFile);
    const keys = await openKeyServices(dir);
    const results: EmbeddedSetUp[] = [];
    for (const name of embeddedClusterNames(config).filter((n) => !this.flags.cluster || n === this.flags.cluster)) {
      const r = await setUpEmbeddedCluster(dir, keys, config, name);
      this.out.progress(`${name}: ${r.initialised ? 'initialised' : 'existing data kept'}, listening on 127.0.0.1:${r.port}`);
      results.push(r);
    }
    return {clusters: results};
  }
}
