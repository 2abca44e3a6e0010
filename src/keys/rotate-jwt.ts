import type {InstallDir} from '../state/install-dir.js';
import {acquireLock} from '../state/lock.js';
import {openKeyServices} from './context.js';
import {jwksOf, pruneJwtKeys, readJwtKeys, rotateJwtSigningKey, type Jwks, type JwtKey} from './jwt.js';

export interface JwtRotationResult {
  readonly signing: JwtKey;
  readonly verifyOnly: string[];
  readonly dropped: string[];
  readonly graceDays: number;
}

/** `keys rotate --jwt` under the keys lock, with the algorithm and grace period from dforge.yaml. */
export async function rotateJwt(dir: InstallDir, options: {graceDays?: number; clock?: () => Date; command: string}): Promise<JwtRotationResult> {
  const now = (options.clock ?? (() => new Date()))();
  const lock = await acquireLock(dir.locksDir, 'keys', {command: options.command, queue: true});
  try {
    const services = await openKeyServices(dir);
    const graceDays = options.graceDays ?? services.settings.jwt.graceDays;
    const rotation = await rotateJwtSigningKey(dir, services.sealed, services.settings.jwt.algorithm, graceDays, now);
    return {signing: rotation.signing, verifyOnly: rotation.verifyOnly.map((k) => k.kid), dropped: rotation.dropped, graceDays};
  } finally {
    await lock.release();
  }
}

/** The JWKS the auth service should serve now; drops keys whose grace period is over. */
export async function currentJwks(dir: InstallDir, options: {clock?: () => Date; command: string}): Promise<Jwks & {dropped: string[]}> {
  const now = (options.clock ?? (() => new Date()))();
  const lock = await acquireLock(dir.locksDir, 'keys', {command: options.command, queue: true});
  try {
    const services = await openKeyServices(dir);
    const dropped = await pruneJwtKeys(dir, services.sealed, now);
    return {...jwksOf(await readJwtKeys(dir), now), dropped};
  } finally {
    await lock.release();
  }
}
