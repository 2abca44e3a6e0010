import {randomBytes, sign, verify, createPrivateKey, createPublicKey} from 'node:crypto';
import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {afterAll, afterEach, beforeAll, describe, expect, it} from 'vitest';

import {UserError, VerificationError} from '../../src/errors.js';
import {initKeys} from '../../src/keys/init.js';
import {openKeyServices, type KeyServices} from '../../src/keys/context.js';
import {jwksOf, jwtPrivateKeyName, pruneJwtKeys, readJwtKeys, rotateJwtSigningKey} from '../../src/keys/jwt.js';
import {rotateMasterKey} from '../../src/keys/rotate-master.js';
import {readKeyringState} from '../../src/secrets/master-key.js';
import type {WrappedKeySet} from '../../src/secrets/wrapped-key-set.js';
import type {InstallDir} from '../../src/state/install-dir.js';
import {runCli} from '../helpers/cli.js';
import {crashAtEveryStep} from '../helpers/crash-points.js';
import {copyInstall, tempInstall} from '../helpers/install-fixture.js';

const installs: Array<{cleanup(): Promise<void>}> = [];
afterEach(async () => {
  for (const i of installs.splice(0)) await i.cleanup();
});
async function install(provider?: 'file' | 'env' | 'passphrase'): Promise<InstallDir> {
  const dir = await tempInstall({masterKeyProvider: provider});
  installs.push(dir);
  return dir;
}

/** Every DEK and sealed secret of an install, opened from disk by a fresh set of services. */
async function openEverything(dir: InstallDir, env?: NodeJS.ProcessEnv): Promise<Map<string, string>> {
  const services = await openKeyServices(dir, {env});
  const opened = new Map<string, string>();
  for (const r of await services.dataKeyStore.list()) opened.set(`dek ${r.owner} v${r.version}`, (await services.dataKeys.get(r.owner, r.version)).material.toString('hex'));
  for (const name of await services.sealed.list()) opened.set(`sealed ${name}`, (await services.sealed.get(name)).toString('hex'));
  return opened;
}

async function seed(services: KeyServices, dataKeys: number, sealedSecrets: number): Promise<void> {
  for (let i = 0; i < dataKeys; i++) await services.dataKeys.create(`tenant-${String(i).padStart(4, '0')}`);
  for (let i = 0; i < sealedSecrets; i++) await services.sealed.put(`fixture/secret-${i}`, randomBytes(48).toString('base64'));
}

describe('master key providers', () => {
  it('file (default): seals, rotates, and destroys the retired key file', async () => {
    const dir = await install('file');
    await initKeys(dir, {command: 'test'});
    const services = await openKeyServices(dir);
    await services.sealed.put('app/token', 'correct horse');
    const before = await openEverything(dir);
    const result = await rotateMasterKey(dir, {command: 'test'});
    expect(result).toMatchObject({from: 1, to: 2, resumed: false, destroyed: [1], operatorActions: []});
    expect(await openEverything(dir)).toEqual(before);
    await expect(fs.stat(dir.secretPath('master/v1.key'))).rejects.toThrow();
    expect((await fs.stat(dir.secretPath('master/v2.key'))).mode & 0o777).toBe(0o600);
  });

  it('env: takes versions from DFORGE_MASTER_KEY, says how to add the next one, and spots a wrong key', async () => {
    const dir = await install('env');
    const k1 = randomBytes(32).toString('base64');
    const k2 = randomBytes(32).toString('base64');
    await initKeys(dir, {command: 'test', env: {DFORGE_MASTER_KEY: k1}});
    await (await openKeyServices(dir, {env: {DFORGE_MASTER_KEY: k1}})).sealed.put('app/token', 'x');
    await expect(fs.readdir(path.join(dir.secretsDir, 'master'))).resolves.toEqual(['keyring.json']);

    const noNext = await rotateMasterKey(dir, {command: 'test', env: {DFORGE_MASTER_KEY: k1}}).catch((e: unknown) => e);
    expect(noNext).toBeInstanceOf(UserError);
    expect((noNext as UserError).nextSteps[0]).toContain('prepend "2:<key>," to DFORGE_MASTER_KEY');

    const wrong = await openEverything(dir, {DFORGE_MASTER_KEY: randomBytes(32).toString('base64')}).catch((e: unknown) => e);
    expect((wrong as Error).message).toMatch(/^wrong master key for version 1/);

    const both = {DFORGE_MASTER_KEY: `2:${k2},1:${k1}`};
    const result = await rotateMasterKey(dir, {command: 'test', env: both});
    expect(result.operatorActions).toEqual(['remove the "1:" entry from DFORGE_MASTER_KEY']);
    expect([...(await openEverything(dir, {DFORGE_MASTER_KEY: `2:${k2}`})).keys()]).toContain('sealed app/token');
  });

  it('passphrase: scrypt-derived versions; a new passphrase at rotation; a wrong one is named as such', async () => {
    const dir = await install('passphrase');
    const old = {DFORGE_MASTER_PASSPHRASE: 'old passphrase with some length'};
    await initKeys(dir, {command: 'test', env: old});
    await (await openKeyServices(dir, {env: old})).sealed.put('app/token', 'x');
    const state = await readKeyringState(dir);
    expect(state?.versions[0]?.salt).toMatch(/^[a-f0-9]{32}$/);

    const wrong = await openEverything(dir, {DFORGE_MASTER_PASSPHRASE: 'not the passphrase at all'}).catch((e: unknown) => e);
    expect((wrong as Error).message).toMatch(/needs master key version 1, which the given passphrase does not open \(wrong passphrase\?\)/);

    await rotateMasterKey(dir, {command: 'test', env: {...old, DFORGE_MASTER_PASSPHRASE_NEW: 'the brand new passphrase'}});
    expect([...(await openEverything(dir, {DFORGE_MASTER_PASSPHRASE: 'the brand new passphrase'})).keys()]).toContain('sealed app/token');
  });
});

