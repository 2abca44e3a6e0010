/**
 * Private keys: generation through WebCrypto (what @peculiar/x509 signs with), and reading any
 * PEM an operator brings through node:crypto, which understands PKCS#8, SEC1 and PKCS#1 alike
 * and re-exports them as PKCS#8, the one form dforge stores.
 */

import {KeyObject, createPrivateKey, createPublicKey, webcrypto} from 'node:crypto';

import {UserError} from '../errors.js';

export type KeyAlgorithm = 'ecdsa-p256' | 'rsa-3072';
export const keyAlgorithms: readonly KeyAlgorithm[] = ['ecdsa-p256', 'rsa-3072'];

/** WebCrypto parameters to generate each algorithm, and to sign with it. */
const generation = {
  'ecdsa-p256': {name: 'ECDSA', namedCurve: 'P-256'},
  'rsa-3072': {name: 'RSASSA-PKCS1-v1_5', modulusLength: 3072, publicExponent: new Uint8Array([1, 0, 1]), hash: 'SHA-256'},
} as const;

export interface SigningAlgorithm {
  readonly name: 'ECDSA' | 'RSASSA-PKCS1-v1_5';
  readonly hash: 'SHA-256' | 'SHA-384' | 'SHA-512';
}

export interface GeneratedKey {
  readonly pair: webcrypto.CryptoKeyPair;
  readonly signing: SigningAlgorithm;
  /** PKCS#8 PEM. */
  readonly keyPem: string;
}

export async function generateKey(algorithm: KeyAlgorithm): Promise<GeneratedKey> {
  const params = generation[algorithm];
  if (!params) {
    throw new UserError(`unknown key algorithm ${JSON.stringify(algorithm)}`, {nextSteps: [`Use one of: ${keyAlgorithms.join(', ')}.`]});
  }
  const pair = (await webcrypto.subtle.generateKey(params, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const keyPem = KeyObject.from(pair.privateKey).export({type: 'pkcs8', format: 'pem'}) as string;
  return {pair, signing: {name: params.name, hash: 'SHA-256'}, keyPem};
}

export interface PrivateKey {
  readonly keyObject: KeyObject;
  /** The same key as PKCS#8 PEM, whatever form it was read from. */
  readonly pkcs8Pem: string;
  /** `ecdsa-p256`, `rsa-3072`, ...; see describeKey. */
  readonly keyType: string;
}

/**
 * Reads a PEM private key (PKCS#8, SEC1 `EC PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`) and accepts
 * only RSA and ECDSA. Errors name `what` and never echo the key or the parser's view of it.
 */
export function readPrivateKey(pem: string, what: string): PrivateKey {
  // Recognised from the PEM framing (PKCS#8 and legacy OpenSSL encryption): Node reports a missing
  // passphrase with different error codes from one release to the next.
  if (/-----BEGIN ENCRYPTED PRIVATE KEY-----|Proc-Type: 4,ENCRYPTED/.test(pem)) {
    throw new UserError(`${what} is encrypted with a passphrase`, {
      nextSteps: ['Decrypt a copy first (openssl pkey -in KEY -out KEY.plain, then chmod 600 KEY.plain) and pass that file.'],
    });
  }
  let keyObject: KeyObject;
  try {
    keyObject = createPrivateKey({key: pem, format: 'pem'});
  } catch {
    throw new UserError(`${what} is not a readable PEM private key`, {
      nextSteps: ['Pass the key as PEM: PKCS#8 (BEGIN PRIVATE KEY), SEC1 (BEGIN EC PRIVATE KEY) or PKCS#1 (BEGIN RSA PRIVATE KEY).'],
    });
  }
  if (keyObject.asymmetricKeyType !== 'ec' && keyObject.asymmetricKeyType !== 'rsa') {
    throw new UserError(`${what} is a ${describeKey(keyObject)} key; dforge certificates use RSA or ECDSA keys`, {
      nextSteps: ['Use an RSA (2048 bits or more) or ECDSA (P-256, P-384) key and certificate.'],
    });
  }
  return {keyObject, pkcs8Pem: keyObject.export({type: 'pkcs8', format: 'pem'}) as string, keyType: describeKey(keyObject)};
}

const curveNames: Record<string, string> = {prime256v1: 'p256', secp384r1: 'p384', secp521r1: 'p521'};

/** A short name for a key's algorithm and size: `ecdsa-p256`, `rsa-3072`, `ed25519`, ... */
export function describeKey(key: KeyObject): string {
  const details = key.asymmetricKeyDetails ?? {};
  switch (key.asymmetricKeyType) {
    case 'ec':
      return `ecdsa-${curveNames[details.namedCurve ?? ''] ?? details.namedCurve ?? 'unknown'}`;
    case 'rsa':
    case 'rsa-pss':
      return `${key.asymmetricKeyType}-${details.modulusLength ?? 'unknown'}`;
    default:
      return key.asymmetricKeyType ?? 'unknown';
  }
}

/** Whether a private key (or public key) and a certificate's public key are the same key. */
export function samePublicKey(a: KeyObject, b: KeyObject): boolean {
  const spki = (k: KeyObject): Buffer => (k.type === 'private' ? createPublicKey(k) : k).export({type: 'spki', format: 'der'});
  return spki(a).equals(spki(b));
}

const ecSigning: Record<string, {namedCurve: string; hash: SigningAlgorithm['hash']}> = {
  prime256v1: {namedCurve: 'P-256', hash: 'SHA-256'},
  secp384r1: {namedCurve: 'P-384', hash: 'SHA-384'},
  secp521r1: {namedCurve: 'P-521', hash: 'SHA-512'},
};

/** A CA key as a WebCrypto signing key, with the signature algorithm that suits its size. */
export async function importSigningKey(key: PrivateKey, what: string): Promise<{key: webcrypto.CryptoKey; signing: SigningAlgorithm}> {
  const der = key.keyObject.export({type: 'pkcs8', format: 'der'});
  if (key.keyObject.asymmetricKeyType === 'rsa') {
    const signing = {name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256'} as const;
    return {key: await webcrypto.subtle.importKey('pkcs8', der, signing, false, ['sign']), signing};
  }
  const ec = ecSigning[key.keyObject.asymmetricKeyDetails?.namedCurve ?? ''];
  if (!ec) {
    throw new UserError(`${what} is a ${key.keyType} key, which dforge cannot sign with`, {
      nextSteps: ['Use a CA key on P-256, P-384 or P-521, or an RSA key.'],
    });
  }
  const imported = await webcrypto.subtle.importKey('pkcs8', der, {name: 'ECDSA', namedCurve: ec.namedCurve}, false, ['sign']);
  return {key: imported, signing: {name: 'ECDSA', hash: ec.hash}};
}

/** The family a CA key belongs to, as the default algorithm of the leaves it issues. */
export function leafAlgorithmFor(caKey: PrivateKey): KeyAlgorithm {
  return caKey.keyObject.asymmetricKeyType === 'rsa' ? 'rsa-3072' : 'ecdsa-p256';
}
