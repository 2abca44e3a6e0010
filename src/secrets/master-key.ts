import {AsyncLocalStorage} from 'node:async_hooks';
import {randomBytes, scrypt as scryptCb, timingSafeEqual, type ScryptOptions} from 'node:crypto';
import {promises as fs} from 'node:fs';
import path from 'node:path';

import {UsageError, UserError} from '../errors.js';
import type {InstallDir} from '../state/install-dir.js';
import {acquireLock} from '../state/lock.js';
import {KEY_BYTES, keyCheckValue, readHeader, unwrap, wrap, type RandomSource, type WrappingKey} from './envelope.js';

/**
 * The master key (KEK) of an install: versioned, and the root of every other key.
 *
 * Callers use {@link KeyEncryptionService} (wrap, unwrap, rewrap) and never see key material, so
 * a remote provider (Vault transit, a cloud KMS) can implement it later without touching them.
 * Today's providers are local: a key file per version in secrets/master/ (the default), keys
 * handed in through DFORGE_MASTER_KEY, keys derived from a passphrase with scrypt, or key files in
 * a directory something outside dforge mounts (a CSI secrets-store driver, a Vault agent).
 *
 * The keyring state (versions, their check values, an in-flight rotation) lives in
 * secrets/master/keyring.json. It holds no key material.
 */

export const MASTER_KEY_ID = 'master';
export type MasterKeyProviderKind = 'file' | 'env' | 'passphrase' | 'mounted';

export interface KekVersion {
  readonly version: number;
  /**
   * pending: minted by a rotation that has not committed; retired: wraps nothing new. A retired
   * version without destroyedAt is decrypt-only: its material is kept while a control backup in
   * the catalog still needs it (src/keys/retention.ts). Keyrings written before destroyedAt existed
   * read the same way: a retired version whose material is gone is shown as destroyed.
   */
  readonly state: 'pending' | 'active' | 'retired';
  readonly createdAt: string;
  readonly retiredAt?: string;
  /** When dforge destroyed (or asked the operator to remove) the material of a retired version. */
  readonly destroyedAt?: string;
  /** Hex key check value; tells the right key from a wrong one without revealing either. */
  readonly keyCheck: string;
  /** Passphrase provider: the scrypt salt of this version (hex). */
  readonly salt?: string;
}

export interface KeyringState {
  readonly format: 1;
  readonly provider: MasterKeyProviderKind;
  readonly versions: readonly KekVersion[];
  /** Present while a master rotation is under way; a rerun resumes it. */
  readonly rotation?: {readonly from: number; readonly to: number; readonly startedAt: string};
}

/** What every caller of the master key uses. */
export interface KeyEncryptionService {
  readonly keyId: string;
  readonly state: KeyringState;
  activeVersion(): number;
  /** Wraps under the active version (or, mid-rotation, the version being rotated to). */
  wrap(plaintext: Buffer, context: string): Promise<Buffer>;
  unwrap(blob: Buffer, context: string, what: string): Promise<Buffer>;
  /** The version a blob is wrapped under, read from its header. */
  versionOf(blob: Buffer, what: string): number;
  /**
   * Runs `fn`, which wraps and makes the result durable, so that no master rotation commits in
   * between: under the shared keys lock, with the keyring re-read, so wrap() inside uses the
   * current write version. Nested calls, and calls under a rotation's exclusive lock, run directly.
   */
  withWrites<T>(command: string, fn: () => Promise<T>): Promise<T>;
}

/**
 * Which install's keys lock the current async call tree holds (shared through withWrites, or
 * exclusive through holdingKeysLock). Taking the shared lock again inside would wait behind a
 * rotation that waits for this very holder: a deadlock until the lock's timeout.
 */
const keysLockHeld = new AsyncLocalStorage<string>();

/** Marks `fn` as running under the install's exclusive keys lock, which the caller holds. */
export function holdingKeysLock<T>(dir: InstallDir, fn: () => Promise<T>): Promise<T> {
  return keysLockHeld.run(dir.root, fn);
}