describe('data key versions', () => {
  it('destroyVersions removes decrypt-only versions only: the active one is refused, and the others still open', async () => {
    const dir = await install('file');
    await initKeys(dir, {command: 'test'});
    const {dataKeys} = await openKeyServices(dir);
    await dataKeys.create('acme');
    await dataKeys.rotate('acme');
    const v3 = await dataKeys.rotate('acme');
    await expect(dataKeys.destroyVersions('acme', [1, 3])).rejects.toThrow(/v3 is the active version/);
    expect(await dataKeys.destroyVersions('acme', [1])).toEqual([1]);
    await expect(dataKeys.get('acme', 1)).rejects.toThrow(/v1 does not exist/);
    expect((await dataKeys.get('acme', 2)).version).toBe(2);
    expect((await dataKeys.current('acme')).material).toEqual(v3.material);
  });
});

describe('failure modes, through the CLI', () => {
  it('tampering with a sealed secret exits 6 before the rotation changes anything', async () => {
    const dir = await install();
    await initKeys(dir, {command: 'test'});
    await (await openKeyServices(dir)).sealed.put('app/token', 'x');
    const file = dir.secretPath('app/token.sealed');
    const bytes = await fs.readFile(file);
    bytes[bytes.length - 3]! ^= 0x10;
    await fs.writeFile(file, bytes);
    const keyringBefore = await fs.readFile(dir.secretPath('master/keyring.json'), 'utf8');

    const result = await runCli(['keys', 'rotate', '--master', '--dir', dir.root]);
    expect(result.code).toBe(6);
    expect(result.stderr).toContain('sealed secret app/token failed authentication');
    expect(result.stderr).toContain('Restore it from a backup');
    expect(await fs.readFile(dir.secretPath('master/keyring.json'), 'utf8')).toBe(keyringBefore);
    expect(await fs.readdir(path.join(dir.secretsDir, 'master'))).toEqual(['keyring.json', 'v1.key']);
  });

  it('tampering with a wrapped data key exits 6', async () => {
    const dir = await install();
    await initKeys(dir, {command: 'test'});
    await (await openKeyServices(dir)).dataKeys.create('acme');
    const file = dir.secretPath('data-keys.json');
    const doc = JSON.parse(await fs.readFile(file, 'utf8')) as {keys: Array<{wrapped: string}>};
    const wrapped = Buffer.from(doc.keys[0]!.wrapped, 'base64');
    wrapped[wrapped.length - 1]! ^= 1;
    doc.keys[0]!.wrapped = wrapped.toString('base64');
    await fs.writeFile(file, JSON.stringify(doc));
    const result = await runCli(['keys', 'rotate', '--master', '--dir', dir.root, '--json']);
    expect(result.code).toBe(6);
    expect(JSON.parse(result.stdout).error).toMatchObject({kind: 'verification', message: 'data key dek/acme v1 failed authentication: it was modified, corrupted or moved from another place'});
  });

  it('a missing master key file is its own error, with the file to restore', async () => {
    const dir = await install();
    await initKeys(dir, {command: 'test'});
    await fs.rm(dir.secretPath('master/v1.key'));
    const result = await runCli(['keys', 'rotate', '--master', '--dir', dir.root]);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/needs master key version 1, which the file provider does not hold/);
    expect(result.stderr).toContain('Restore secrets/master/v1.key');
  });

  it('without keys, commands say how to create them', async () => {
    const dir = await install();
    const result = await runCli(['keys', 'status', '--dir', dir.root]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain('dforge keys init');
  });
});

