import {execFile as execFileCb} from 'node:child_process';
import {randomBytes} from 'node:crypto';
import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {promisify} from 'node:util';

import {afterAll, describe, expect, it} from 'vitest';

import {generateCertificates} from '../../src/certs/service.js';
import {configSchema, type DforgeConfig} from '../../src/config/schema.js';
import {UsageError} from '../../src/errors.js';
import {installArchive} from '../../src/install/k8s.js';
import {openKeyServices} from '../../src/keys/context.js';
import {initKeys} from '../../src/keys/init.js';
import {archiveCarriesKeyring, MASTER_KEY_SECRET, masterKeySetup, renderKubernetes} from '../../src/render/k8s.js';
import {masterDir} from '../../src/secrets/master-key.js';
import {InstallDir} from '../../src/state/install-dir.js';
import {k8sConfigInput} from '../helpers/k8s-config.js';
import {parseManifests, podTemplates, schemaProblems, unknownFieldProblems, type Container, type K8sObject} from '../helpers/k8s-objects.js';

const execFile = promisify(execFileCb);

const KEY_DIR = '/var/run/dforge-kms';
const CSI = {csi: {driver: 'secrets-store.csi.k8s.io', readOnly: true, volumeAttributes: {secretProviderClass: 'dforge-master'}}};

const base = k8sConfigInput({keys: {masterKeyProvider: 'mounted', mountedKeyDir: KEY_DIR}, kubernetes: {namespace: 'dforge', masterKeyVolume: CSI}});
const config = (patch: Record<string, unknown> = {}): DforgeConfig => configSchema.parse({...base, ...patch});
const objectsOf = async (c: DforgeConfig): Promise<K8sObject[]> => (await renderKubernetes(c, undefined)).filter((f) => f.path !== 'kustomization.yaml').flatMap((f) => parseManifests(f.content));
/** The workloads that open the install's secrets: they, and only they, mount the master key. */
const KEY_HOLDERS = ['CronJob/dforge-backup', 'Job/dforge-bootstrap'];
const mainContainer = (spec: {containers: Container[]}): Container => spec.containers[0]!;

describe('config: the mounted master key provider', () => {
  it('refuses target k8s without kubernetes.masterKeyVolume, saying what to set', () => {
    const result = configSchema.safeParse({...base, kubernetes: {namespace: 'dforge'}});
    expect(result.success).toBe(false);
    const issue = result.error!.issues.find((i) => i.path.join('.') === 'kubernetes.masterKeyVolume');
    expect(issue?.message).toMatch(/^with the mounted master key provider and target k8s, set kubernetes.masterKeyVolume: .*secrets-store.csi.k8s.io/);
  });

  it('refuses a missing or relative keys.mountedKeyDir, and a volume that is not one nameless source', () => {
    const paths = (patch: Record<string, unknown>): string[] => configSchema.safeParse({...base, ...patch}).error?.issues.map((i) => i.path.join('.')) ?? [];
    expect(paths({keys: {masterKeyProvider: 'mounted'}})).toEqual(['keys.mountedKeyDir']);
    expect(paths({keys: {masterKeyProvider: 'mounted', mountedKeyDir: 'var/run/kms'}})).toEqual(['keys.mountedKeyDir']);
    expect(paths({keys: {masterKeyProvider: 'mounted', mountedKeyDir: '/var/run/../kms'}})).toEqual(['keys.mountedKeyDir']);
    expect(paths({kubernetes: {masterKeyVolume: {name: 'x', ...CSI}}})).toEqual(['kubernetes.masterKeyVolume']);
    expect(paths({kubernetes: {masterKeyVolume: {...CSI, secret: {secretName: 'kms'}}}})).toEqual(['kubernetes.masterKeyVolume']);
  });

  it('refuses the mounted provider\'s settings with another provider, where they would do nothing', () => {
    const result = configSchema.safeParse({...base, keys: {masterKeyProvider: 'file', mountedKeyDir: KEY_DIR}});
    expect(result.error?.issues.map((i) => [i.path.join('.'), i.message])).toEqual([
      ['keys.mountedKeyDir', 'keys.mountedKeyDir is read by the mounted provider only, and keys.masterKeyProvider is "file"'],
      ['kubernetes.masterKeyVolume', 'kubernetes.masterKeyVolume is mounted for the mounted provider only, and keys.masterKeyProvider is "file": the jobs read the Secret dforge-master-key'],
    ]);
  });

  it('needs no volume off Kubernetes', () => {
    const embedded = configSchema.safeParse({...base, target: 'embedded', regions: {eu: {clusters: [{name: 'eu-1', kind: 'embedded'}]}}, kubernetes: {}});
    expect(embedded.success, JSON.stringify(embedded.error?.issues)).toBe(true);
  });
});

