import {readJwtKeys} from './jwt.js';
import {openKeyServices, wrappedKeySets, type KeyServices} from './context.js';
import type {WrappedKeySet} from '../secrets/wrapped-key-set.js';
import type {InstallDir} from '../state/install-dir.js';

export interface MasterVersionStatus {
  readonly version: number;
  readonly state: 'pending' | 'active' | 'retired';
  readonly createdAt: string;
  readonly ageDays: number;
  /** What is wrapped by this version now, per set (sealedSecrets, dataKeys, control). */
  readonly protects: Record<string, number>;
  /** Retired versions should hold none; true means their material still exists. */
  readonly materialPresent: boolean;
}

export interface KeysStatus {
  readonly master: {
    readonly provider: string;
    readonly activeVersion: number;
    readonly rotationInProgress?: {readonly from: number; readonly to: number; readonly startedAt: string};
    readonly versions: MasterVersionStatus[];
  };
  readonly dataKeys: ReadonlyArray<{readonly owner: string; readonly activeVersion: number; readonly versions: number; readonly oldestAgeDays: number}>;
  readonly jwt: ReadonlyArray<{readonly kid: string; readonly alg: string; readonly state: string; readonly ageDays: number; readonly verifyUntil?: string}>;
  readonly sealedSecrets: string[];
}

/** The versions in use, their age, and what each protects. Holds no key material. */
export async function keysStatus(
  dir: InstallDir,
  options: {env?: NodeJS.ProcessEnv; clock?: () => Date; extraSets?: (services: KeyServices) => Promise<WrappedKeySet[]>} = {},
): Promise<KeysStatus> {
  const now = (options.clock ?? (() => new Date()))();
  const age = (iso: string): number => Math.floor((now.getTime() - Date.parse(iso)) / 86_400_000);
  const services = await openKeyServices(dir, options);
  const {keyring} = services;

  const sets = await wrappedKeySets(services, options.extraSets);
  const perSet = await Promise.all(sets.map(async (set) => ({id: set.id, counts: await set.countByVersion()})));
  const protects = (version: number): Record<string, number> => Object.fromEntries(perSet.map(({id, counts}) => [id, counts.get(version) ?? 0]));
  const records = await services.dataKeyStore.list();
  const sealedSecrets = await services.sealed.list();

  const versions: MasterVersionStatus[] = [];
  for (const v of keyring.state.versions) {
    versions.push({
      version: v.version,
      state: v.state,
      createdAt: v.createdAt,
      ageDays: age(v.createdAt),
      protects: protects(v.version),
      materialPresent: await keyring.holds(v),
    });
  }

  const owners = new Map<string, typeof records>();
  for (const r of records) owners.set(r.owner, [...(owners.get(r.owner) ?? []), r]);
  return {
    master: {
      provider: keyring.state.provider,
      activeVersion: keyring.activeVersion(),
      ...(keyring.state.rotation ? {rotationInProgress: keyring.state.rotation} : {}),
      versions,
    },
    dataKeys: [...owners].map(([owner, rs]) => ({
      owner,
      activeVersion: rs.find((r) => r.state === 'active')?.version ?? 0,
      versions: rs.length,
      oldestAgeDays: Math.max(...rs.map((r) => age(r.createdAt))),
    })),
    jwt: (await readJwtKeys(dir)).map((k) => ({kid: k.kid, alg: k.alg, state: k.state, ageDays: age(k.createdAt), ...(k.verifyUntil ? {verifyUntil: k.verifyUntil} : {})})),
    sealedSecrets,
  };
}
