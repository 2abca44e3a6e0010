import type {KeyObject} from 'node:crypto';

import {readEd25519PublicKey} from '../pki/ed25519.js';

/** Which signers a reader accepts: keys from --trusted-key and from dforge.yaml's bundles.trustedKeys. */
export interface BundleTrust {
  trustedKeys: KeyObject[];
  allowUnsigned: boolean;
}

export async function bundleTrustFrom(options: {trustedKeyFiles: readonly string[]; configuredKeyFiles: readonly string[]; allowUnsigned: boolean}): Promise<BundleTrust> {
  const hint = 'Pass the bundle signer\'s Ed25519 public key (the .pub that dforge bundle keygen wrote) with --trusted-key, or list it under bundles.trustedKeys in dforge.yaml.';
  const files = [...new Set([...options.trustedKeyFiles, ...options.configuredKeyFiles])];
  const trustedKeys = await Promise.all(files.map((file) => readEd25519PublicKey(file, hint)));
  return {trustedKeys, allowUnsigned: options.allowUnsigned};
}
