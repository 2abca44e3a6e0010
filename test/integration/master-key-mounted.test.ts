import {randomBytes} from 'node:crypto';
import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {afterEach, describe, expect, it} from 'vitest';

import {UserError} from '../../src/errors.js';
import {openKeyServices} from '../../src/keys/context.js';
import {exportMasterKey} from '../../src/keys/export-master.js';
import {initKeys} from '../../src/keys/init.js';
import {rotateMasterKey} from '../../src/keys/rotate-master.js';
import {masterDir, readKeyringState} from '../../src/secrets/master-key.js';
import type {InstallDir} from '../../src/state/install-dir.js';
import {runCli} from '../helpers/cli.js';
import {tempInstall} from '../helpers/install-fixture.js';

/**
 * The mounted master key provider: v<N>.key files in a directory that a key store outside dforge
 * fills (a CSI secrets-store driver, a Vault agent). Here the "key store" is a plain directory the
 * test writes, as the driver would; dforge reads it and never writes it.
 */
const roots: string[] = [];
afterEach(async () => {
  for (const r of roots.splice(0)) await fs.rm(r, {recursive: true, force: true});
});

/** `base`: where the test's directories go; the Kubernetes jobs keep /tmp for themselves, so a key directory there is refused on k8s. */
async function mountedInstall(base = os.tmpdir()): Promise<{dir: InstallDir; keyDir: string; addKey(version: number, mode?: number): Promise<string>}> {
  const root = await fs.mkdtemp(path.join(base, 'dforge-mounted-'));
  roots.push(root);
  const keyDir = path.join(root, 'kms');
  await fs.mkdir(keyDir, {mode: 0o700});
  const dir = await tempInstall({masterKeyProvider: 'mounted', mountedKeyDir: keyDir, base: root});
  const addKey = async (version: number, mode = 0o400): Promise<string> => {
    const key = randomBytes(32).toString('base64');
    await fs.writeFile(path.join(keyDir, `v${version}.key`), `${key}\n`, {mode});
    await fs.chmod(path.join(keyDir, `v${version}.key`), mode);
    return key;
  };
  return {dir, keyDir, addKey};
}

