import {BaseCommand} from '../../base-command.js';
import type {Jwks} from '../../keys/jwt.js';
import {currentJwks} from '../../keys/rotate-jwt.js';

export default class KeysJwks extends BaseCommand<typeof KeysJwks> {
  static override summary = 'Print the JWKS (public JWT keys) the auth service serves.';
  static override description = 'Also drops verify-only keys whose grace period is over and refreshes runtime/jwks.json.';
  static override examples = ['<%= config.bin %> keys jwks > jwks.json'];

  async run(): Promise<Jwks> {
    const {dropped, ...jwks} = await currentJwks(this.installDir(), {command: 'dforge keys jwks'});
    if (dropped.length > 0) this.out.progress(`dropped expired verify-only keys: ${dropped.join(', ')}`);
    if (!this.jsonEnabled()) this.log(JSON.stringify(jwks, null, 2));
    return jwks;
  }
}
