import {execFile} from 'node:child_process';
import {promises as fs} from 'node:fs';
import path from 'node:path';

import {loadCertificateWithKey} from '../certs/store.js';
import type {DforgeConfig} from '../config/schema.js';
import {caCertFile} from '../certs/pki-paths.js';
import {superuserSecret} from '../control/clusters.js';
import {UserError} from '../errors.js';
import {openKeyServices, type KeyServices} from '../keys/context.js';
import {jwksFile, jwtPrivateKeyName, readJwtKeys} from '../keys/jwt.js';
import {ensureSealedPassword} from '../keys/sealed-password.js';
import {CATALOG_SECRET, kubernetesSecrets, MASTER_KEY_SECRET, masterKeySecretCommand, overlaySecretFile, renderKubernetes, renderKubernetesOverlay, TENANT_PASSWORD_KEY, TENANT_SECRET_PREFIX, tenantSecretName} from '../render/k8s.js';
import {byCodePoint, writeRendered} from '../render/rendered-file.js';
import {findBundledCluster} from '../render/values.js';
import {ensureRuntimeDir, ROOT, writeRuntimeFile} from '../runtime/runtime-files.js';
import {catalogText, withTenantCatalogLock} from '../runtime/tenant-catalog.js';
import {masterDir} from '../secrets/master-key.js';
import type {InstallDir} from '../state/install-dir.js';
import type {Step} from '../ui/tasks.js';
import {AUTH_DB_PASSWORD_SECRET, AUTH_DB_SUPERUSER_SECRET} from './secrets.js';
import type {InstallContext} from './context.js';

export const k8sRenderedDir = (dir: InstallDir): string => path.join(dir.renderedDir, 'k8s');
/** The overlay with the Secret files: under runtime/ (0700), never under rendered/. */
export const k8sOverlayDir = (dir: InstallDir): string => path.join(dir.runtimeDir, 'k8s');

const KUBECTL_TIMEOUT_MS = 15_000;

/**
 * The k8s target after the common steps: render the kustomize base, write the overlay with one
 * file per Secret key, then apply it with kubectl. Without a reachable cluster it stops after
 * writing, and says how to apply later (from this host or another one).
 */
export function k8sInstallSteps(dir: InstallDir): Array<Step<InstallContext>> {
  return [
    {
      title: 'Render',
      async run(ctx) {
        ctx.rendered = await writeRendered(k8sRenderedDir(dir), await renderKubernetes(ctx.config!, path.join(dir.root, 'templates')));
        return `${ctx.rendered.written.length} written, ${ctx.rendered.unchanged.length} unchanged in ${k8sRenderedDir(dir)}`;
      },
    },
    {
      title: 'Secrets',
      async run(ctx) {
        const keys = await openKeyServices(dir);
        const written = await writeOverlay(dir, keys, ctx.config!, ctx);
        return `${written} Secret file(s) changed in ${k8sOverlayDir(dir)}`;
      },
    },
    {
      title: 'Apply',
      async run(ctx) {
        const reachable = await clusterReachable();
        const masterKey = `the backup CronJob needs the Secret ${MASTER_KEY_SECRET}, which dforge never creates: ${masterKeySecretCommand(ctx.config!, dir)}`;
        if (!reachable) {
          ctx.applied = false;
          return `no Kubernetes cluster reachable with the current kubeconfig: stopped after rendering. Apply with: kubectl apply -k ${k8sOverlayDir(dir)}; ${masterKey}`;
        }
        await kubectl(['apply', '-k', k8sOverlayDir(dir)]);
        ctx.applied = true;
        // -o name prints the name only: nothing of the Secret's data leaves the cluster.
        const present = await kubectl(['-n', ctx.config!.kubernetes.namespace, 'get', 'secret', MASTER_KEY_SECRET, '-o', 'name']).then(
          () => true,
          () => false,
        );
        return present ? `applied ${k8sOverlayDir(dir)}` : `applied ${k8sOverlayDir(dir)}; ${masterKey}`;
      },
    },
  ];
}

