import {createPrivateKey, createPublicKey, generateKeyPairSync, sign, type KeyObject} from 'node:crypto';
import {constants, promises as fs} from 'node:fs';
import path from 'node:path';

import {UserError} from '../errors.js';
import {publicKeySha256} from '../pki/ed25519.js';

/**
 * The bundle signing key: Ed25519, private key as PKCS#8 PEM (0600 in a 0700 directory), public
 * key as SPKI PEM, named by publicKeySha256 like audit-export keys.
 */

export interface SigningKey {
  readonly privateKey: KeyObject;
  /** SHA-256 of the public key's DER (SPKI): bundle.json's signer.publicKeySha256. */
  readonly fingerprint: string;
}

export interface KeygenResult {
  readonly privateKeyFile: string;
  readonly publicKeyFile: string;
  readonly fingerprint: string;
}

export async function generateSigningKey(dir: string, name: string): Promise<KeygenResult> {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(name)) {
    throw new UserError(`--name ${JSON.stringify(name)} is not a plain file name`, {nextSteps: ['Use letters, digits, dot, dash and underscore, e.g. --name bundle-signing.']});
  }
  const privateKeyFile = path.join(dir, `${name}.key`);
  const publicKeyFile = path.join(dir, `${name}.pub`);
  await fs.mkdir(dir, {recursive: true, mode: 0o700});
  const {privateKey, publicKey} = generateKeyPairSync('ed25519');
  // O_EXCL: an existing key is never replaced; bundles signed with it would stop verifying.
  await writeNew(privateKeyFile, privateKey.export({type: 'pkcs8', format: 'pem'}) as string, 0o600);
  try {
    await writeNew(publicKeyFile, publicKey.export({type: 'spki', format: 'pem'}) as string, 0o644);
  } catch (err) {
    await fs.rm(privateKeyFile, {force: true});
    throw err;
  }
  return {privateKeyFile, publicKeyFile, fingerprint: publicKeySha256(publicKey)};
}

async function writeNew(file: string, text: string, mode: number): Promise<void> {
  let handle: fs.FileHandle;
  try {
    handle = await fs.open(file, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, mode);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') {
      throw new UserError(`${file} already exists; keygen never replaces a key`, {
        nextSteps: ['Keep the existing key, or pass another --out directory or --name.'],
        data: {file},
      });
    }
    throw err;
  }
  try {
    await handle.chmod(mode);
    await handle.writeFile(text);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Reads the private key for `bundle create --key`; a key others can read is refused, as ssh does. */
export async function readSigningKey(file: string): Promise<SigningKey> {
  const hint = 'Create one with: dforge bundle keygen --out DIR (then pass --key DIR/bundle-signing.key)';
  const stat = await fs.stat(file).catch((err: NodeJS.ErrnoException) => {
    throw new UserError(`cannot read the signing key ${file}: ${err.code ?? err.message}`, {nextSteps: [hint]});
  });
  if ((stat.mode & 0o077) !== 0) {
    throw new UserError(`the signing key ${file} is readable by others (mode ${(stat.mode & 0o777).toString(8)})`, {
      nextSteps: [`Run: chmod 600 ${file}, and consider the key exposed if others could log in here: make a new one with dforge bundle keygen.`],
    });
  }
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey(await fs.readFile(file, 'utf8'));
  } catch {
    // Never echo the file's content: it is the secret.
    throw new UserError(`${file} is not a PEM private key`, {nextSteps: [hint]});
  }
  if (privateKey.asymmetricKeyType !== 'ed25519') throw new UserError(`${file} is a ${privateKey.asymmetricKeyType ?? 'unknown'} key, not Ed25519`, {nextSteps: [hint]});
  return {privateKey, fingerprint: publicKeySha256(createPublicKey(privateKey))};
}

/** The 64-byte Ed25519 signature (pure, RFC 8032) over `bytes`. */
export function signBytes(key: SigningKey, bytes: Uint8Array): Buffer {
  return sign(null, bytes, key.privateKey);
}