/** Where a local provider gets the bytes of a version. */
export interface KeyMaterialSource {
  readonly kind: MasterKeyProviderKind;
  /** The material of `version`, or undefined if this source does not hold it. */
  material(version: KekVersion): Promise<Buffer | undefined>;
  /** Makes the material of a new version. */
  mint(version: number): Promise<{material: Buffer; salt?: string}>;
  /** Destroys a retired version where dforge owns the material; otherwise says what the operator must remove. */
  destroy(version: number): Promise<string | undefined>;
  /** What the operator does when this source lacks `version`, or hands out a different key for it. */
  missingStep(version: number): string;
  wrongStep(version: number): string;
}

export function masterDir(dir: InstallDir): string {
  return path.join(dir.secretsDir, 'master');
}

export function keyringFile(dir: InstallDir): string {
  return path.join(masterDir(dir), 'keyring.json');
}

export async function readKeyringState(dir: InstallDir): Promise<KeyringState | undefined> {
  try {
    return JSON.parse(await fs.readFile(keyringFile(dir), 'utf8')) as KeyringState;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new UserError(`cannot read ${keyringFile(dir)}: ${(err as Error).message}`, {
      nextSteps: ['Restore secrets/master/ from a backup of the install directory.'],
    });
  }
}

export async function writeKeyringState(dir: InstallDir, state: KeyringState): Promise<void> {
  await dir.writeSecret('master/keyring.json', `${JSON.stringify(state, null, 2)}\n`);
}

// ---------------------------------------------------------------------------------------------
// Local providers

/** Default: one 32-byte key file per version, secrets/master/v<N>.key, 0600. `random` mints the key. */
export function fileKeySource(dir: InstallDir, random: RandomSource = randomBytes): KeyMaterialSource {
  const file = (v: number): string => `master/v${v}.key`;
  return {
    kind: 'file',
    async material(v) {
      const target = dir.secretPath(file(v.version));
      const handle = await fs.open(target, 'r').catch((err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT') return undefined;
        throw err;
      });
      if (!handle) return undefined;
      try {
        // The mode of the file that was opened, not of whatever the name points to by now.
        await refuseLooseKeyFile(target, (await handle.stat()).mode, [masterDir(dir), dir.secretsDir]);
        return decodeKey(await handle.readFile(), target);
      } finally {
        await handle.close();
      }
    },
    async mint(version) {
      const material = random(KEY_BYTES);
      await dir.writeSecret(file(version), `${material.toString('base64')}\n`);
      return {material};
    },
    async destroy(version) {
      const target = dir.secretPath(file(version));
      // Overwrite before unlinking: on most file systems this removes the bytes, not only the name.
      const handle = await fs.open(target, 'r+').catch(() => undefined);
      if (handle) {
        await handle.write(randomBytes(64), 0);
        await handle.sync();
        await handle.close();
        await fs.rm(target, {force: true});
      }
      return undefined;
    },
    missingStep: (version) => `Restore secrets/${file(version)} from a backup of the install directory.`,
    wrongStep: (version) => `Restore secrets/${file(version)} from a backup.`,
  };
}

/**
 * Keys handed in by the environment (a secret manager, systemd credentials):
 * DFORGE_MASTER_KEY="<version>:<base64>[,<version>:<base64>...]"; a bare base64 value is version 1.
 * dforge cannot mint or destroy these: it says what the operator has to add or remove.
 */
export function envKeySource(env: NodeJS.ProcessEnv = process.env): KeyMaterialSource {
  const parse = (): Map<number, Buffer> => {
    const raw = env.DFORGE_MASTER_KEY?.trim();
    const keys = new Map<number, Buffer>();
    if (!raw) return keys;
    for (const entry of raw.split(',')) {
      const match = /^(?:(\d+):)?([A-Za-z0-9+/=_-]+)$/.exec(entry.trim());
      if (!match) throw badEnvKey();
      keys.set(Number(match[1] ?? 1), decodeKey(Buffer.from(match[2]!), 'DFORGE_MASTER_KEY'));
    }
    return keys;
  };
  return {
    kind: 'env',
    async material(v) {
      return parse().get(v.version);
    },
    async mint(version) {
      const material = parse().get(version);
      if (!material) {
        throw new UserError(`DFORGE_MASTER_KEY holds no key for master version ${version}`, {
          nextSteps: [
            `Generate a key (openssl rand -base64 32) in your secret manager and prepend "${version}:<key>," to DFORGE_MASTER_KEY, keeping the current entry, then re-run.`,
          ],
        });
      }
      return {material};
    },
    async destroy(version) {
      return parse().has(version) ? `remove the "${version}:" entry from DFORGE_MASTER_KEY` : undefined;
    },
    missingStep: (version) => `Add "${version}:<key>" to DFORGE_MASTER_KEY.`,
    wrongStep: () => 'Check DFORGE_MASTER_KEY.',
  };
}

