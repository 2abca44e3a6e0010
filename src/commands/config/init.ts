import {Flags} from '@oclif/core';

import {BaseCommand} from '../../base-command.js';
import {initInstallDir, type InitResult} from '../../config/init.js';

export default class ConfigInit extends BaseCommand<typeof ConfigInit> {
  static override summary = 'Lay out an install directory and write a starter dforge.yaml.';
  static override description = 'Creates secrets/ (0700), rendered/ and runtime/, writes dforge.schema.json for editors, and writes dforge.yaml unless one exists. Safe to re-run.';
  static override examples = ['<%= config.bin %> config init --dir /opt/dforge --domain dforge.example.com', '<%= config.bin %> config init --domain erp.acme.test --target compose --region eu'];

  static override flags = {
    domain: Flags.string({summary: 'Public DNS name of the install.', required: true}),
    target: Flags.string({summary: 'Where the data plane runs.', options: ['embedded', 'compose', 'k8s'] as const, default: 'embedded'}),
    region: Flags.string({summary: 'Name of the first (primary) region.', default: 'main'}),
  };

  async run(): Promise<InitResult> {
    const result = await initInstallDir(this.installDir(), {
      domain: this.flags.domain,
      target: this.flags.target as 'embedded' | 'compose' | 'k8s',
      region: this.flags.region,
      command: 'dforge config init',
    });
    this.out.progress(result.createdConfig ? `wrote ${result.configFile}` : `kept existing ${result.configFile}`);
    if (!this.jsonEnabled()) this.log(result.configFile);
    return result;
  }
}
