import {execFile} from 'node:child_process';
import {randomBytes} from 'node:crypto';
import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {promisify} from 'node:util';

import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import type {DforgeConfig} from '../../src/config/schema.js';
import {openKeyServices} from '../../src/keys/context.js';
import {initKeys} from '../../src/keys/init.js';
import {ensureSealedPassword} from '../../src/keys/sealed-password.js';
import {kubernetesSecrets, MASTER_KEY_SECRET, masterKeySetup, overlaySecretFile, renderKubernetes, renderKubernetesOverlay, tenantSecretName} from '../../src/render/k8s.js';
import {writeRendered} from '../../src/render/rendered-file.js';
import {masterDir} from '../../src/secrets/master-key.js';
import {InstallDir} from '../../src/state/install-dir.js';
import {tempInstall} from '../helpers/install-fixture.js';
import {K8S_EU, k8sConfig} from '../helpers/k8s-config.js';
import {objectId, parseManifests, podTemplates, schemaProblems, unknownFieldProblems, type K8sObject} from '../helpers/k8s-objects.js';
import {missingComponent} from '../helpers/requirements.js';
import {projectSecretVolume} from '../helpers/secret-projection.js';

/**
 * DESIGN §8: no cluster runs here, so the rendered directory is built with the real
 * `kubectl kustomize` and its output validated against the Kubernetes schemas. CI has Debian's
 * kubernetes-client (kubectl 1.20, kustomize 2.0.3); operators may have a current kubectl, so
 * DFORGE_TEST_KUBECTL may name more binaries (colon-separated) to build with as well.
 */
const run = promisify(execFile);

async function kubectlVersion(binary: string): Promise<string | undefined> {
  try {
    const {stdout} = await run(binary, ['version', '--client'], {timeout: 30_000});
    return stdout.split('\n')[0]!.trim();
  } catch {
    return undefined;
  }
}

const candidates = ['kubectl', ...(process.env.DFORGE_TEST_KUBECTL ?? '').split(':').filter(Boolean)];
const kubectls: Array<{binary: string; version: string}> = [];
for (const binary of candidates) {
  const version = await kubectlVersion(binary);
  if (version) kubectls.push({binary, version});
  else if (binary === 'kubectl') missingComponent('kubectl', 'no kubectl on PATH; install the Debian package kubernetes-client');
  else throw new Error(`DFORGE_TEST_KUBECTL names ${binary}, which does not run`);
}

const config = (patch: Record<string, unknown> = {}): DforgeConfig =>
  k8sConfig({
    regions: {eu: K8S_EU, us: {jurisdiction: 'US', clusters: [{name: 'us-1', kind: 'external', host: 'pg.us.example.com', admin: {secret: 'postgres/us-1-admin'}}]}},
    kubernetes: {namespace: 'dforge-prod', ingressClassName: 'nginx'},
    ...patch,
  });

const externalOnly = (): DforgeConfig =>
  config({regions: {eu: {clusters: [{name: 'eu-1', kind: 'external', host: '192.0.2.10', admin: {secret: 'postgres/eu-1-admin'}}]}}, kubernetes: {}});

async function kustomize(binary: string, dir: string): Promise<K8sObject[]> {
  const {stdout} = await run(binary, ['kustomize', dir], {timeout: 60_000, maxBuffer: 16 * 1024 * 1024});
  return parseManifests(stdout);
}

/** An install directory as `install --target k8s` lays it out: rendered/k8s, and the overlay with its Secret files in runtime/k8s. */
async function layOut(root: string, c: DforgeConfig, tenants: string[]): Promise<{base: string; overlay: string}> {
  const base = path.join(root, 'rendered', 'k8s');
  const overlay = path.join(root, 'runtime', 'k8s');
  await writeRendered(base, await renderKubernetes(c, undefined));
  await writeRendered(overlay, renderKubernetesOverlay(c, {base: path.relative(overlay, base), tenants}));
  const secrets = [...kubernetesSecrets(c), ...tenants.map((slug) => ({name: tenantSecretName(slug), keys: ['password']}))];
  for (const s of secrets) {
    for (const key of s.keys) {
      const file = path.join(overlay, overlaySecretFile(s.name, key));
      await fs.mkdir(path.dirname(file), {recursive: true, mode: 0o700});
      await fs.writeFile(file, `dummy ${s.name} ${key}\n`, {mode: 0o600});
    }
  }
  return {base, overlay};
}

