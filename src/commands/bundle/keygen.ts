import {Flags} from '@oclif/core';

import {BaseCommand} from '../../base-command.js';
import {generateSigningKey, type KeygenResult} from '../../bundle/signing.js';

export default class BundleKeygen extends BaseCommand<typeof BundleKeygen> {
  static override summary = 'Create an Ed25519 key pair for signing offline bundles.';
  static override description = `Writes DIR/NAME.key (PKCS#8 PEM, mode 0600, DIR 0700) and DIR/NAME.pub (SPKI PEM), and prints the key's fingerprint (SHA-256 of the public key's DER). Never replaces an existing key. Give NAME.pub to the sites that verify bundles; keep NAME.key on the build machine.`;
  static override examples = ['<%= config.bin %> bundle keygen --out /root/bundle-keys'];
  static override flags = {
    out: Flags.directory({summary: 'Directory for the key pair (created 0700 if missing).', required: true}),
    name: Flags.string({summary: 'Base name of the key files.', default: 'bundle-signing'}),
  };

  async run(): Promise<KeygenResult> {
    const result = await generateSigningKey(this.flags.out, this.flags.name);
    if (!this.jsonEnabled()) this.log(`private key: ${result.privateKeyFile} (keep it secret)\npublic key:  ${result.publicKeyFile}\nfingerprint: ${result.fingerprint}`);
    return result;
  }
}