describe('render: the jobs mount the operator\'s key volume, not dforge-master-key', () => {
  it('the backup CronJob and the bootstrap Job mount the given volume read-only at keys.mountedKeyDir, and nothing references the Secret', async () => {
    const objects = await objectsOf(config());
    expect(await schemaProblems(objects)).toEqual([]);
    expect(await unknownFieldProblems(objects)).toEqual([]);
    const holders = podTemplates(objects).filter((t) => KEY_HOLDERS.includes(t.owner));
    expect(holders.map((t) => t.owner).sort()).toEqual(KEY_HOLDERS);
    for (const t of holders) {
      expect(t.spec.volumes, t.owner).toContainEqual({name: 'master-key', ...CSI});
      const container = mainContainer(t.spec);
      expect(container.volumeMounts, t.owner).toContainEqual({name: 'master-key', mountPath: KEY_DIR, readOnly: true});
      // Nothing at secrets/master of the unpacked install: keyring.json comes from the archive there.
      const mounts = container.volumeMounts as Array<{mountPath: string}>;
      expect(mounts.filter((m) => m.mountPath.startsWith('/var/lib/dforge/secrets')), t.owner).toEqual([]);
      expect((container.env as Array<{name: string}>).map((e) => e.name), t.owner).toEqual(['HOME']);
      // The init container that unpacks the archive has no business with the key.
      for (const init of t.spec.initContainers ?? []) expect(JSON.stringify(init.volumeMounts), t.owner).not.toContain('master-key');
    }
    // No other workload mounts the key volume.
    for (const t of podTemplates(objects).filter((p) => !KEY_HOLDERS.includes(p.owner))) expect(JSON.stringify(t.spec), t.owner).not.toContain('master-key');
    expect(JSON.stringify(objects)).not.toContain(MASTER_KEY_SECRET);
  });

  it('the Secret providers still mount dforge-master-key (the contrast that makes the check above mean something)', async () => {
    const objects = await objectsOf(config({keys: {masterKeyProvider: 'file'}, kubernetes: {namespace: 'dforge'}}));
    for (const t of podTemplates(objects).filter((p) => KEY_HOLDERS.includes(p.owner))) {
      expect(t.spec.volumes, t.owner).toContainEqual({name: 'master-key', secret: {secretName: MASTER_KEY_SECRET, defaultMode: 0o440}});
    }
  });

  it('refuses a key directory over the install, /tmp or a local backup destination', async () => {
    for (const keyDir of ['/var/lib/dforge/secrets/master', '/tmp/kms', '/backups/eu/eu-local/kms', '/backups']) {
      const refused = await renderKubernetes(config({keys: {masterKeyProvider: 'mounted', mountedKeyDir: keyDir}}), undefined).catch((e: unknown) => e);
      expect(refused, keyDir).toBeInstanceOf(UsageError);
      expect((refused as UsageError).message, keyDir).toMatch(new RegExp(`^keys.mountedKeyDir ${keyDir} overlaps `));
    }
  });

  it('install names the key files the volume must hold, and no kubectl create secret command', () => {
    const install = new InstallDir('/srv/dforge');
    const mounted = masterKeySetup(config(), install, [2, 3]);
    expect(mounted).toEqual({
      kind: 'volume',
      mountPath: KEY_DIR,
      requirement: `the volume kubernetes.masterKeyVolume must provide ${KEY_DIR}/v2.key, ${KEY_DIR}/v3.key (the files dforge reads on this host), read-only`,
    });
    expect(JSON.stringify(mounted)).not.toContain('kubectl');
    expect(masterKeySetup(config({keys: {masterKeyProvider: 'file'}, kubernetes: {}}), install, [1])).toEqual({
      kind: 'secret',
      secret: MASTER_KEY_SECRET,
      command: `kubectl -n dforge create secret generic ${MASTER_KEY_SECRET} --from-file=${masterDir(install)}/`,
    });
  });
});

describe('the jobs\' archive with the mounted provider', () => {
  const roots: string[] = [];
  afterAll(async () => {
    for (const r of roots) await fs.rm(r, {recursive: true, force: true});
  });

  it('carries keyring.json (no key material) where the job reads it, and no key; the pod opens the sealed secrets with the mounted key', async () => {
    const root = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-mounted-archive-'));
    roots.push(root);
    const keyDir = path.join(root, 'kms');
    await fs.mkdir(keyDir, {mode: 0o700});
    await fs.writeFile(path.join(keyDir, 'v1.key'), `${randomBytes(32).toString('base64')}\n`, {mode: 0o400});
    const install = new InstallDir(path.join(root, 'install'));
    await install.ensureLayout();
    await fs.writeFile(install.configFile, `version: 1\ndomain: dforge.example.test\ntarget: embedded\nprimaryRegion: eu\nregions:\n  eu:\n    clusters:\n      - name: eu-1\n        kind: embedded\nkeys:\n  masterKeyProvider: mounted\n  mountedKeyDir: ${keyDir}\n`);
    await initKeys(install, {command: 'test'});
    await generateCertificates(install, {command: 'test'});
    await (await openKeyServices(install)).sealed.put('app/token', 'opened in the pod');
    expect(archiveCarriesKeyring(config())).toBe(true);
    expect(archiveCarriesKeyring(config({keys: {masterKeyProvider: 'file'}, kubernetes: {}}))).toBe(false);

    const archive = path.join(root, 'install.tar');
    await fs.writeFile(archive, await installArchive(install, ['app/token'], true));
    const {stdout} = await execFile('tar', ['-tf', archive]);
    const entries = stdout.split('\n').filter(Boolean);
    expect(entries).toContain('secrets/master/keyring.json');
    expect(entries).toContain('secrets/app/token.sealed');
    expect(entries.filter((e) => e.endsWith('.key'))).toEqual([]);
    // Without the key volume, the archive opens nothing.
    await expect(installArchive(install, ['app/token'], false).then(async (bare) => {
      const dir = new InstallDir(path.join(root, 'bare'));
      await fs.mkdir(dir.root, {mode: 0o700});
      await fs.writeFile(path.join(root, 'bare.tar'), bare);
      await execFile('tar', ['-x', '-f', path.join(root, 'bare.tar'), '-C', dir.root]);
      return openKeyServices(dir);
    })).rejects.toThrow(/no master key/);

    // The pod: the archive unpacked by the real tar, as the init container does, and the key volume at keys.mountedKeyDir.
    const pod = new InstallDir(path.join(root, 'pod'));
    await fs.mkdir(pod.root, {mode: 0o700});
    await execFile('tar', ['-x', '-f', archive, '-C', pod.root]);
    expect((await (await openKeyServices(pod)).sealed.get('app/token')).toString()).toBe('opened in the pod');
  });
});