describe('rotating the master key over 1,000 data keys', () => {
  let pristine: InstallDir;
  let expected: Map<string, string>;
  const scratch: string[] = [];
  beforeAll(async () => {
    pristine = await tempInstall();
    await initKeys(pristine, {command: 'test'});
    await seed(await openKeyServices(pristine), 1000, 30);
    expected = await openEverything(pristine);
  });
  afterAll(async () => {
    await (pristine as InstallDir & {cleanup(): Promise<void>}).cleanup();
    for (const d of scratch) await fs.rm(d, {recursive: true, force: true});
  });
  const fresh = async (): Promise<InstallDir> => {
    const target = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-trial-'));
    scratch.push(target);
    await fs.rm(target, {recursive: true});
    return copyInstall(pristine, target);
  };

  it('re-wraps every data key and sealed secret; each still opens to the same key', async () => {
    const dir = await fresh();
    const result = await runCli(['keys', 'rotate', '--master', '--dir', dir.root, '--json']);
    expect(result.code).toBe(0);
    expect(JSON.parse(result.stdout).master).toMatchObject({from: 1, to: 2, rewrapped: {dataKeys: 1000, sealedSecrets: 31}});
    expect(await openEverything(dir)).toEqual(expected);
    const status = JSON.parse((await runCli(['keys', 'status', '--dir', dir.root, '--json'])).stdout);
    expect(status.master.versions).toEqual([
      expect.objectContaining({version: 1, state: 'retired', protects: {dataKeys: 0, sealedSecrets: 0}, materialPresent: false}),
      expect.objectContaining({version: 2, state: 'active', protects: {dataKeys: 1000, sealedSecrets: 31}, materialPresent: true}),
    ]);
  });
});

describe('rotating the master key, killed at every durable step', () => {
  let pristine: InstallDir;
  let expected: Map<string, string>;
  let current: InstallDir | undefined;
  const scratch: string[] = [];
  beforeAll(async () => {
    pristine = await tempInstall();
    await initKeys(pristine, {command: 'test'});
    await seed(await openKeyServices(pristine), 40, 4);
    expected = await openEverything(pristine);
  });
  afterAll(async () => {
    await (pristine as InstallDir & {cleanup(): Promise<void>}).cleanup();
    for (const d of scratch) await fs.rm(d, {recursive: true, force: true});
  });

  it('every key opens after each kill, a rerun finishes, and every distinct step was killed at', async () => {
    const {steps, killedAt} = await crashAtEveryStep({
      name: 'keys rotate --master (file sets)',
      prepare: async () => {
        const target = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-trial-'));
        scratch.push(target);
        await fs.rm(target, {recursive: true});
        current = await copyInstall(pristine, target);
      },
      run: (env) => runCli(['keys', 'rotate', '--master', '--dir', current!.root], {env}),
      recover: async (step) => {
        const dir = current!;
        expect(await openEverything(dir), `killed after ${step}`).toEqual(expected);
        const rerun = await runCli(['keys', 'rotate', '--master', '--dir', dir.root, '--json']);
        expect(rerun.code, `rerun after a kill at ${step}: ${rerun.stderr}`).toBe(0);
        expect(await openEverything(dir)).toEqual(expected);
        const state = await readKeyringState(dir);
        expect(state?.rotation).toBeUndefined();
        const active = state!.versions.find((v) => v.state === 'active')!.version;
        const services = await openKeyServices(dir);
        for (const r of await services.dataKeyStore.list()) expect(services.keyring.versionOf(r.wrapped, 'x')).toBe(active);
        for (const name of await services.sealed.list()) expect(await services.sealed.versionOf(name)).toBe(active);
        // No control backup needs a retired version here, so only the active one keeps material.
        const keyFiles = (await fs.readdir(path.join(dir.secretsDir, 'master'))).filter((f) => f.endsWith('.key'));
        expect(keyFiles).toEqual([`v${active}.key`]);
        expect(state!.versions.filter((v) => v.state === 'retired').every((v) => v.destroyedAt !== undefined)).toBe(true);
      },
    });
    expect(new Set(steps)).toEqual(
      new Set(['master.keyring.rotation-started', 'master.rewrap.sealed-file', 'master.rewrap.data-keys', 'master.keyring.committed', 'master.destroy', 'master.keyring.destroyed-recorded']),
    );
    expect(new Set(killedAt)).toEqual(new Set(steps));
  });
});

