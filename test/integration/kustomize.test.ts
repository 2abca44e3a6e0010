import {execFile} from 'node:child_process';
import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {promisify} from 'node:util';

import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {configSchema, type DforgeConfig} from '../../src/config/schema.js';
import {kubernetesSecrets, overlaySecretFile, renderKubernetes, renderKubernetesOverlay, tenantSecretName} from '../../src/render/k8s.js';
import {writeRendered} from '../../src/render/rendered-file.js';
import {objectId, parseManifests, podTemplates, schemaProblems, unknownFieldProblems, type K8sObject} from '../helpers/k8s-objects.js';
import {missingComponent} from '../helpers/requirements.js';

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
  configSchema.parse({
    version: 1,
    domain: 'dforge.example.com',
    target: 'k8s',
    primaryRegion: 'eu',
    release: '1.4.2',
    regions: {
      eu: {clusters: [{name: 'eu-1', kind: 'bundled'}], backup: {destinations: [{name: 'eu-local', kind: 'local', path: '/var/backups/dforge/eu'}]}},
      us: {clusters: [{name: 'us-1', kind: 'external', host: 'pg.us.example.com', admin: {secret: 'postgres/us-1-admin'}}]},
    },
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
        // kustomize rewrote every reference to the hashed name: nothing points at a Secret that does not exist.
        expect(secretReferences(built)).toEqual(secrets.map((s) => s.metadata.name).sort());

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
