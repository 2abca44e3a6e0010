import {BaseCommand} from '../../base-command.js';
import {configJsonSchema} from '../../config/schema.js';

export default class ConfigSchema extends BaseCommand<typeof ConfigSchema> {
  static override summary = 'Print the JSON Schema of dforge.yaml.';
  static override description = `Point an editor (yaml-language-server) or a CI linter at it to validate dforge.yaml as you type.
Without --json it prints the schema itself; with --json, like every command, an object: {schemaVersion, schema}.`;
  static override examples = ['<%= config.bin %> config schema > dforge.schema.json'];

  async run(): Promise<{schema: Record<string, unknown>}> {
    const schema = configJsonSchema();
    if (!this.jsonEnabled()) this.log(JSON.stringify(schema, null, 2));
    return {schema};
  }
}