const SCRYPT: ScryptOptions = {N: 2 ** 17, r: 8, p: 1, maxmem: 256 * 1024 * 1024};

/**
 * Keys derived from a passphrase with scrypt (N=2^17, r=8, p=1) and a per-version salt.
 * DFORGE_MASTER_PASSPHRASE is the current passphrase; during a rotation,
 * DFORGE_MASTER_PASSPHRASE_NEW (if set) is the passphrase for the new version. Each version's
 * key check value tells which passphrase belongs to it.
 */
export function passphraseKeySource(passphrases: {current?: string; next?: string}): KeyMaterialSource {
  const cache = new Map<string, Buffer>();
  const derive = async (passphrase: string, salt: string): Promise<Buffer> => {
    const cacheKey = `${salt}:${passphrase}`;
    const hit = cache.get(cacheKey);
    if (hit) return hit;
    const key = await new Promise<Buffer>((resolve, reject) =>
      scryptCb(passphrase.normalize('NFC'), Buffer.from(salt, 'hex'), KEY_BYTES, SCRYPT, (err, k) => (err ? reject(err) : resolve(k))),
    );
    cache.set(cacheKey, key);
    return key;
  };
  const candidates = (): string[] => [passphrases.next, passphrases.current].filter((p): p is string => typeof p === 'string' && p.length > 0);
  return {
    kind: 'passphrase',
    async material(v) {
      if (!v.salt) return undefined;
      for (const passphrase of candidates()) {
        const key = await derive(passphrase, v.salt);
        if (timingSafeEqual(keyCheckValue(key), Buffer.from(v.keyCheck, 'hex'))) return key;
      }
      return undefined;
    },
    async mint() {
      const passphrase = passphrases.next ?? passphrases.current;
      if (!passphrase) {
        throw new UserError('the master key is passphrase-based, but no passphrase was given', {
          nextSteps: ['Set DFORGE_MASTER_PASSPHRASE in the environment (never on the command line), or run interactively to be prompted.'],
        });
      }
      if (passphrase.length < 12) {
        throw new UserError('the master passphrase is shorter than 12 characters', {nextSteps: ['Choose a longer passphrase (a few random words work well).']});
      }
      const salt = randomBytes(16).toString('hex');
      return {material: await derive(passphrase, salt), salt};
    },
    async destroy() {
      return undefined;
    },
    missingStep: () => 'Set DFORGE_MASTER_PASSPHRASE to the passphrase of that version.',
    wrongStep: () => 'Check DFORGE_MASTER_PASSPHRASE.',
  };
}

/**
 * Key files in a directory that something outside dforge mounts and owns: a CSI secrets-store
 * driver, a Vault agent or External Secrets writing a Kubernetes Secret volume. Each version is
 * `<keyDir>/v<N>.key`, a base64 32-byte key as the file provider writes it. Like the env provider,
 * dforge cannot mint or destroy these: the key that opens everything stays in the operator's key
 * store, and dforge says what has to be added to it or removed from it.
 */
