import {randomBytes} from 'node:crypto';

import fc from 'fast-check';
import {describe, expect, it} from 'vitest';

import {DforgeError, UserError, VerificationError} from '../../src/errors.js';
import {keyCheckValue, readHeader, unwrap, wrap, type WrappingKey} from '../../src/secrets/envelope.js';

const key: WrappingKey = {id: 'master', version: 3, material: randomBytes(32)};

describe('wrapped-key envelope', () => {
  it('round-trips and names the key and version in the header', () => {
    const secret = randomBytes(32);
    const blob = wrap(key, secret, 'dek:acme:v1');
    expect(unwrap(key, blob, 'dek:acme:v1', 'x')).toEqual(secret);
    expect(readHeader(blob, 'x')).toMatchObject({keyId: 'master', keyVersion: 3, keyCheck: keyCheckValue(key.material)});
    expect(blob.includes(secret)).toBe(false);
  });

  it('detects a flipped bit at every position, and never returns bytes', () => {
    const blob = wrap(key, randomBytes(32), 'ctx');
    for (let i = 0; i < blob.length; i++) {
      for (const bit of [0x01, 0x80]) {
        const tampered = Buffer.from(blob);
        tampered[i]! ^= bit;
        let result: unknown;
        try {
          result = unwrap(key, tampered, 'ctx', 'blob');
        } catch (err) {
          expect(err).toBeInstanceOf(DforgeError);
          continue;
        }
        throw new Error(`flip at byte ${i} went undetected: ${String(result)}`);
      }
    }
  });

  it('reports tampering of the body as a verification failure (exit 6)', () => {
    const blob = wrap(key, randomBytes(32), 'ctx');
    blob[blob.length - 20]! ^= 1;
    const err = (() => {
      try {
        unwrap(key, blob, 'ctx', 'sealed secret pki/ca.key');
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(VerificationError);
    expect((err as VerificationError).exitCode).toBe(6);
    expect((err as Error).message).toBe('sealed secret pki/ca.key failed authentication: it was modified, corrupted or moved from another place');
  });

  it('tells a wrong key (same version, other material) from tampering', () => {
    const blob = wrap(key, randomBytes(32), 'ctx');
    const impostor = {...key, material: randomBytes(32)};
    expect(() => unwrap(impostor, blob, 'ctx', 'x')).toThrow(UserError);
    expect(() => unwrap(impostor, blob, 'ctx', 'x')).toThrow(/wrong key for x/);
  });

  it('binds the blob to its context: moved to another owner, it fails', () => {
    const blob = wrap(key, randomBytes(32), 'dek:acme:v1');
    expect(() => unwrap(key, blob, 'dek:globex:v1', 'x')).toThrow(VerificationError);
  });

  it('refuses truncated and foreign input as corrupted', () => {
    const blob = wrap(key, randomBytes(32), 'ctx');
    fc.assert(
      fc.property(fc.integer({min: 0, max: blob.length - 1}), (n) => {
        expect(() => unwrap(key, blob.subarray(0, n), 'ctx', 'x')).toThrow(DforgeError);
      }),
    );
    expect(() => readHeader(Buffer.from('-----BEGIN PRIVATE KEY-----'), 'x')).toThrow(/corrupted: it does not start with the dforge wrapped-key magic/);
  });
});