/** Every Secret name a workload or the Ingress references. */
function secretReferences(objects: readonly K8sObject[]): string[] {
  const names = new Set<string>();
  for (const {spec} of podTemplates(objects)) {
    for (const v of spec.volumes ?? []) {
      const secret = v.secret as {secretName: string} | undefined;
      const projected = v.projected as {sources: Array<{secret?: {name: string}}>} | undefined;
      if (secret) names.add(secret.secretName);
      for (const s of projected?.sources ?? []) if (s.secret) names.add(s.secret.name);
    }
  }
  for (const o of objects.filter((x) => x.kind === 'Ingress')) for (const t of (o.spec as {tls: Array<{secretName: string}>}).tls) names.add(t.secretName);
  return [...names].sort();
}

describe.skipIf(kubectls.length === 0)('kubectl kustomize builds the rendered directory', () => {
  let root: string;
  beforeAll(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-kustomize-'));
  });
  afterAll(async () => {
    await fs.rm(root, {recursive: true, force: true});
  });

  for (const {binary, version} of kubectls) {
    describe(`${binary} (${version})`, () => {
      it.each([
        ['bundled and external clusters', () => config()],
        ['external clusters only', externalOnly],
      ])('builds the base as rendered, and every object validates (%s)', async (name, make) => {
        const c = make();
        const dir = path.join(root, `base-${kubectls.findIndex((k) => k.binary === binary)}-${name.split(' ')[0]}`);
        const rendered = await renderKubernetes(c, undefined);
        await writeRendered(dir, rendered);
        const built = await kustomize(binary, dir);
        const expected = rendered.filter((f) => f.path !== 'kustomization.yaml').flatMap((f) => parseManifests(f.content));
        expect(built.map(objectId).sort()).toEqual(expected.map(objectId).sort());
        expect(await schemaProblems(built)).toEqual([]);
        expect(await unknownFieldProblems(built)).toEqual([]);
        for (const t of podTemplates(built)) expect(t.spec.automountServiceAccountToken, t.owner).toBe(false);
      });

      it('builds the install overlay from dummy Secret files: every reference resolves to a generated Secret', async () => {
        const c = config();
        const {overlay} = await layOut(path.join(root, `overlay-${kubectls.findIndex((k) => k.binary === binary)}`), c, ['globex', 'acme']);
        const built = await kustomize(binary, overlay);
        expect(await schemaProblems(built)).toEqual([]);
        expect(await unknownFieldProblems(built)).toEqual([]);

        const secrets = built.filter((o) => o.kind === 'Secret');
        // One generated Secret per contract entry and tenant, in the namespace, named with a content hash.
        const logical = [...kubernetesSecrets(c).map((s) => s.name), 'dforge-tenant-acme', 'dforge-tenant-globex'].sort();
        expect(secrets.map((s) => s.metadata.name.replace(/-[a-z0-9]{10}$/, '')).sort()).toEqual(logical);
        for (const s of secrets) {
          expect(s.metadata.namespace).toBe('dforge-prod');
          expect(s.metadata.labels).toMatchObject({'app.kubernetes.io/part-of': 'dforge', 'app.kubernetes.io/version': '1.4.2'});
        }
        expect(secrets.find((s) => s.metadata.name.startsWith('dforge-proxy-tls-'))!.type).toBe('kubernetes.io/tls');
        // kustomize rewrote every reference to the hashed name: nothing points at a Secret that does not
        // exist, but the master key's, which the operator creates under its plain name.
        expect(secretReferences(built)).toEqual([...secrets.map((s) => s.metadata.name), MASTER_KEY_SECRET].sort());

        const app = podTemplates(built).find((t) => t.owner === 'Deployment/app')!;
        const tenants = app.spec.volumes!.find((v) => v.name === 'tenants')!.projected as {sources: Array<{secret: {name: string; items: Array<{path: string}>}}>};
        expect(tenants.sources.map((s) => s.secret.items[0]!.path)).toEqual(['catalog.json', 'acme.password', 'globex.password']);
        // The patch replaced the sources and nothing else of the app.
        expect(app.spec.volumes!.map((v) => v.name).sort()).toEqual(['secrets', 'tenants', 'tmp']);
        expect(app.spec.containers[0]!.securityContext).toMatchObject({readOnlyRootFilesystem: true});
      });
    });
  }
});

/**
 * The Secret dforge-master-key as the operator makes it, with the command dforge prints (run
 * through sh, with each kubectl first on PATH, as a client-side dry run), and the backup pod's view
 * of it as the rendered CronJob declares: its keys as files at the mount (only the listed items,
 * if any), its variables from secretKeyRef. With that view and secrets/ without secrets/master/
 * (what dforge-install carries), the job must open the install's sealed secrets.
 */
