import {BaseCommand} from '../../base-command.js';
import {initKeys, type KeysInitResult} from '../../keys/init.js';

export default class KeysInit extends BaseCommand<typeof KeysInit> {
  static override summary = 'Create the master key and the first JWT signing key, where missing.';
  static override description = 'Idempotent: existing keys are never regenerated. The master key provider comes from keys.masterKeyProvider in dforge.yaml (default: a key file in secrets/master/).';
  static override examples = ['<%= config.bin %> keys init --dir /opt/dforge'];

  async run(): Promise<KeysInitResult> {
    const result = await initKeys(this.installDir(), {command: 'dforge keys init'});
    this.out.progress(`master key v${result.masterVersion} (${result.provider}) ${result.masterCreated ? 'created' : 'already present'}`);
    this.out.progress(`JWT signing key ${result.jwt.kid} (${result.jwt.alg}) ${result.jwt.created ? 'created' : 'already present'}; JWKS at ${result.jwt.jwksFile}`);
    return result;
  }
}
