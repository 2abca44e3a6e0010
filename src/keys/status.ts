import {readJwtKeys} from './jwt.js';
import {openKeyServices, wrappedKeySets, type KeyServices} from './context.js';
import {controlBackupsByVersion, isDestroyed, type ControlBackupSource} from './retention.js';
import type {DataKeyRecord} from '../secrets/data-keys.js';
import type {WrappedKeySet} from '../secrets/wrapped-key-set.js';
import type {InstallDir} from '../state/install-dir.js';

export interface MasterVersionStatus {
  readonly version: number;
  readonly state: 'pending' | 'active' | 'retired';
  readonly createdAt: string;
  readonly ageDays: number;
  /**
   * What is wrapped by this version now, per set: sealedSecrets; dataKeys, every data key (the
   * tenants' in dforge_control included); control, the rest of dforge_control (tenant passwords).
   */
  readonly protects: Record<string, number>;
  /** Control backups in the catalog wrapped under this version: they keep a retired version's material. */
  readonly controlBackups: {readonly count: number; readonly ids: string[]};
  /** Whether the provider still holds this version's material. */
  readonly materialPresent: boolean;
  /** Retired and its material gone: nothing wrapped under it can be opened any more. */
  readonly destroyed: boolean;
}

export interface KeysStatus {
  readonly master: {
    readonly provider: string;
    readonly activeVersion: number;
    readonly rotationInProgress?: {readonly from: number; readonly to: number; readonly startedAt: string};
    readonly versions: MasterVersionStatus[];
  };
  /** Per owner (a tenant), its data key versions: those in dforge_control and any in secrets/data-keys.json. */
  readonly dataKeys: ReadonlyArray<{readonly owner: string; readonly activeVersion: number; readonly versions: number; readonly oldestAgeDays: number}>;
  readonly jwt: ReadonlyArray<{readonly kid: string; readonly alg: string; readonly state: string; readonly ageDays: number; readonly verifyUntil?: string}>;
  readonly sealedSecrets: string[];
}

/** The versions in use, their age, and what each protects. Holds no key material. */
export async function keysStatus(
  dir: InstallDir,
  options: {
    env?: NodeJS.ProcessEnv;
    clock?: () => Date;
    extraSets?: (services: KeyServices) => Promise<WrappedKeySet[]>;
    controlBackups?: ControlBackupSource;
    /** The tenant data keys dforge_control holds: on a running install, all of them. */
    tenantDataKeys?: () => Promise<DataKeyRecord[]>;
  } = {},
): Promise<KeysStatus> {
  const now = (options.clock ?? (() => new Date()))();
  const age = (iso: string): number => Math.floor((now.getTime() - Date.parse(iso)) / 86_400_000);
  const services = await openKeyServices(dir, options);
  const {keyring} = services;

  const sets = await wrappedKeySets(services, options.extraSets);
  const perSet = await Promise.all(sets.map(async (set) => ({id: set.id, counts: await set.countByVersion()})));
  // Tenant data keys live in dforge_control, not in the install's file store: counting only the
  // file store reported "0 data keys" on every install with tenants.
  const tenantKeys = options.tenantDataKeys ? await options.tenantDataKeys() : [];
  const tenantKeysAt = new Map<number, number>();
  for (const r of tenantKeys) {
    const v = keyring.versionOf(r.wrapped, `data key dek/${r.owner} v${r.version}`);
    tenantKeysAt.set(v, (tenantKeysAt.get(v) ?? 0) + 1);
  }
  const protects = (version: number): Record<string, number> => {
    const counts: Record<string, number> = Object.fromEntries(perSet.map(({id, counts}) => [id, counts.get(version) ?? 0]));
    // The dforge_control set re-wraps tenant data keys and passwords together (one transaction);
    // its data keys are reported as data keys, leaving it the passwords.
    const moved = Math.min(tenantKeysAt.get(version) ?? 0, counts.control ?? 0);
    if (moved > 0 && counts.dataKeys !== undefined) {
      counts.dataKeys += moved;
      counts.control! -= moved;
    }
    return counts;
  };
  const records = [...tenantKeys, ...(await services.dataKeyStore.list())];
  const sealedSecrets = await services.sealed.list();
  const backupsByVersion = controlBackupsByVersion(options.controlBackups ? await options.controlBackups() : []);

  const versions: MasterVersionStatus[] = [];
  for (const v of keyring.state.versions) {
    const materialPresent = await keyring.holds(v);
    const backups = backupsByVersion.get(v.version) ?? [];
    versions.push({
      version: v.version,
      state: v.state,
      createdAt: v.createdAt,
      ageDays: age(v.createdAt),
      protects: protects(v.version),
      controlBackups: {count: backups.length, ids: backups.map((b) => b.id)},
      materialPresent,
      destroyed: isDestroyed(v, materialPresent),
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