export function mountedKeySource(keyDir: string): KeyMaterialSource {
  const file = (v: number): string => path.join(keyDir, `v${v}.key`);
  const read = async (version: number): Promise<Buffer | undefined> => {
    // The directory is the operator's: a missing or unreadable one is a broken mount, not a
    // missing version, and the error says so rather than "no key for version N".
    await fs.readdir(keyDir).catch((err: NodeJS.ErrnoException) => {
      throw new UserError(
        err.code === 'ENOENT' ? `the mounted master key directory ${keyDir} does not exist` : `cannot read the mounted master key directory ${keyDir}: ${err.code ?? err.message}`,
        {
          nextSteps: [
            `Mount the key store at ${keyDir} (keys.mountedKeyDir in dforge.yaml) so that the user dforge runs as can read it, with one v<N>.key file per master key version.`,
          ],
          data: {keyDir},
        },
      );
    });
    const target = file(version);
    const handle = await fs.open(target, 'r').catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined;
      throw new UserError(`cannot read the master key ${target}: ${err.code ?? err.message}`, {
        nextSteps: [`Make ${target} readable by the user dforge runs as, and by no one else.`],
        data: {keyDir},
      });
    });
    if (!handle) return undefined;
    try {
      // The operator's store writes these files, and a read-only volume takes no chmod: the mode is set where the store is.
      await refuseLooseKeyFile(target, (await handle.stat()).mode, [keyDir], `If the key store rewrites ${keyDir}, set the mode there: 0400 files (0440 on a Kubernetes volume, for the pod's fsGroup: a secret volume's defaultMode, or the CSI provider's file permission) in a directory only dforge's user can open.`);
      return decodeKey(await handle.readFile(), target);
    } finally {
      await handle.close();
    }
  };
  const add = (version: number): string =>
    `Add ${file(version)} to the key store mounted at ${keyDir}: a new key (openssl rand -base64 32) as the file's only content, readable by dforge alone (0400, or 0440 for a Kubernetes volume's fsGroup). Keep the files already there.`;
  return {
    kind: 'mounted',
    material: async (v) => read(v.version),
    async mint(version) {
      const material = await read(version);
      if (!material) {
        throw new UserError(`the mounted master key directory ${keyDir} holds no key for master version ${version}`, {
          nextSteps: [add(version), 'Then re-run.'],
          data: {keyDir, keyVersion: version},
        });
      }
      return {material};
    },
    async destroy(version) {
      return (await read(version)) ? `remove ${file(version)} from the key store mounted at ${keyDir}` : undefined;
    },
    missingStep: add,
    wrongStep: (version) => `Check ${file(version)}: the key store mounted at ${keyDir} hands out a different key for this version than the one it held when the install was set up.`,
  };
}

/**
 * A master key file others can read (or a directory on its path others can enter) is refused, as
 * ssh refuses such a private key: using it would hide that every secret of the install may
 * already be copied. dforge writes them 0600 in 0700 directories, so a loose mode came from
 * outside (a copy, an archive, a chmod); fixing it is the operator's decision, so nothing is
 * changed here.
 */
async function refuseLooseKeyFile(file: string, mode: number, dirs: readonly string[], sourceFix?: string): Promise<void> {
  // The Kubernetes backup job reads the key from the operator's Secret, which the kubelet projects
  // read-only: 0440 for the pod's fsGroup, the key a link into the `..data` link's directory. Only
  // that exact shape, in a directory nobody else can write, may be group-readable; a copy of a
  // projection (kubectl cp, tar) with 0644 files, or a `..data` link planted in a loose directory,
  // is still refused.
  if (await isKubeletProjection(file)) {
    if ((mode & 0o037) === 0) return;
  }
  const loose: Array<[string, number, string]> = [];
  if ((mode & 0o077) !== 0) loose.push([file, mode, `chmod 600 ${file}`]);
  for (const d of dirs) {
    const st = await fs.stat(d);
    if ((st.mode & 0o077) !== 0) loose.push([d, st.mode, `chmod 700 ${d}`]);
  }
  if (loose.length === 0) return;
  const octal = (m: number): string => (m & 0o777).toString(8).padStart(4, '0');
  throw new UserError(`refusing to use the master key ${file}: ${loose.map(([p, m]) => `${p} is open to group or others (mode ${octal(m)})`).join('; ')}`, {
    nextSteps: [
      `Run: ${loose.map(([, , fix]) => fix).join(' && ')}`,
      ...(sourceFix ? [sourceFix] : []),
      'If anyone else could log in to this host meanwhile, consider the key exposed: after fixing the mode, rotate it with: dforge keys rotate --master',
    ],
    data: {file, loose: loose.map(([p, m]) => ({path: p, mode: octal(m)}))},
  });
}

