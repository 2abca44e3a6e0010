import {execFile} from 'node:child_process';
import {promises as fs} from 'node:fs';
import path from 'node:path';

import type {DforgeConfig} from '../config/schema.js';
import {UserError} from '../errors.js';
import {CATALOG_SECRET, overlaySecretFile, renderKubernetesOverlay, TENANT_PASSWORD_KEY, TENANT_SECRET_PREFIX, tenantSecretName} from '../render/k8s.js';
import {ensureRuntimeDir, ROOT, writeRuntimeFile} from '../runtime/runtime-files.js';
import type {InstallDir} from '../state/install-dir.js';

/**
 * The Kubernetes overlay in runtime/k8s/ and kubectl: what install --target k8s and a tenant
 * change (runtime/tenant-catalog.ts) share. Apart from install/k8s.ts so that the tenant catalog
 * reaches it without importing the install steps (which import the catalog).
 */

export const k8sRenderedDir = (dir: InstallDir): string => path.join(dir.renderedDir, 'k8s');
/** The overlay with the Secret files: under runtime/ (0700), never under rendered/. */
export const k8sOverlayDir = (dir: InstallDir): string => path.join(dir.runtimeDir, 'k8s');

const KUBECTL_TIMEOUT_MS = 15_000;

/** The tenants whose password Secret the overlay holds: what tenant changes last published. */
export async function publishedTenants(overlay: string): Promise<string[]> {
  const names = await fs.readdir(path.join(overlay, 'secrets')).catch(() => [] as string[]);
  return names.filter((n) => n.startsWith(TENANT_SECRET_PREFIX)).map((n) => n.slice(TENANT_SECRET_PREFIX.length));
}

export async function writeOverlayKustomization(dir: InstallDir, config: DforgeConfig, tenants: readonly string[]): Promise<boolean> {
  const overlay = k8sOverlayDir(dir);
  let changed = false;
  for (const f of renderKubernetesOverlay(config, {base: path.relative(overlay, k8sRenderedDir(dir)), tenants})) {
    changed = (await writeRuntimeFile(path.join(overlay, f.path), f.content, {mode: 0o600, owner: ROOT})) || changed;
  }
  return changed;
}

/**
 * The Kubernetes side of a tenant change: the catalog Secret and one password Secret per active
 * tenant in the overlay, then `kubectl apply`, which rolls the app pods onto the new set. Without
 * a reachable cluster the files are written and the note says how to apply them.
 */
export async function publishKubernetesTenants(dir: InstallDir, config: DforgeConfig, catalog: string, passwords: ReadonlyMap<string, string>): Promise<{changed: boolean; applied: boolean; note: string}> {
  const overlay = k8sOverlayDir(dir);
  await fs.access(path.join(overlay, 'kustomization.yaml')).catch(() => {
    throw new UserError(`no Kubernetes overlay in ${overlay}`, {nextSteps: ['Run dforge install --target k8s first.']});
  });
  const put = async (secret: string, key: string, value: string): Promise<boolean> => {
    const file = path.join(overlay, overlaySecretFile(secret, key));
    await ensureRuntimeDir(path.dirname(file), {mode: 0o700, owner: ROOT});
    return writeRuntimeFile(file, value, {mode: 0o600, owner: ROOT});
  };
  let changed = await put(CATALOG_SECRET, 'catalog.json', catalog);
  for (const [slug, password] of passwords) changed = (await put(tenantSecretName(slug), TENANT_PASSWORD_KEY, password)) || changed;
  for (const slug of await publishedTenants(overlay)) {
    if (!passwords.has(slug)) {
      await fs.rm(path.join(overlay, 'secrets', tenantSecretName(slug)), {recursive: true, force: true});
      changed = true;
    }
  }
  changed = (await writeOverlayKustomization(dir, config, [...passwords.keys()])) || changed;
  // Applied whenever a cluster answers, changed or not: an earlier publication that could not be
  // applied then is applied now (apply is idempotent).
  if (!(await clusterReachable())) return {changed, applied: false, note: `no Kubernetes cluster reachable: apply the tenant change with kubectl apply -k ${overlay}`};
  await kubectl(['apply', '-k', overlay]).catch((err: unknown) => {
    throw new UserError(`the tenant change is done, but applying it to the cluster failed: ${(err as Error).message}`, {nextSteps: [`Apply it again with: kubectl apply -k ${overlay}`], cause: err});
  });
  return {changed, applied: true, note: `applied ${overlay}`};
}

export async function clusterReachable(): Promise<boolean> {
  return kubectl(['version', `--request-timeout=${KUBECTL_TIMEOUT_MS / 1000}s`, '-o', 'json']).then(
    (out) => (JSON.parse(out) as {serverVersion?: unknown}).serverVersion !== undefined,
    () => false,
  );
}

export function kubectl(args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile('kubectl', args, {timeout: 5 * 60_000, maxBuffer: 16 * 1024 * 1024, encoding: 'utf8'}, (err, stdout, stderr) => {
      if (!err) return resolve(stdout);
      reject(new UserError(`kubectl ${args[0]} failed: ${stderr.trim().split('\n').slice(-3).join(' / ') || err.message}`, {nextSteps: ['Check the kubeconfig context (kubectl config current-context) and your access to the namespace.']}));
    });
  });
}