describe('the mounted master key provider', () => {
  it('refuses a key file others can read, naming the file and the fix', async () => {
    const {dir, keyDir, addKey} = await mountedInstall();
    await addKey(1, 0o644);
    const result = await runCli(['keys', 'init', '--dir', dir.root]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain(`refusing to use the master key ${keyDir}/v1.key`);
    expect(result.stderr).toContain(`chmod 600 ${keyDir}/v1.key`);
    expect(result.stderr).toContain(`If the key store rewrites ${keyDir}, set the mode there: 0400 files`);
    expect(await readKeyringState(dir)).toBeUndefined();
  });

  it('init takes version 1 from the directory, writes no key of its own, and the install opens its secrets from the mount', async () => {
    const {dir, keyDir, addKey} = await mountedInstall();
    await addKey(1);
    const result = await runCli(['keys', 'init', '--dir', dir.root, '--json']);
    expect(result.code, result.stderr).toBe(0);
    expect(JSON.parse(result.stdout)).toMatchObject({provider: 'mounted', masterVersion: 1, masterCreated: true});
    expect((await readKeyringState(dir))?.provider).toBe('mounted');
    // Only the keyring (no key material) in the install; the key stays in the key store.
    expect((await fs.readdir(masterDir(dir))).sort()).toEqual(['keyring.json']);
    expect(await fs.readdir(keyDir)).toEqual(['v1.key']);

    await (await openKeyServices(dir)).sealed.put('app/token', 'correct horse');
    expect((await (await openKeyServices(dir)).sealed.get('app/token')).toString()).toBe('correct horse');

    // A different key under the same name is caught by the key check value, not used.
    await fs.rm(path.join(keyDir, 'v1.key'));
    await addKey(1);
    const wrong = await (await openKeyServices(dir)).sealed.get('app/token').catch((e: unknown) => e as Error);
    expect((wrong as Error).message).toContain('wrong master key for version 1');
  });

  it('init without a key file refuses and says exactly which file to add', async () => {
    const {dir, keyDir} = await mountedInstall();
    const result = await runCli(['keys', 'init', '--dir', dir.root, '--json']);
    expect(result.code).toBe(1);
    const error = JSON.parse(result.stdout).error as {message: string; nextSteps: string[]};
    expect(error.message).toBe(`the mounted master key directory ${keyDir} holds no key for master version 1`);
    expect(error.nextSteps[0]).toContain(`Add ${keyDir}/v1.key to the key store mounted at ${keyDir}`);
    expect(error.nextSteps[0]).toContain('openssl rand -base64 32');
    expect(await readKeyringState(dir)).toBeUndefined();
  });

  it('rotation cannot mint: it names the file to add, then the file to remove once nothing needs it', async () => {
    const {dir, keyDir, addKey} = await mountedInstall();
    await addKey(1);
    await initKeys(dir, {command: 'test'});
    await (await openKeyServices(dir)).sealed.put('app/token', 'x');

    const refused = await runCli(['keys', 'rotate', '--master', '--dir', dir.root, '--json']);
    expect(refused.code).toBe(1);
    const error = JSON.parse(refused.stdout).error as {message: string; nextSteps: string[]};
    expect(error.message).toBe(`the mounted master key directory ${keyDir} holds no key for master version 2`);
    expect(error.nextSteps[0]).toContain(`Add ${keyDir}/v2.key`);
    expect(error.nextSteps[0]).toContain('Keep the files already there');

    await addKey(2);
    const result = await rotateMasterKey(dir, {command: 'test'});
    expect(result).toMatchObject({from: 1, to: 2, destroyed: []});
    expect(result.operatorActions).toEqual([`remove ${keyDir}/v1.key from the key store mounted at ${keyDir}`]);
    // dforge did not touch the key store: the operator removes v1.
    expect((await fs.readdir(keyDir)).sort()).toEqual(['v1.key', 'v2.key']);
    await fs.rm(path.join(keyDir, 'v1.key'), {force: true});
    expect((await (await openKeyServices(dir)).sealed.get('app/token')).toString()).toBe('x');
  });

  it('a missing or unreadable key directory is a broken mount, reported with its path (exit 1)', async () => {
    const {dir, keyDir, addKey} = await mountedInstall();
    await addKey(1);
    await initKeys(dir, {command: 'test'});
    await (await openKeyServices(dir)).sealed.put('app/token', 'x');

    await fs.rm(keyDir, {recursive: true});
    const missing = await runCli(['keys', 'rotate', '--master', '--dir', dir.root, '--json']);
    expect(missing.code).toBe(1);
    const error = JSON.parse(missing.stdout).error as {message: string; nextSteps: string[]};
    expect(error.message).toBe(`the mounted master key directory ${keyDir} does not exist`);
    expect(error.nextSteps[0]).toContain(`Mount the key store at ${keyDir} (keys.mountedKeyDir in dforge.yaml)`);

    // Not a directory at all (a mount gone wrong): the same path, the reason the system gave.
    await fs.writeFile(keyDir, 'not a directory');
    const notDir = await runCli(['keys', 'rotate', '--master', '--dir', dir.root]);
    expect(notDir.code).toBe(1);
    expect(notDir.stderr).toContain(`cannot read the mounted master key directory ${keyDir}: ENOTDIR`);
  });

  it('the master key export reads the mounted versions, and names the file to restore when none is there', async () => {
    const {dir, keyDir, addKey} = await mountedInstall();
    const key = await addKey(1);
    await initKeys(dir, {command: 'test'});
    const file = path.join(path.dirname(dir.root), 'export.json');
    expect(await exportMasterKey(dir, file)).toEqual({file, versions: [1]});
    expect((JSON.parse(await fs.readFile(file, 'utf8')) as {DFORGE_MASTER_KEY: string}).DFORGE_MASTER_KEY).toBe(`1:${key}`);

    await fs.rm(path.join(keyDir, 'v1.key'));
    const none = await exportMasterKey(dir, `${file}.2`).catch((e: unknown) => e as UserError);
    expect((none as UserError).message).toBe('no master key material could be read, so there is nothing to export');
    expect((none as UserError).nextSteps[0]).toContain(`Add ${keyDir}/v1.key`);
  });

  it('dforge.yaml without keys.mountedKeyDir is refused with the key to set', async () => {
    const {dir} = await mountedInstall();
    await fs.writeFile(dir.configFile, (await fs.readFile(dir.configFile, 'utf8')).replace(/ {2}mountedKeyDir: .*\n/, ''));
    const result = await runCli(['keys', 'init', '--dir', dir.root]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain('keys.mountedKeyDir: the mounted master key provider needs keys.mountedKeyDir');
  });

  it('install --target k8s neither needs nor prints the Secret dforge-master-key: it names the key files the volume must hold', async () => {
    const {dir, keyDir, addKey} = await mountedInstall('/var/tmp');
    await addKey(1);
    await fs.writeFile(
      dir.configFile,
      `version: 1
domain: dforge.localhost
target: k8s
primaryRegion: eu
regions:
  eu:
    clusters:
      - name: eu-1
        kind: bundled
keys:
  masterKeyProvider: mounted
  mountedKeyDir: ${keyDir}
kubernetes:
  masterKeyVolume:
    csi: {driver: secrets-store.csi.k8s.io, readOnly: true, volumeAttributes: {secretProviderClass: dforge-master}}
`,
    );
    // No cluster is reachable here: install writes everything and stops at Apply with exit 4.
    const result = await runCli(['install', '--dir', dir.root, '--yes', '--json']);
    expect(result.code, result.stderr).toBe(4);
    const error = JSON.parse(result.stdout).error as {message: string; nextSteps: string[]; data: {commands: string[]}};
    expect(error.message).toContain('the install is incomplete');
    expect(error.nextSteps).toContain(`(nothing to create for the master key: the volume kubernetes.masterKeyVolume must provide ${keyDir}/v1.key (the files dforge reads on this host), read-only)`);
    expect(error.data.commands.some((c) => c.includes('dforge-bootstrap'))).toBe(true);
    expect(result.stdout + result.stderr).not.toContain('create secret');
    expect(result.stdout + result.stderr).not.toContain('dforge-master-key');
  }, 180_000);
});