describe.skipIf(kubectls.length === 0)('the master key Secret, created with the command dforge prints', () => {
  const providers = [
    ['file', {}],
    ['env', {DFORGE_MASTER_KEY: `1:${randomBytes(32).toString('base64')}`}],
    ['passphrase', {DFORGE_MASTER_PASSPHRASE: 'correct horse battery staple'}],
  ] as const;
  let root: string;
  beforeAll(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-master-secret-'));
  });
  afterAll(async () => {
    await fs.rm(root, {recursive: true, force: true});
  });

  for (const [index, {binary, version}] of kubectls.entries()) {
    it.each(providers)(`${binary} (${version}), the %s provider: the backup job opens the install with it`, async (provider, providerEnv) => {
      const install = await tempInstall({masterKeyProvider: provider});
      try {
        await initKeys(install, {command: 'test', env: providerEnv});
        const provisioner = (await ensureSealedPassword(await openKeyServices(install, {env: providerEnv}), 'postgres/eu-1/provisioner')).value;
        const c = config({keys: {masterKeyProvider: provider}});

        // The command calls kubectl by name: a directory first on PATH makes that name this binary.
        const bin = path.join(root, `bin-${index}-${provider}`);
        await fs.mkdir(bin);
        if (binary !== 'kubectl') await fs.symlink(path.resolve(binary), path.join(bin, 'kubectl'));
        const setup = masterKeySetup(c, install, [1]);
        if (setup.kind !== 'secret') throw new Error(`provider ${c.keys.masterKeyProvider} has no master key Secret`);
        const {stdout} = await run('sh', ['-c', `${setup.command} --dry-run=client -o json`], {env: {PATH: `${bin}:${process.env.PATH}`, ...providerEnv}, timeout: 60_000});
        const secret = JSON.parse(stdout) as {kind: string; metadata: {name: string; namespace: string}; data: Record<string, string>};
        expect(secret).toMatchObject({kind: 'Secret', metadata: {name: MASTER_KEY_SECRET, namespace: 'dforge-prod'}});
        // Nothing but what the job reads: the keyring, and the key as a file or as the provider's variable.
        const variable = Object.keys(providerEnv)[0];
        expect(Object.keys(secret.data).sort()).toEqual(variable ? ['keyring.json', variable].sort() : ['keyring.json', 'v1.key']);

        const objects = (await renderKubernetes(c, undefined)).filter((f) => f.path !== 'kustomization.yaml').flatMap((f) => parseManifests(f.content));
        const pod = podTemplates(objects).find((t) => t.owner === 'CronJob/dforge-backup')!.spec;
        const container = pod.containers.find((x) => x.name === 'backup')!;
        const jobDir = (container.command as string[]).at(-1)!;
        const mount = (container.volumeMounts as Array<{name: string; mountPath: string; readOnly?: boolean}>).find((m) => m.name === 'master-key')!;
        expect(mount.readOnly).toBe(true);
        const volume = pod.volumes!.find((v) => v.name === mount.name)!.secret as {secretName: string; defaultMode: number; items?: Array<{key: string; path: string}>};
        expect(volume.secretName).toBe(MASTER_KEY_SECRET);

        const job = path.join(root, `job-${index}-${provider}`);
        await fs.cp(install.secretsDir, path.join(job, 'secrets'), {recursive: true});
        await fs.cp(install.configFile, path.join(job, 'dforge.yaml'));
        await fs.rm(masterDir(new InstallDir(job)), {recursive: true});
        const mounted = path.join(job, path.relative(jobDir, mount.mountPath));
        const items = volume.items ?? Object.keys(secret.data).map((key) => ({key, path: key}));
        await projectSecretVolume(mounted, new Map(items.map((item) => [item.path, Buffer.from(secret.data[item.key]!, 'base64')])), volume.defaultMode);
        const env = Object.fromEntries(
          ((container.env ?? []) as Array<{name: string; value?: string; valueFrom?: {secretKeyRef: {name: string; key: string}}}>).map((e) => [
            e.name,
            e.valueFrom ? Buffer.from(secret.data[e.valueFrom.secretKeyRef.key]!, 'base64').toString('utf8') : e.value!,
          ]),
        );
        const keys = await openKeyServices(new InstallDir(job), {env});
        expect((await keys.sealed.get('postgres/eu-1/provisioner')).toString('utf8')).toBe(provisioner);
      } finally {
        await install.cleanup();
      }
    });
  }
});
