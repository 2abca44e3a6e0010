import {createHash, generateKeyPair as generateKeyPairCb, type JsonWebKey} from 'node:crypto';
import {promisify} from 'node:util';
import path from 'node:path';

import {writeFileAtomic} from '../state/atomic-file.js';
import type {InstallDir} from '../state/install-dir.js';
import type {SealedStore} from '../secrets/sealed-store.js';

const generateKeyPair = promisify(generateKeyPairCb);

/**
 * JWT signing keys for the auth service. One key signs; keys it replaced stay in the JWKS as
 * verify-only until their grace period ends, so tokens issued just before a rotation keep
 * verifying, and are then dropped with their private key.
 *
 * Private keys are sealed secrets (jwt/<kid>); the public key set is secrets/jwt/keyset.json, and
 * the JWKS the auth service serves is runtime/jwks.json.
 */

export type JwtAlgorithm = 'EdDSA' | 'ES256';

export interface JwtKey {
  readonly kid: string;
  readonly alg: JwtAlgorithm;
  readonly state: 'signing' | 'verify-only';
  readonly createdAt: string;
  /** verify-only keys: dropped after this instant. */
  readonly verifyUntil?: string;
  readonly publicJwk: JsonWebKey;
}

export interface Jwks {
  readonly keys: ReadonlyArray<JsonWebKey & {kid: string; alg: string; use: 'sig'}>;
}

const KEYSET = 'jwt/keyset.json';

export async function readJwtKeys(dir: InstallDir): Promise<JwtKey[]> {
  try {
    return (JSON.parse((await dir.readSecret(KEYSET)).toString('utf8')) as {keys: JwtKey[]}).keys;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
}

/** Creates the first signing key if there is none. Returns the signing key and whether it was created. */
export async function ensureJwtSigningKey(dir: InstallDir, sealed: SealedStore, alg: JwtAlgorithm, now: Date): Promise<{key: JwtKey; created: boolean}> {
  const keys = await readJwtKeys(dir);
  const signing = keys.find((k) => k.state === 'signing');
  if (signing) return {key: signing, created: false};
  const key = await newKey(sealed, alg, now);
  await saveKeys(dir, [...keys, key], now);
  return {key, created: true};
}

export interface JwtRotation {
  readonly signing: JwtKey;
  readonly verifyOnly: JwtKey[];
  readonly dropped: string[];
}

/** Adds a new signing key; the old one verifies for `graceDays` more; expired ones are dropped. */
export async function rotateJwtSigningKey(dir: InstallDir, sealed: SealedStore, alg: JwtAlgorithm, graceDays: number, now: Date): Promise<JwtRotation> {
  const until = new Date(now.getTime() + graceDays * 86_400_000).toISOString();
  const demoted = (await readJwtKeys(dir)).map((k): JwtKey => (k.state === 'signing' ? {...k, state: 'verify-only', verifyUntil: until} : k));
  const signing = await newKey(sealed, alg, now);
  const {kept, dropped} = await dropExpired(sealed, [...demoted, signing], now);
  await saveKeys(dir, kept, now);
  return {signing, verifyOnly: kept.filter((k) => k.state === 'verify-only'), dropped};
}

/** Drops verify-only keys whose grace period is over, and rewrites the JWKS. */
export async function pruneJwtKeys(dir: InstallDir, sealed: SealedStore, now: Date): Promise<string[]> {
  const {kept, dropped} = await dropExpired(sealed, await readJwtKeys(dir), now);
  if (dropped.length > 0) await saveKeys(dir, kept, now);
  return dropped;
}

export function jwksOf(keys: readonly JwtKey[], now: Date): Jwks {
  return {
    keys: keys
      .filter((k) => k.state === 'signing' || (k.verifyUntil !== undefined && Date.parse(k.verifyUntil) > now.getTime()))
      .map((k) => ({...k.publicJwk, kid: k.kid, alg: k.alg, use: 'sig' as const})),
  };
}

export function jwksFile(dir: InstallDir): string {
  return path.join(dir.runtimeDir, 'jwks.json');
}

/** The sealed-secret name of a key's private half. */
export const jwtPrivateKeyName = (kid: string): string => `jwt/${kid}`;

async function newKey(sealed: SealedStore, alg: JwtAlgorithm, now: Date): Promise<JwtKey> {
  const pair = alg === 'EdDSA' ? await generateKeyPair('ed25519') : await generateKeyPair('ec', {namedCurve: 'P-256'});
  const publicJwk = pair.publicKey.export({format: 'jwk'});
  const kid = thumbprint(publicJwk);
  await sealed.put(jwtPrivateKeyName(kid), pair.privateKey.export({format: 'pem', type: 'pkcs8'}));
  return {kid, alg, state: 'signing', createdAt: now.toISOString(), publicJwk};
}

async function dropExpired(sealed: SealedStore, keys: JwtKey[], now: Date): Promise<{kept: JwtKey[]; dropped: string[]}> {
  const expired = (k: JwtKey): boolean => k.state === 'verify-only' && k.verifyUntil !== undefined && Date.parse(k.verifyUntil) <= now.getTime();
  const dropped = keys.filter(expired).map((k) => k.kid);
  for (const kid of dropped) await sealed.remove(jwtPrivateKeyName(kid));
  return {kept: keys.filter((k) => !expired(k)), dropped};
}

async function saveKeys(dir: InstallDir, keys: JwtKey[], now: Date): Promise<void> {
  await dir.writeSecret(KEYSET, `${JSON.stringify({keys}, null, 2)}\n`);
  await dir.ensureLayout();
  // The JWKS is public by nature; the auth service mounts it read-only.
  await writeFileAtomic(jwksFile(dir), `${JSON.stringify(jwksOf(keys, now), null, 2)}\n`, {mode: 0o644});
}

/** A kid derived from the key itself: the RFC 7638 thumbprint (SHA-256 of the canonical members). */
function thumbprint(jwk: JsonWebKey): string {
  const members = jwk.kty === 'OKP' ? {crv: jwk.crv, kty: jwk.kty, x: jwk.x} : {crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y};
  // Hex rather than base64url: the kid is also a file name under secrets/, which is lowercase.
  return createHash('sha256').update(JSON.stringify(members)).digest('hex').slice(0, 32);
}