/** The overlay kustomization and every Secret's key as a 0600 file; returns how many files changed. */
async function writeOverlay(dir: InstallDir, keys: KeyServices, config: DforgeConfig, ctx: InstallContext): Promise<number> {
  const overlay = k8sOverlayDir(dir);
  await ensureRuntimeDir(dir.runtimeDir, {mode: 0o700, owner: ROOT});
  await ensureRuntimeDir(overlay, {mode: 0o700, owner: ROOT});
  const caPem = await fs.readFile(caCertFile(dir), 'utf8');
  const postgresTls = await loadCertificateWithKey(dir, keys.sealed, 'postgres');
  const proxyTls = await loadCertificateWithKey(dir, keys.sealed, 'proxy');
  const sealed = async (name: string): Promise<string> => {
    const r = await ensureSealedPassword(keys, name);
    if (r.created) ctx.secretsCreated.push(name);
    return r.value;
  };
  const signing = (await readJwtKeys(dir)).find((k) => k.state === 'signing');
  if (!signing) throw new UserError('no JWT signing key', {nextSteps: ['Create the keys with: dforge keys init']});
  const bundled = findBundledCluster(config);
  const values: Record<string, Record<string, string | Buffer>> = {
    'dforge-ca': {'ca.crt': caPem},
    'dforge-postgres-tls': {'tls.crt': postgresTls.certPem, 'tls.key': postgresTls.keyPem},
    'dforge-auth-db-superuser': {password: await sealed(AUTH_DB_SUPERUSER_SECRET)},
    'dforge-auth-db-password': {password: await sealed(AUTH_DB_PASSWORD_SECRET)},
    'dforge-jwt-signing-key': {'jwt-signing-key.pem': (await keys.sealed.get(jwtPrivateKeyName(signing.kid))).toString('utf8')},
    'dforge-jwks': {'jwks.json': await fs.readFile(jwksFile(dir), 'utf8')},
    'dforge-proxy-tls': {'tls.crt': `${proxyTls.certPem.trimEnd()}\n${caPem.trimEnd()}\n`, 'tls.key': proxyTls.keyPem},
    'dforge-install': {'install.tar': await installArchive(dir)},
    ...(bundled ? {'dforge-postgres-superuser': {password: await sealed(superuserSecret(bundled.name))}} : {}),
  };
  // The catalog is what the last tenant change published (publishKubernetesTenants), an empty one
  // at first. It is read and the overlay written under the catalog lock, so a concurrent tenant
  // change is not undone.
  return withTenantCatalogLock(dir, async () => {
    values[CATALOG_SECRET] = {'catalog.json': await fs.readFile(path.join(overlay, overlaySecretFile(CATALOG_SECRET, 'catalog.json')), 'utf8').catch(() => catalogText([]))};
    let changed = 0;
    for (const secret of kubernetesSecrets(config)) {
      for (const key of secret.keys) {
        const value = values[secret.name]?.[key];
        if (value === undefined) throw new UserError(`dforge has no value for Secret ${secret.name} key ${key}`, {nextSteps: ['This is a dforge bug: the rendered manifests reference a Secret install does not write. Please report it.']});
        const file = path.join(overlay, overlaySecretFile(secret.name, key));
        await ensureRuntimeDir(path.dirname(path.dirname(file)), {mode: 0o700, owner: ROOT});
        await ensureRuntimeDir(path.dirname(file), {mode: 0o700, owner: ROOT});
        if (await writeRuntimeFile(file, value, {mode: 0o600, owner: ROOT})) changed++;
      }
    }
    if (await writeOverlayKustomization(dir, config, await publishedTenants(overlay))) changed++;
    return changed;
  });
}

/** The tenants whose password Secret the overlay holds: what tenant changes last published. */
async function publishedTenants(overlay: string): Promise<string[]> {
  const names = await fs.readdir(path.join(overlay, 'secrets')).catch(() => [] as string[]);
  return names.filter((n) => n.startsWith(TENANT_SECRET_PREFIX)).map((n) => n.slice(TENANT_SECRET_PREFIX.length));
}

async function writeOverlayKustomization(dir: InstallDir, config: DforgeConfig, tenants: readonly string[]): Promise<boolean> {
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

async function clusterReachable(): Promise<boolean> {
  return kubectl(['version', `--request-timeout=${KUBECTL_TIMEOUT_MS / 1000}s`, '-o', 'json']).then(
    (out) => (JSON.parse(out) as {serverVersion?: unknown}).serverVersion !== undefined,
    () => false,
  );
}

/**
 * What the backup CronJob gets of the install, as one tar for the Secret dforge-install, named
 * file by file: dforge.yaml, the CA certificate its TLS connections verify against, and secrets/
 * without secrets/master/. The rest of secrets/ is sealed under the master key or public; the
 * master key itself reaches the job only from the operator's dforge-master-key, so no Secret
 * dforge generates can open the others. Fixed mtimes and sorted entries: the same install gives
 * the same bytes, and the Secret's hash changes only when its content does.
 */
export async function installArchive(dir: InstallDir): Promise<Buffer> {
  const tar = await import('tar');
  const rel = (file: string): string => path.relative(dir.root, file);
  const ca = rel(caCertFile(dir));
  const entries = [rel(dir.configFile), path.dirname(ca), ca, ...(await listTree(dir.root, rel(dir.secretsDir), new Set([rel(masterDir(dir))])))];
  const chunks: Buffer[] = [];
  const stream = tar.c({cwd: dir.root, portable: true, mtime: new Date(0), noDirRecurse: true}, entries);
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** The directories and regular files of `rel` under `root`, sorted, leaving out the `excluded` subtrees (paths relative to root). */
async function listTree(root: string, rel: string, excluded: ReadonlySet<string>): Promise<string[]> {
  const out = [rel];
  const entries = (await fs.readdir(path.join(root, rel), {withFileTypes: true})).sort((a, b) => byCodePoint(a.name, b.name));
  for (const e of entries) {
    const child = `${rel}/${e.name}`;
    if (excluded.has(child)) continue;
    if (e.isDirectory()) out.push(...(await listTree(root, child, excluded)));
    else if (e.isFile()) out.push(child);
  }
  return out;
}

function kubectl(args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile('kubectl', args, {timeout: 5 * 60_000, maxBuffer: 16 * 1024 * 1024, encoding: 'utf8'}, (err, stdout, stderr) => {
      if (!err) return resolve(stdout);
      reject(new UserError(`kubectl ${args[0]} failed: ${stderr.trim().split('\n').slice(-3).join(' / ') || err.message}`, {nextSteps: ['Check the kubeconfig context (kubectl config current-context) and your access to the namespace.']}));
    });
  });
}
