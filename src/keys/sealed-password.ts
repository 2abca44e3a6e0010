import {randomPassword} from '../postgres/scram.js';
import type {KeyServices} from './context.js';

/** A sealed credential, created on first use and reused ever after: a re-run never regenerates a secret. */
export async function ensureSealedPassword(keys: KeyServices, name: string): Promise<{value: string; created: boolean}> {
  if (await keys.sealed.has(name)) return {value: (await keys.sealed.get(name)).toString('utf8'), created: false};
  const value = randomPassword();
  await keys.keyring.withWrites(`seal ${name}`, () => keys.sealed.put(name, value));
  return {value, created: true};
}
