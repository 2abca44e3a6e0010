import {randomBytes} from 'node:crypto';
import {promises as fs} from 'node:fs';

import {UserError} from '../errors.js';
import {crashPoint} from '../state/crash-point.js';
import type {InstallDir} from '../state/install-dir.js';
import {KEY_BYTES, type WrappingKey} from './envelope.js';
import type {KeyEncryptionService} from './master-key.js';
import type {WrappedKeySet} from './wrapped-key-set.js';

/**
 * Data keys (DEKs): one versioned key per owner (a tenant), wrapped by the master key. Tenants and
 * backups use this API; the newest version wraps new backup file keys, older versions stay to
 * open older backups, and shredding destroys every version.
 */

export interface DataKeyRecord {
  readonly owner: string;
  readonly version: number;
  /** active: wraps new data; decrypt-only: kept to open data made before a rotation. */
  readonly state: 'active' | 'decrypt-only';
  readonly createdAt: string;
  /** The DEK wrapped by the master key. */
  readonly wrapped: Buffer;
}

/** Storage of wrapped DEKs. Implementations make `replace` one atomic step. */
export interface DataKeyStore {
  list(owner?: string): Promise<DataKeyRecord[]>;
  /** Replaces the given records (matched by owner and version) and adds new ones, atomically. */
  replace(records: readonly DataKeyRecord[]): Promise<void>;
  /** Removes every version of an owner's key; returns how many were removed. */
  removeOwner(owner: string): Promise<number>;
  /** Removes the given decrypt-only versions of an owner's key (never the active one); returns the versions removed. */
  removeVersions(owner: string, versions: readonly number[]): Promise<number[]>;
}

export const dataKeyId = (owner: string): string => `dek/${owner}`;
const context = (owner: string, version: number): string => `dek:${owner}:v${version}`;

export class DataKeys {
  constructor(
    private readonly store: DataKeyStore,
    private readonly kek: KeyEncryptionService,
    private readonly clock: () => Date = () => new Date(),
  ) {}

  /** Creates version 1 for a new owner; returns the existing newest version if there is one. */
  async create(owner: string): Promise<WrappingKey> {
    const existing = await this.store.list(owner);
    if (existing.length > 0) return this.current(owner);
    return this.addVersion(owner, 1, []);
  }

  /** Adds a new active version; the previous ones become decrypt-only. */
  async rotate(owner: string): Promise<WrappingKey> {
    const existing = await this.store.list(owner);
    if (existing.length === 0) throw noKey(owner);
    const next = Math.max(...existing.map((r) => r.version)) + 1;
    return this.addVersion(owner, next, existing.map((r) => ({...r, state: 'decrypt-only' as const})));
  }

  /** The version new data is encrypted under. */
  async current(owner: string): Promise<WrappingKey> {
    const records = await this.store.list(owner);
    const active = records.find((r) => r.state === 'active');
    if (!active) throw noKey(owner);
    return this.open(active);
  }

  async get(owner: string, version: number): Promise<WrappingKey> {
    const record = (await this.store.list(owner)).find((r) => r.version === version);
    if (!record) {
      throw new UserError(`data key ${dataKeyId(owner)} v${version} does not exist${(await this.store.list(owner)).length === 0 ? ' (the owner has no keys: it may have been shredded)' : ''}`, {
        nextSteps: ['Data encrypted under a shredded or unknown key cannot be opened; use a backup made with an existing key version.'],
        data: {keyId: dataKeyId(owner), keyVersion: version},
      });
    }
    return this.open(record);
  }

  /** Crypto-shredding: destroys every version. Data encrypted under them is unreadable from now on. */
  async shred(owner: string): Promise<number> {
    return this.store.removeOwner(owner);
  }

  /** The versions of an owner's key that exist, ascending. */
  async versions(owner: string): Promise<number[]> {
    return (await this.store.list(owner)).map((r) => r.version).sort((a, b) => a - b);
  }

  /**
   * Crypto-shredding of part of a key's history: destroys the given versions, which must all be
   * decrypt-only. Data encrypted under them is unreadable from now on; the active version stays.
   */
  async destroyVersions(owner: string, versions: readonly number[]): Promise<number[]> {
    const active = (await this.store.list(owner)).find((r) => r.state === 'active');
    if (active && versions.includes(active.version)) throw new UserError(`data key ${dataKeyId(owner)} v${active.version} is the active version: it is never destroyed on its own`, {nextSteps: ['Rotate the key first, or shred the whole key.']});
    return this.store.removeVersions(owner, versions);
  }

  private async addVersion(owner: string, version: number, others: DataKeyRecord[]): Promise<WrappingKey> {
    const material = randomBytes(KEY_BYTES);
    // Wrap and store under the shared keys lock: a master rotation that committed between the
    // two would destroy the version this key is wrapped under.
    await this.kek.withWrites(`data key ${dataKeyId(owner)}`, async () => {
      const record: DataKeyRecord = {owner, version, state: 'active', createdAt: this.clock().toISOString(), wrapped: await this.kek.wrap(material, context(owner, version))};
      await this.store.replace([...others, record]);
    });
    return {id: dataKeyId(owner), version, material};
  }

