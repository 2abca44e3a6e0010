import {readJwtKeys} from './jwt.js';
import {openKeyServices} from './context.js';
import type {InstallDir} from '../state/install-dir.js';

export interface MasterVersionStatus {
  readonly version: number;
  readonly state: 'pending' | 'active' | 'retired';
  readonly createdAt: string;
  readonly ageDays: number;
  /** What is wrapped by this version now. */
  readonly protects: {readonly dataKeys: number; readonly sealedSecrets: number};
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
export async function keysStatus(dir: InstallDir, options: {env?: NodeJS.ProcessEnv; clock?: () => Date} = {}): Promise<KeysStatus> {
  const now = (options.clock ?? (() => new Date()))();
  const age = (iso: string): number => Math.floor((now.getTime() - Date.parse(iso)) / 86_400_000);
  const services = await openKeyServices(dir, options);
  const {keyring} = services;

  const counts = new Map<number, {dataKeys: number; sealedSecrets: number}>();
  const count = (v: number): {dataKeys: number; sealedSecrets: number} => counts.get(v) ?? (counts.set(v, {dataKeys: 0, sealedSecrets: 0}), counts.get(v)!);
  const records = await services.dataKeyStore.list();
  for (const r of records) count(keyring.versionOf(r.wrapped, `data key ${r.owner} v${r.version}`)).dataKeys++;
  const sealedSecrets = await services.sealed.list();
  for (const name of sealedSecrets) count(await services.sealed.versionOf(name)).sealedSecrets++;

  const versions: MasterVersionStatus[] = [];
  for (const v of keyring.state.versions) {
    versions.push({
      version: v.version,
      state: v.state,
      createdAt: v.createdAt,
      ageDays: age(v.createdAt),
      protects: counts.get(v.version) ?? {dataKeys: 0, sealedSecrets: 0},
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