describe('writers and the rotation', () => {
  it('a writer that opened the keyring before a rotation wraps under the new version, not the retired one', async () => {
    const dir = await install();
    await initKeys(dir, {command: 'test'});
    const early = await openKeyServices(dir);
    // Material of v1 is now cached in this process, as in a long-running writer.
    await early.keyring.withWrites('test', () => early.sealed.put('early/one', 'before'));
    expect((await rotateMasterKey(dir, {command: 'test'})).destroyed).toEqual([1]);

    await early.keyring.withWrites('test', () => early.sealed.put('early/two', 'after'));
    const late = await early.dataKeys.create('late-owner');
    const fresh = await openKeyServices(dir);
    expect(await fresh.sealed.versionOf('early/two')).toBe(2);
    expect((await fresh.sealed.get('early/two')).toString()).toBe('after');
    expect((await fresh.dataKeys.get('late-owner', 1)).material.equals(late.material)).toBe(true);
    expect(fresh.keyring.versionOf((await fresh.dataKeyStore.list('late-owner'))[0]!.wrapped, 'x')).toBe(2);
  });

  it('refuses to commit while anything is still wrapped under the old version, and keeps both versions', async () => {
    const dir = await install();
    await initKeys(dir, {command: 'test'});
    // A set a writer keeps adding old-version items to behind the re-wrap (one that skips the lock).
    const stubborn: WrappedKeySet = {
      id: 'stubborn',
      label: 'a writer that bypasses the keys lock',
      verifyAll: async () => 1,
      countByVersion: async () => new Map([[1, 1]]),
      rewrapAll: async () => 1,
    };
    const refused = await rotateMasterKey(dir, {command: 'test', extraSets: async () => [stubborn]}).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(UserError);
    expect((refused as UserError).message).toBe('refusing to commit the master rotation to v2: still wrapped under an older version: 1 in a writer that bypasses the keys lock');
    const state = await readKeyringState(dir);
    expect(state?.rotation).toMatchObject({from: 1, to: 2});
    expect((await fs.readdir(path.join(dir.secretsDir, 'master'))).sort()).toEqual(['keyring.json', 'v1.key', 'v2.key']);
    // Without the straggler, a rerun finishes the recorded rotation.
    expect(await rotateMasterKey(dir, {command: 'test'})).toMatchObject({from: 1, to: 2, resumed: true, destroyed: [1]});
  });

  it('a rotation waits for a writer holding the shared keys lock, then re-wraps what it wrote', async () => {
    const dir = await install();
    await initKeys(dir, {command: 'test'});
    const writer = await openKeyServices(dir);
    let rotationDone = false;
    let rotation: Promise<unknown> | undefined;
    await writer.keyring.withWrites('slow writer', async () => {
      rotation = runCli(['keys', 'rotate', '--master', '--dir', dir.root]).then((r) => {
        rotationDone = true;
        return r;
      });
      await new Promise((resolve) => setTimeout(resolve, 1500));
      expect(rotationDone).toBe(false);
      await writer.sealed.put('slow/secret', 'written under v1 while the rotation waited');
      expect(await writer.sealed.versionOf('slow/secret')).toBe(1);
    });
    expect(((await rotation) as {code: number}).code).toBe(0);
    const fresh = await openKeyServices(dir);
    expect(await fresh.sealed.versionOf('slow/secret')).toBe(2);
    expect((await fresh.sealed.get('slow/secret')).toString()).toBe('written under v1 while the rotation waited');
  });
});