/** `<dir>/vN.key -> ..data/vN.key`, `..data` a link, and `<dir>` writable by its owner only, root's or ours. */
async function isKubeletProjection(file: string): Promise<boolean> {
  const dir = path.dirname(file);
  const [link, data, st] = await Promise.all([
    fs.readlink(file).catch(() => undefined),
    fs.lstat(path.join(dir, '..data')).catch(() => undefined),
    fs.stat(dir),
  ]);
  const owner = st.uid === 0 || st.uid === process.getuid?.();
  return link === path.join('..data', path.basename(file)) && data?.isSymbolicLink() === true && owner && (st.mode & 0o022) === 0;
}

function decodeKey(raw: Buffer, where: string): Buffer {
  const key = Buffer.from(raw.toString('utf8').trim(), 'base64');
  if (key.length !== KEY_BYTES) throw where === 'DFORGE_MASTER_KEY' ? badEnvKey() : new UserError(`${where} does not hold a 32-byte base64 key`, {nextSteps: ['Restore the file from a backup of the install directory.']});
  return key;
}

function badEnvKey(): UserError {
  return new UserError('DFORGE_MASTER_KEY is not in the form "<version>:<base64 of 32 bytes>[,...]"', {
    nextSteps: ['Generate a key with: openssl rand -base64 32, and set DFORGE_MASTER_KEY to "1:<that key>".'],
  });
}

// ---------------------------------------------------------------------------------------------
// The local keyring

export class LocalMasterKeyring implements KeyEncryptionService {
  readonly keyId = MASTER_KEY_ID;
  private readonly materials = new Map<number, Buffer>();

  private constructor(
    private readonly dir: InstallDir,
    private current: KeyringState,
    private readonly source: KeyMaterialSource,
  ) {}

  get state(): KeyringState {
    return this.current;
  }

  /**
   * Under the shared keys lock, which a master rotation takes exclusively: the keyring is re-read
   * first (a rotation may have committed since it was opened), and the lock is held until `fn` has
   * made what it wrapped durable, where the rotation's re-wrap finds it.
   */
  async withWrites<T>(command: string, fn: () => Promise<T>): Promise<T> {
    if (keysLockHeld.getStore() === this.dir.root) return fn();
    const lock = await acquireLock(this.dir.locksDir, 'keys', {command, mode: 'shared'});
    try {
      const state = await readKeyringState(this.dir);
      if (state) this.current = state;
      return await keysLockHeld.run(this.dir.root, fn);
    } finally {
      await lock.release();
    }
  }

  /** Opens an existing keyring; fails with next steps if there is none or the provider differs. */
  static async open(dir: InstallDir, source: KeyMaterialSource): Promise<LocalMasterKeyring> {
    const state = await readKeyringState(dir);
    if (!state) {
      throw new UserError(`no master key in ${masterDir(dir)}`, {
        nextSteps: ['Create the keys of this install with: dforge keys init'],
      });
    }
    if (state.provider !== source.kind) {
      throw new UserError(`this install's master key uses the ${state.provider} provider, but ${source.kind} was configured`, {
        nextSteps: [`Set keys.masterKeyProvider to "${state.provider}" in dforge.yaml.`],
      });
    }
    return new LocalMasterKeyring(dir, state, source);
  }

  /** Creates version 1 if the install has no master key yet. Idempotent. */
  static async init(dir: InstallDir, source: KeyMaterialSource, now: Date): Promise<{keyring: LocalMasterKeyring; created: boolean}> {
    const existing = await readKeyringState(dir);
    if (existing) return {keyring: await LocalMasterKeyring.open(dir, source), created: false};
    const {material, salt} = await source.mint(1);
    const state: KeyringState = {
      format: 1,
      provider: source.kind,
      versions: [{version: 1, state: 'active', createdAt: now.toISOString(), keyCheck: keyCheckValue(material).toString('hex'), ...(salt ? {salt} : {})}],
    };
    await writeKeyringState(dir, state);
    return {keyring: new LocalMasterKeyring(dir, state, source), created: true};
  }

  activeVersion(): number {
    const active = this.state.versions.find((v) => v.state === 'active');
    if (!active) throw new UserError('the master keyring has no active version', {nextSteps: ['Restore secrets/master/ from a backup of the install directory.']});
    return active.version;
  }

