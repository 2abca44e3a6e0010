import {createHash, createPublicKey, type KeyObject} from 'node:crypto';
import {promises as fs} from 'node:fs';

import {UserError} from '../errors.js';

/**
 * Ed25519 public keys as operators and auditors hand them over: PEM (SPKI) files, named by the
 * SHA-256 of their DER. Audit exports and offline bundles are both signed this way.
 */

/** SHA-256 of the key's DER SubjectPublicKeyInfo: `openssl pkey -pubin -in KEY -outform DER | sha256sum`. */
export function publicKeySha256(key: KeyObject): string {
  return createHash('sha256').update(key.export({type: 'spki', format: 'der'})).digest('hex');
}

/** Reads a PEM public key someone brings; it must be Ed25519. `hint` says which file to pass instead. */
export async function readEd25519PublicKey(file: string, hint: string): Promise<KeyObject> {
  const pem = await fs.readFile(file, 'utf8').catch((err: NodeJS.ErrnoException) => {
    throw new UserError(`cannot read the public key ${file}: ${err.code ?? err.message}`, {nextSteps: [hint]});
  });
  // createPublicKey would derive the public half of a private key without a word: a site handed
  // the signing key by mistake must hear that it now holds a secret it should not have.
  if (pem.includes('PRIVATE KEY')) {
    throw new UserError(`${file} is a PRIVATE key; pass the public key (.pub) instead`, {nextSteps: [hint, 'A private signing key that left its owner is compromised: make a new key pair and re-sign.']});
  }
  let key: KeyObject;
  try {
    key = createPublicKey(pem);
  } catch {
    throw new UserError(`${file} is not a PEM public key`, {nextSteps: [hint]});
  }
  if (key.asymmetricKeyType !== 'ed25519') throw new UserError(`${file} is a ${key.asymmetricKeyType ?? 'unknown'} key, not Ed25519`, {nextSteps: [hint]});
  return key;
}
