import {Flags} from '@oclif/core';

import {BaseCommand} from '../base-command.js';
import {quickstartResult, quickstartSteps, type QuickstartContext, type QuickstartResult} from '../quickstart/service.js';
import {runSteps} from '../ui/tasks.js';

export default class Quickstart extends BaseCommand<typeof Quickstart> {
  static override summary = 'Set up an evaluation install on this host, without Docker: embedded PostgreSQL and two demo tenants.';
  static override description = `Runs preflight, writes dforge.yaml, creates the keys and the PKI, starts PostgreSQL from the host binaries (TLS 1.3 only, scram-sha-256, sameuser pg_hba), bootstraps dforge_control, and creates the tenants acme and globex.
Safe to run again: existing config, keys, certificates, data and tenants are kept.`;
  static override examples = ['<%= config.bin %> quickstart --dir ./demo', '<%= config.bin %> quickstart --dir /opt/dforge --domain erp.example.com --port 5433'];

  static override flags = {
    domain: Flags.string({summary: 'Domain of the install.', default: 'dforge.localhost'}),
    port: Flags.integer({summary: 'Port of the embedded PostgreSQL (loopback only).', default: 5432, min: 1, max: 65_535}),
    region: Flags.string({summary: 'Name of the region.', default: 'local'}),
  };

  async run(): Promise<QuickstartResult> {
    const dir = this.installDir();
    const ctx: QuickstartContext = {result: {clusters: [], tenants: []}};
    await runSteps(quickstartSteps(dir, {domain: this.flags.domain, port: this.flags.port, region: this.flags.region, tenants: ['acme', 'globex']}), ctx, this.out);
    const result = quickstartResult(dir, ctx);
    if (!this.jsonEnabled()) {
      this.log(`install directory  ${result.dir}`);
      this.log(`config             ${result.configFile}`);
      this.log(`CA certificate     ${result.caFile}`);
      this.log(`CA fingerprint     ${result.caFingerprint}`);
      for (const c of result.clusters) this.log(`PostgreSQL ${result.postgresMajorVersion}      ${c.cluster} on 127.0.0.1:${c.port}, data in ${c.dataDir}`);
      for (const t of result.tenants) this.log(`tenant             ${t.slug} (${t.status}, database ${t.database})`);
      this.log('\nTry next:');
      for (const step of result.nextSteps) this.log(`  ${step}`);
    }
    return result;
  }
}