describe('JWT signing keys', () => {
  const day = 86_400_000;
  it.each(['EdDSA', 'ES256'] as const)('%s: rotation keeps the old key verify-only for the grace period, then drops it', async (alg) => {
    const dir = await install();
    await initKeys(dir, {command: 'test'});
    const {sealed} = await openKeyServices(dir);
    const t0 = new Date('2026-03-01T00:00:00Z');
    const first = await rotateJwtSigningKey(dir, sealed, alg, 7, t0);
    const token = Buffer.from('header.payload');
    const signature = sign(alg === 'EdDSA' ? null : 'sha256', token, createPrivateKey(await sealed.get(jwtPrivateKeyName(first.signing.kid))));

    const second = await rotateJwtSigningKey(dir, sealed, alg, 7, new Date(t0.getTime() + day));
    expect(second.verifyOnly.map((k) => k.kid)).toContain(first.signing.kid);
    const jwks = jwksOf(await readJwtKeys(dir), new Date(t0.getTime() + 3 * day));
    const old = jwks.keys.find((k) => k.kid === first.signing.kid)!;
    expect(old).toMatchObject({alg, use: 'sig'});
    expect('d' in old).toBe(false);
    expect(verify(alg === 'EdDSA' ? null : 'sha256', token, createPublicKey({key: old, format: 'jwk'}), signature)).toBe(true);

    const dropped = await pruneJwtKeys(dir, sealed, new Date(t0.getTime() + 9 * day));
    expect(dropped).toContain(first.signing.kid);
    expect(await sealed.has(jwtPrivateKeyName(first.signing.kid))).toBe(false);
    expect(JSON.parse(await fs.readFile(path.join(dir.runtimeDir, 'jwks.json'), 'utf8')).keys.map((k: {kid: string}) => k.kid)).toEqual([second.signing.kid]);
  });
});

describe('no secret in any output', () => {
  it('keys init/status/rotate/jwks print no key material, with or without --json', async () => {
    const dir = await install();
    const outputs: string[] = [];
    const run = async (...args: string[]): Promise<void> => {
      for (const json of [false, true]) {
        const r = await runCli([...args, '--dir', dir.root, ...(json ? ['--json'] : [])]);
        expect(r.code, r.stderr).toBe(0);
        outputs.push(r.stdout, r.stderr);
      }
    };
    const secrets = new Set<string>();
    const collect = async (): Promise<void> => {
      for (const f of await fs.readdir(path.join(dir.secretsDir, 'master'))) {
        if (f.endsWith('.key')) {
          const b64 = (await fs.readFile(path.join(dir.secretsDir, 'master', f), 'utf8')).trim();
          secrets.add(b64);
          secrets.add(Buffer.from(b64, 'base64').toString('hex'));
        }
      }
      const services = await openKeyServices(dir);
      for (const r of await services.dataKeyStore.list()) {
        const m = (await services.dataKeys.get(r.owner, r.version)).material;
        secrets.add(m.toString('hex'));
        secrets.add(m.toString('base64'));
      }
      for (const name of await services.sealed.list()) {
        const plain = (await services.sealed.get(name)).toString('utf8');
        // PEM bodies: every base64 line is a fragment of the key.
        for (const line of plain.split('\n')) if (line.length > 20 && !line.startsWith('-----')) secrets.add(line);
        if (!plain.includes('-----')) secrets.add(plain);
      }
    };
    await run('keys', 'init');
    const services = await openKeyServices(dir);
    await services.dataKeys.create('acme');
    await services.sealed.put('app/password', 'p4ssw0rd-that-must-not-leak');
    await collect();
    await run('keys', 'status');
    await run('keys', 'rotate', '--jwt');
    await run('keys', 'jwks');
    await collect();
    await run('keys', 'rotate', '--master');
    await collect();
    await run('keys', 'status');
    expect(secrets.size).toBeGreaterThan(8);
    const all = outputs.join('\n');
    for (const s of secrets) expect(all.includes(s), 'a secret value appeared in command output').toBe(false);
  });
});

describe('VerificationError surfaces', () => {
  it('sealed secrets copied over one another fail to open', async () => {
    const dir = await install();
    await initKeys(dir, {command: 'test'});
    const {sealed} = await openKeyServices(dir);
    await sealed.put('a/one', '1');
    await sealed.put('a/two', '2');
    await fs.copyFile(dir.secretPath('a/one.sealed'), dir.secretPath('a/two.sealed'));
    await expect(sealed.get('a/two')).rejects.toBeInstanceOf(VerificationError);
  });
});