  private async open(record: DataKeyRecord): Promise<WrappingKey> {
    const material = await this.kek.unwrap(record.wrapped, context(record.owner, record.version), `data key ${dataKeyId(record.owner)} v${record.version}`);
    return {id: dataKeyId(record.owner), version: record.version, material};
  }

  /** This store's keys as one set for master rotation. */
  asWrappedKeySet(): WrappedKeySet {
    return {
      id: 'dataKeys',
      label: 'data keys',
      verifyAll: async () => {
        const records = await this.store.list();
        for (const r of records) await this.open(r);
        return records.length;
      },
      countByVersion: async () => {
        const counts = new Map<number, number>();
        for (const r of await this.store.list()) {
          const v = this.kek.versionOf(r.wrapped, `data key ${dataKeyId(r.owner)} v${r.version}`);
          counts.set(v, (counts.get(v) ?? 0) + 1);
        }
        return counts;
      },
      rewrapAll: (toVersion) => this.rewrapAll(toVersion),
    };
  }

  /** Re-wraps every record not yet under `toVersion`, in one atomic store update. */
  async rewrapAll(toVersion: number): Promise<number> {
    const stale = (await this.store.list()).filter((r) => this.kek.versionOf(r.wrapped, `data key ${dataKeyId(r.owner)} v${r.version}`) !== toVersion);
    const updated: DataKeyRecord[] = [];
    for (const r of stale) {
      const material = await this.kek.unwrap(r.wrapped, context(r.owner, r.version), `data key ${dataKeyId(r.owner)} v${r.version}`);
      updated.push({...r, wrapped: await this.kek.wrap(material, context(r.owner, r.version))});
    }
    if (updated.length > 0) {
      await this.store.replace(updated);
      crashPoint('master.rewrap.data-keys');
    }
    return updated.length;
  }
}

function noKey(owner: string): UserError {
  return new UserError(`no data key for ${owner}`, {nextSteps: [`Create it first (tenant create makes a tenant's data key).`], data: {keyId: dataKeyId(owner)}});
}

interface StoredRecord {
  owner: string;
  version: number;
  state: DataKeyRecord['state'];
  createdAt: string;
  wrapped: string;
}

/**
 * DEKs in one sealed-directory file, secrets/data-keys.json: a single atomic write updates any
 * number of records, so re-wrapping every DEK is one crash-safe step. Callers serialise writers
 * with the install's keys lock.
 */
export class FileDataKeyStore implements DataKeyStore {
  private static readonly NAME = 'data-keys.json';
  /** Parsed records, valid while the file's identity and mtime are unchanged. */
  private cache: {stamp: string; records: DataKeyRecord[]} | undefined;

  constructor(private readonly dir: InstallDir) {}

  async list(owner?: string): Promise<DataKeyRecord[]> {
    const all = await this.readAll();
    return (owner === undefined ? all : all.filter((r) => r.owner === owner)).sort((a, b) => a.owner.localeCompare(b.owner) || a.version - b.version);
  }

  async replace(records: readonly DataKeyRecord[]): Promise<void> {
    const byId = new Map((await this.readAll()).map((r) => [`${r.owner}\u0000${r.version}`, r]));
    for (const r of records) byId.set(`${r.owner}\u0000${r.version}`, r);
    await this.writeAll([...byId.values()]);
  }

  async removeOwner(owner: string): Promise<number> {
    const all = await this.readAll();
    const kept = all.filter((r) => r.owner !== owner);
    await this.writeAll(kept);
    return all.length - kept.length;
  }

  async removeVersions(owner: string, versions: readonly number[]): Promise<number[]> {
    const all = await this.readAll();
    const gone = (r: DataKeyRecord): boolean => r.owner === owner && r.state === 'decrypt-only' && versions.includes(r.version);
    await this.writeAll(all.filter((r) => !gone(r)));
    return all.filter(gone).map((r) => r.version).sort((a, b) => a - b);
  }

  private async readAll(): Promise<DataKeyRecord[]> {
    const file = this.dir.secretPath(FileDataKeyStore.NAME);
    let stamp: string;
    try {
      const st = await fs.stat(file, {bigint: true});
      // Every write is a rename of a new file, so a new inode (or mtime) means new content.
      stamp = `${st.ino}:${st.mtimeNs}:${st.size}`;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
    if (this.cache?.stamp !== stamp) {
      const parsed = JSON.parse(await fs.readFile(file, 'utf8')) as {format: 1; keys: StoredRecord[]};
      this.cache = {stamp, records: parsed.keys.map((k) => ({...k, wrapped: Buffer.from(k.wrapped, 'base64')}))};
    }
    return [...this.cache.records];
  }

  private async writeAll(records: DataKeyRecord[]): Promise<void> {
    const keys: StoredRecord[] = records.map((r) => ({owner: r.owner, version: r.version, state: r.state, createdAt: r.createdAt, wrapped: r.wrapped.toString('base64')}));
    await this.dir.writeSecret(FileDataKeyStore.NAME, `${JSON.stringify({format: 1, keys}, null, 1)}\n`);
  }
}