  /** The version new wraps go to: the rotation target while a rotation is in flight. */
  writeVersion(): number {
    return this.state.rotation?.to ?? this.activeVersion();
  }

  async wrap(plaintext: Buffer, context: string): Promise<Buffer> {
    return wrap(await this.key(this.writeVersion()), plaintext, context);
  }

  async unwrap(blob: Buffer, context: string, what: string): Promise<Buffer> {
    const header = readHeader(blob, what);
    if (header.keyId !== MASTER_KEY_ID) {
      throw new UserError(`${what} is wrapped by key "${header.keyId}", not by the master key`, {nextSteps: ['This is not a master-key blob; check which file or record was read.']});
    }
    return unwrap(await this.key(header.keyVersion, what), blob, context, what);
  }

  versionOf(blob: Buffer, what: string): number {
    return readHeader(blob, what).keyVersion;
  }

  /** The material of a version; a clear error when the provider does not hold it. */
  async key(version: number, what?: string): Promise<WrappingKey> {
    let material = this.materials.get(version);
    if (!material) {
      // A rotation that started after this keyring was opened may have re-wrapped the item under
      // a version this copy of the state has not seen: look it up on disk. The state itself is
      // not replaced, so the write version changes only where a writer reloads under the lock.
      const record = this.state.versions.find((v) => v.version === version) ?? (await readKeyringState(this.dir))?.versions.find((v) => v.version === version);
      const loaded = record ? await this.source.material(record) : undefined;
      if (!record || !loaded) {
        const retired = record?.state === 'retired';
        const why = retired ? (record.destroyedAt ? 'was retired and destroyed' : 'was retired, and its material is gone') : this.source.kind === 'passphrase' ? 'the given passphrase does not open (wrong passphrase?)' : `the ${this.source.kind} provider does not hold`;
        throw new UserError(`${what ?? 'a secret'} needs master key version ${version}, which ${why}`, {
          nextSteps: retired
            ? record.destroyedAt
              ? ['Restore this item from a backup taken after the last master rotation.']
              : ['Restore this item from a backup taken after the last master rotation.', `If the material of version ${version} was lost rather than destroyed: ${this.source.missingStep(version)}`]
            : [this.source.missingStep(version)],
          data: {keyVersion: version},
        });
      }
      if (!keyCheckValue(loaded).equals(Buffer.from(record.keyCheck, 'hex'))) {
        throw new UserError(`wrong master key for version ${version}: the ${this.source.kind} provider holds a different key than the one this install was set up with`, {
          nextSteps: [this.source.wrongStep(version)],
          data: {keyVersion: version},
        });
      }
      material = loaded;
      this.materials.set(version, material);
    }
    return {id: MASTER_KEY_ID, version, material};
  }

  /** Whether the provider still holds material for a version (retired versions should not). */
  async holds(version: KekVersion): Promise<boolean> {
    return (await this.source.material(version)) !== undefined;
  }

  get provider(): KeyMaterialSource {
    return this.source;
  }
}

/** The settings a provider is built from: keys in dforge.yaml. */
export interface MasterKeySettings {
  readonly masterKeyProvider: MasterKeyProviderKind;
  /** The mounted provider's directory (the config schema requires it for that provider). */
  readonly mountedKeyDir?: string;
}

/** Builds the configured provider. Passphrases come from the environment (or a prompt in src/ui). */
export function keySourceFor(settings: MasterKeySettings, dir: InstallDir, env: NodeJS.ProcessEnv = process.env): KeyMaterialSource {
  switch (settings.masterKeyProvider) {
    case 'file':
      return fileKeySource(dir);
    case 'env':
      return envKeySource(env);
    case 'passphrase':
      return passphraseKeySource({current: env.DFORGE_MASTER_PASSPHRASE, next: env.DFORGE_MASTER_PASSPHRASE_NEW});
    case 'mounted':
      if (!settings.mountedKeyDir) {
        throw new UsageError('keys.masterKeyProvider is "mounted", but keys.mountedKeyDir is not set', {
          nextSteps: ['Set keys.mountedKeyDir in dforge.yaml to the absolute path where the key store is mounted, e.g. /var/run/dforge-kms.'],
        });
      }
      return mountedKeySource(settings.mountedKeyDir);
  }
}
