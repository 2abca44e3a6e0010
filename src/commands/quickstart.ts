import {Flags} from '@oclif/core';

import {BaseCommand} from '../base-command.js';
import {QUICKSTART_DEFAULTS, quickstartResult, quickstartSteps, type QuickstartContext, type QuickstartResult} from '../quickstart/service.js';
import {runSteps} from '../ui/tasks.js';

export default class Quickstart extends BaseCommand<typeof Quickstart> {
  static override summary = 'Set up an evaluation install on this host, without Docker: embedded PostgreSQL and two demo tenants.';
  static override description = `Runs preflight, writes dforge.yaml, creates the keys and the PKI, starts PostgreSQL from the host binaries (TLS 1.3 only, scram-sha-256, sameuser pg_hba), bootstraps dforge_control, and creates the tenants acme and globex.
Everything that could stop it part-way (the server binaries, a writable install directory the postgres account can traverse, a path without spaces, a free port) is checked before the first file is written.
Safe to run again: existing config, keys, certificates, data and tenants are kept. A --port that differs from the kept dforge.yaml moves a stopped cluster to it; a different --domain or --region, or a new --port while the cluster runs, is refused.`;
  static override examples = ['<%= config.bin %> quickstart --dir ./demo', '<%= config.bin %> quickstart --dir /opt/dforge --domain erp.example.com --port 5433'];

  static override flags = {
    // No oclif defaults: an unset flag keeps what dforge.yaml says, so only a typed flag can conflict with it.
    domain: Flags.string({summary: `Domain of the install. Default: ${QUICKSTART_DEFAULTS.domain}, or the kept dforge.yaml's.`}),
    port: Flags.integer({summary: `Port of the embedded PostgreSQL (loopback only). Default: ${QUICKSTART_DEFAULTS.port}, or the kept dforge.yaml's.`, min: 1, max: 65_535}),
    region: Flags.string({summary: `Name of the region. Default: ${QUICKSTART_DEFAULTS.region}, or the kept dforge.yaml's.`}),
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
      if (result.portChanged) this.log(`port changed       ${result.portChanged.cluster}: ${result.portChanged.from} -> ${result.portChanged.to} (dforge.yaml updated)`);
      for (const c of result.clusters) this.log(`PostgreSQL ${result.postgresMajorVersion}      ${c.cluster} on 127.0.0.1:${c.port}, data in ${c.dataDir}`);
      for (const t of result.tenants) this.log(`tenant             ${t.slug} (${t.status}, database ${t.database})`);
      this.log('\nTry next:');
      for (const step of result.nextSteps) this.log(`  ${step}`);
    }
    return result;
  }
}
