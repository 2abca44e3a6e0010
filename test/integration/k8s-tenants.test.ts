import {execFile as execFileCb} from 'node:child_process';
import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {promisify} from 'node:util';

import {parseAllDocuments} from 'yaml';
import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {loadConfigFile} from '../../src/config/load.js';
import {k8sOverlayDir, publishKubernetesTenants} from '../../src/k8s/overlay.js';
import {catalogText} from '../../src/runtime/tenant-catalog.js';
import {InstallDir} from '../../src/state/install-dir.js';
import {runCli} from '../helpers/cli.js';

/**
 * Kubernetes' way for the app to learn of tenants: one Secret per active tenant plus the catalog
 * Secret, in the overlay install wrote, built by the real kubectl. No cluster runs here, so the
 * publication stops before `kubectl apply` and says so.
 */
const execFile = promisify(execFileCb);

describe('tenant Secrets on Kubernetes', () => {
  let root: string;
  let dir: InstallDir;

  beforeAll(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-k8s-tenants-'));
    dir = new InstallDir(path.join(root, 'install'));
    const r = await runCli(['install', '--dir', dir.root, '--target', 'k8s', '--domain', 'dforge.localhost', '--region', 'eu', '--yes']);
    // No cluster runs here: install writes everything, then stops incomplete (exit 4).
    expect(r.code, r.stderr).toBe(4);
  }, 120_000);
  afterAll(async () => {
    await fs.rm(root, {recursive: true, force: true});
  });

  async function built(): Promise<Array<{kind: string; metadata: {name: string}; spec?: unknown; type?: string}>> {
    const {stdout} = await execFile('kubectl', ['kustomize', k8sOverlayDir(dir)], {maxBuffer: 1 << 24});
    return parseAllDocuments(stdout).map((d) => d.toJS() as {kind: string; metadata: {name: string}});
  }

  it('adds one Secret per active tenant and mounts it into the app next to the catalog', async () => {
    const config = await loadConfigFile(dir.configFile);
    const entry = (slug: string, active: boolean) => ({slug, database: `tenant_${slug}`, role: `tenant_${slug}`, host: 'postgres', port: 5432, sslmode: 'verify-full' as const, ...(active ? {passwordFile: `/run/dforge/tenants/${slug}.password`} : {}), status: active ? ('active' as const) : ('suspended' as const)});
    const r = await publishKubernetesTenants(dir, config, catalogText([entry('acme', true), entry('globex', false)]), new Map([['acme', 'acme-secret-password-value']]));
    expect(r).toMatchObject({changed: true, applied: false});
    expect(r.note).toContain('kubectl apply -k');

    const file = path.join(k8sOverlayDir(dir), 'secrets', 'dforge-tenant-acme', 'password');
    expect((await fs.stat(file)).mode & 0o777).toBe(0o600);
    const objects = await built();
    const secrets = objects.filter((o) => o.kind === 'Secret').map((o) => o.metadata.name);
    expect(secrets.some((n) => n.startsWith('dforge-tenant-acme-'))).toBe(true);
    expect(secrets.some((n) => n.startsWith('dforge-tenant-globex'))).toBe(false);
    const app = objects.find((o) => o.kind === 'Deployment' && o.metadata.name === 'app') as {spec: {template: {spec: {volumes: Array<{name: string; projected?: {sources: Array<{secret: {name: string; items: Array<{path: string}>}}>}}>}}}};
    const sources = app.spec.template.spec.volumes.find((v) => v.name === 'tenants')!.projected!.sources;
    expect(sources.map((s) => s.secret.items[0]!.path).sort()).toEqual(['acme.password', 'catalog.json']);
    expect(sources.every((s) => secrets.includes(s.secret.name))).toBe(true);
  }, 60_000);

  it('a re-run of install keeps the published tenants, and a removed tenant leaves', async () => {
    const again = await runCli(['install', '--dir', dir.root, '--yes']);
    expect(again.code, again.stderr).toBe(4);
    await fs.access(path.join(k8sOverlayDir(dir), 'secrets', 'dforge-tenant-acme', 'password'));
    expect(await fs.readFile(path.join(k8sOverlayDir(dir), 'secrets', 'dforge-catalog', 'catalog.json'), 'utf8')).toContain('"globex"');

    const config = await loadConfigFile(dir.configFile);
    const r = await publishKubernetesTenants(dir, config, catalogText([]), new Map());
    expect(r.changed).toBe(true);
    await expect(fs.access(path.join(k8sOverlayDir(dir), 'secrets', 'dforge-tenant-acme'))).rejects.toThrow();
    expect((await built()).filter((o) => o.kind === 'Secret' && o.metadata.name.startsWith('dforge-tenant-'))).toEqual([]);
  }, 120_000);
});
