import {Flags} from '@oclif/core';

import {BaseCommand} from '../../base-command.js';
import {loadConfigFile} from '../../config/load.js';

export interface ValidateResult {
  readonly file: string;
  readonly valid: true;
  readonly target: string;
  readonly regions: string[];
  readonly clusters: number;
}

export default class ConfigValidate extends BaseCommand<typeof ConfigValidate> {
  static override summary = 'Check dforge.yaml against the schema.';
  static override description = 'Reports every problem with its file, line and column, and how to fix it. Exit 1 when the file is invalid.';
  static override examples = ['<%= config.bin %> config validate', '<%= config.bin %> config validate --file ./dforge.yaml --json'];

  static override flags = {
    file: Flags.file({summary: 'Config file to check (default: dforge.yaml in --dir).'}),
  };

  async run(): Promise<ValidateResult> {
    const file = this.flags.file ?? this.installDir().configFile;
    const config = await loadConfigFile(file, {fresh: true});
    const result: ValidateResult = {
      file,
      valid: true,
      target: config.target,
      regions: Object.keys(config.regions),
      clusters: Object.values(config.regions).reduce((n, r) => n + r.clusters.length, 0),
    };
    if (!this.jsonEnabled()) this.log(`${file}: valid (target ${result.target}, regions ${result.regions.join(', ')}, ${result.clusters} cluster${result.clusters === 1 ? '' : 's'})`);
    return result;
  }
}
