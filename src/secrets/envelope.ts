import {createCipheriv, createDecipheriv, createHmac, randomBytes, timingSafeEqual} from 'node:crypto';

import {BugError, UserError, VerificationError} from '../errors.js';

/**
 * The one wrapping format for key material in dforge: a key (or a small secret) encrypted with
 * AES-256-GCM under a named, versioned key-encryption key. The header names the key and version
 * and carries a key check value, so "wrong key", "missing key version" and "tampered" are told
 * apart before any decryption is attempted. The header is the AEAD's additional data, together
 * with a caller-supplied context (what the blob is for), so a blob moved to another purpose or
 * another owner fails authentication. Byte layout: docs/formats.md, "Wrapped key".
 */

const MAGIC = Buffer.from('DFWK');
const FORMAT_VERSION = 1;
const NONCE_BYTES = 12;
const TAG_BYTES = 16;
export const KEY_BYTES = 32;
const CHECK_BYTES = 8;

/** A key-encryption key as the envelope needs it: its name, its version and its bytes. */
export interface WrappingKey {
  readonly id: string;
  readonly version: number;
  readonly material: Buffer;
}

export interface WrappedHeader {
  readonly keyId: string;
  readonly keyVersion: number;
  readonly keyCheck: Buffer;
}

/** The key check value: identifies a key without revealing it (HMAC of a fixed label). */
export function keyCheckValue(material: Buffer): Buffer {
  return createHmac('sha256', material).update('dforge key check v1').digest().subarray(0, CHECK_BYTES);
}

/**
 * Where random bytes come from. Always crypto.randomBytes in dforge; test vectors pass fixed
 * bytes to reproduce a file exactly (docs/test-vectors/).
 */
export type RandomSource = (size: number) => Buffer;

export function wrap(key: WrappingKey, plaintext: Buffer, context: string, random: RandomSource = randomBytes): Buffer {
  if (key.material.length !== KEY_BYTES) throw new Error(`wrapping key ${key.id} v${key.version} has ${key.material.length} bytes, expected ${KEY_BYTES}`);
  const header = encodeHeader({keyId: key.id, keyVersion: key.version, keyCheck: keyCheckValue(key.material)});
  const nonce = random(NONCE_BYTES);
  const cipher = createCipheriv('aes-256-gcm', key.material, nonce);
  cipher.setAAD(Buffer.concat([header, Buffer.from(context)]));
  const body = Buffer.concat([cipher.update(plaintext), cipher.final()]);
  return Buffer.concat([header, nonce, body, cipher.getAuthTag()]);
}

/** Reads the header only: which key and version a blob needs. Throws on a malformed blob. */
export function readHeader(blob: Buffer, what: string): WrappedHeader & {headerLength: number} {
  const fail = (why: string): never => {
    throw new VerificationError(`${what} is corrupted: ${why}`, {
      nextSteps: ['Restore it from a backup of the install directory; the stored bytes cannot be trusted.'],
    });
  };
  if (blob.length < MAGIC.length + 2 || !blob.subarray(0, MAGIC.length).equals(MAGIC)) fail('it does not start with the dforge wrapped-key magic');
  if (blob[4] !== FORMAT_VERSION) fail(`unknown format version ${blob[4]}`);
  const idLength = blob[5]!;
  const fixed = 6 + idLength + 4 + CHECK_BYTES;
  if (blob.length < fixed + NONCE_BYTES + TAG_BYTES) fail('it is truncated');
  const keyId = blob.subarray(6, 6 + idLength).toString('utf8');
  if (!/^[a-z0-9][a-z0-9:/._-]*$/.test(keyId)) fail('the key id in its header is not valid');
  return {
    keyId,
    keyVersion: blob.readUInt32BE(6 + idLength),
    keyCheck: Buffer.from(blob.subarray(6 + idLength + 4, fixed)),
    headerLength: fixed,
  };
}

/**
 * Unwraps with `key`, which must be the key and version the header names. Distinct errors for a
 * different key id, a different key under the same version (wrong key), and failed
 * authentication (tampering). Never returns unauthenticated bytes.
 */
export function unwrap(key: WrappingKey, blob: Buffer, context: string, what: string): Buffer {
  const header = readHeader(blob, what);
  if (header.keyId !== key.id || header.keyVersion !== key.version) {
    throw new BugError(`${what} is wrapped by ${header.keyId} v${header.keyVersion}, but was opened with ${key.id} v${key.version}`);
  }
  if (!timingSafeEqual(header.keyCheck, keyCheckValue(key.material))) {
    throw new UserError(`wrong key for ${what}: it was wrapped by a different ${key.id} v${key.version} than the one configured`, {
      nextSteps: [`Configure the ${key.id} key this install was set up with (secrets/master/, DFORGE_MASTER_KEY or the passphrase), then re-run.`],
      data: {keyId: key.id, keyVersion: key.version},
    });
  }
  const nonceStart = header.headerLength;
  const tagStart = blob.length - TAG_BYTES;
  const decipher = createDecipheriv('aes-256-gcm', key.material, blob.subarray(nonceStart, nonceStart + NONCE_BYTES));
  decipher.setAAD(Buffer.concat([blob.subarray(0, header.headerLength), Buffer.from(context)]));
  decipher.setAuthTag(blob.subarray(tagStart));
  try {
    return Buffer.concat([decipher.update(blob.subarray(nonceStart + NONCE_BYTES, tagStart)), decipher.final()]);
  } catch {
    throw new VerificationError(`${what} failed authentication: it was modified, corrupted or moved from another place`, {
      nextSteps: ['Restore it from a backup of the install directory; do not use the stored bytes.'],
      data: {keyId: header.keyId, keyVersion: header.keyVersion},
    });
  }
}

function encodeHeader(h: WrappedHeader): Buffer {
  const id = Buffer.from(h.keyId, 'utf8');
  if (id.length > 255) throw new Error('key id too long');
  const version = Buffer.alloc(4);
  version.writeUInt32BE(h.keyVersion);
  return Buffer.concat([MAGIC, Buffer.from([FORMAT_VERSION, id.length]), id, version, h.keyCheck]);
}
