import {promises as fs} from 'node:fs';
import path from 'node:path';

import {UserError} from '../errors.js';
import {crashPoint} from '../state/crash-point.js';
import type {InstallDir} from '../state/install-dir.js';
import type {KeyEncryptionService} from './master-key.js';
import type {WrappedKeySet} from './wrapped-key-set.js';

const SUFFIX = '.sealed';

/**
 * Secrets at rest in the install directory: secrets/<name>.sealed, each wrapped by the master key
 * with its own name as the AEAD context, so a sealed file copied over another one fails to open.
 */
export class SealedStore {
  constructor(
    private readonly dir: InstallDir,
    private readonly kek: KeyEncryptionService,
  ) {}

  private file(name: string): string {
    return this.dir.secretPath(`${name}${SUFFIX}`);
  }

  /**
   * Wraps and writes a secret. The caller holds the keys lock: shared through
   * kek.withWrites (so a master rotation cannot retire the version in
   * between), or exclusive (keys init, JWT and master rotation). Taking it here would nest.
   */
  async put(name: string, plaintext: string | Buffer): Promise<void> {
    const blob = await this.kek.wrap(Buffer.from(plaintext), sealedSecretContext(name));
    await this.dir.writeSecret(`${name}${SUFFIX}`, blob);
  }

  async get(name: string): Promise<Buffer> {
    return this.kek.unwrap(await this.read(name), sealedSecretContext(name), `sealed secret ${name}`);
  }

  async has(name: string): Promise<boolean> {
    return fs.stat(this.file(name)).then(
      () => true,
      () => false,
    );
  }

  /** The master version a sealed secret is wrapped under. */
  async versionOf(name: string): Promise<number> {
    return this.kek.versionOf(await this.read(name), `sealed secret ${name}`);
  }

  /** Re-wraps one secret under the current write version; false if it already was. */
  async rewrap(name: string, toVersion: number): Promise<boolean> {
    if ((await this.versionOf(name)) === toVersion) return false;
    await this.put(name, await this.get(name));
    return true;
  }

  async remove(name: string): Promise<void> {
    await fs.rm(this.file(name), {force: true});
  }

  /** Every sealed secret's name, sorted. */
  async list(): Promise<string[]> {
    const names: string[] = [];
    const walk = async (dir: string): Promise<void> => {
      const entries = await fs.readdir(dir, {withFileTypes: true}).catch(() => []);
      for (const entry of entries) {
        const full = path.join(dir, entry.name);
        if (entry.isDirectory()) await walk(full);
        else if (entry.name.endsWith(SUFFIX) && !entry.name.startsWith('.')) names.push(path.relative(this.dir.secretsDir, full).slice(0, -SUFFIX.length));
      }
    };
    await walk(this.dir.secretsDir);
    return names.sort();
  }

  private async read(name: string): Promise<Buffer> {
    try {
      return await fs.readFile(this.file(name));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      throw new UserError(`no sealed secret ${name} in ${this.dir.secretsDir}`, {
        nextSteps: ['Restore the install directory from a backup, or re-create the secret with the command that made it.'],
      });
    }
  }
}

/** The AEAD context of secrets/<name>.sealed (exported for the test vectors, docs/test-vectors/). */
export function sealedSecretContext(name: string): string {
  return `sealed:${name}`;
}

/** The sealed files of an install, as one set for master rotation (each file is replaced atomically). */
export function sealedSecretSet(store: SealedStore): WrappedKeySet {
  return {
    id: 'sealedSecrets',
    label: 'sealed secrets in secrets/',
    async verifyAll() {
      const names = await store.list();
      for (const name of names) await store.get(name);
      return names.length;
    },
    async countByVersion() {
      const counts = new Map<number, number>();
      for (const name of await store.list()) {
        const v = await store.versionOf(name);
        counts.set(v, (counts.get(v) ?? 0) + 1);
      }
      return counts;
    },
    async rewrapAll(toVersion) {
      let changed = 0;
      for (const name of await store.list()) {
        if (!(await store.rewrap(name, toVersion))) continue;
        changed++;
        crashPoint('master.rewrap.sealed-file');
      }
      return changed;
    },
  };
}
