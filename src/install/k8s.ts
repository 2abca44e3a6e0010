import {promises as fs} from 'node:fs';
import path from 'node:path';

import {parseDocument} from 'yaml';

import {loadCertificateWithKey} from '../certs/store.js';
import type {DforgeConfig} from '../config/schema.js';
import {caCertFile} from '../certs/pki-paths.js';
import {clustersOf, provisionerSecret, superuserSecret} from '../control/clusters.js';
import {PartialError, UserError} from '../errors.js';
import {openKeyServices, type KeyServices} from '../keys/context.js';
import {jwksFile, jwtPrivateKeyName, readJwtKeys} from '../keys/jwt.js';
import {ensureSealedPassword} from '../keys/sealed-password.js';
import {clusterReachable, k8sOverlayDir, k8sRenderedDir, kubectl, publishedTenants, writeOverlayKustomization} from '../k8s/overlay.js';
import {ARCHIVE_SECRETS, archiveCarriesKeyring, CATALOG_SECRET, jobDestinationPath, kubernetesSecrets, masterKeySetup, overlaySecretFile, renderKubernetes, type MasterKeySetup} from '../render/k8s.js';
import {byCodePoint, writeRendered} from '../render/rendered-file.js';
import {findBundledCluster} from '../render/values.js';
import {ensureRuntimeDir, ROOT, writeRuntimeFile} from '../runtime/runtime-files.js';
import {catalogText, withTenantCatalogLock} from '../runtime/tenant-catalog.js';
import {keyringFile, readKeyringState} from '../secrets/master-key.js';
import type {InstallDir} from '../state/install-dir.js';
import type {Step} from '../ui/tasks.js';
import {AUTH_DB_PASSWORD_SECRET, AUTH_DB_SUPERUSER_SECRET} from './secrets.js';
import type {InstallContext} from './context.js';


/**
 * The k8s target after the common steps: render the kustomize base, write the overlay with one
 * file per Secret key, apply it with kubectl, then wait for the bootstrap Job (the databases:
 * dforge_control, the provisioner, auth-db). Without a reachable cluster, or without the
 * operator's master key Secret, it stops with exit 4 (incomplete) after writing, naming the
 * commands that finish it. The mounted provider has no Secret to check: its volume is the
 * operator's, and install names the key files it must hold.
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
        const config = ctx.config!;
        const next = await nextCommands(dir, config);
        if (!(await clusterReachable())) {
          ctx.applied = false;
          const masterKey = next.masterKey.kind === 'secret' ? [next.masterKey.command] : [];
          throw new PartialError(`the install is incomplete: rendered ${k8sRenderedDir(dir)} and wrote the overlay ${k8sOverlayDir(dir)}, but no Kubernetes cluster is reachable with the current kubeconfig, so nothing was applied and the databases are not bootstrapped`, {
            nextSteps: [
              'Point kubectl at the cluster and run dforge install --target k8s again, or run these from this host:',
              next.masterKey.kind === 'secret' ? `${next.masterKey.command}   (once: the master key Secret, if the namespace has none yet)` : `(nothing to create for the master key: ${next.masterKey.requirement})`,
              next.deleteJob,
              next.apply,
              next.wait,
            ],
            data: {rendered: k8sRenderedDir(dir), overlay: k8sOverlayDir(dir), commands: [...masterKey, next.deleteJob, next.apply, next.wait]},
          });
        }
        await kubectl(['-n', config.kubernetes.namespace, 'delete', 'job', BOOTSTRAP_JOB, '--ignore-not-found', '--wait=true']);
        await kubectl(['apply', '-k', k8sOverlayDir(dir)]);
        ctx.applied = true;
        return `applied ${k8sOverlayDir(dir)}`;
      },
    },
    {
      title: 'Bootstrap',
      async run(ctx) {
        const config = ctx.config!;
        const {masterKey, deleteJob, apply, wait} = await nextCommands(dir, config);
        if (masterKey.kind === 'secret') {
          // -o name prints the name only: nothing of the Secret's data leaves the cluster.
          const present = await kubectl(['-n', config.kubernetes.namespace, 'get', 'secret', masterKey.secret, '-o', 'name']).then(
            () => true,
            () => false,
          );
          if (!present) {
            throw new PartialError(`the install is incomplete: the overlay is applied, but the Job ${BOOTSTRAP_JOB} cannot open the install's secrets until the Secret ${masterKey.secret} exists, which dforge never creates`, {
              nextSteps: ['Create it from this host, then wait for the bootstrap:', masterKey.command, wait],
              data: {commands: [masterKey.command, wait]},
            });
          }
        }
        await kubectl(waitArgs(config)).catch((err: unknown) => {
          throw new PartialError(`the install is incomplete: the overlay is applied, but the Job ${BOOTSTRAP_JOB} did not complete within ${BOOTSTRAP_TIMEOUT_S}s`, {
            nextSteps: [
              `See why: kubectl -n ${config.kubernetes.namespace} logs job/${BOOTSTRAP_JOB}`,
              ...(masterKey.kind === 'volume' ? [`A pod that cannot start, or cannot open the install's secrets, may lack its master key: ${masterKey.requirement}.`] : []),
              'Fix it, then run again:',
              deleteJob,
              apply,
              wait,
            ],
            cause: err,
          });
        });
        return `${BOOTSTRAP_JOB} complete: dforge_control and the auth database are ready`;
      },
    },
  ];
}

/** The Job that bootstraps the databases in the cluster (templates/k8s/bootstrap-job.yaml), and how long install waits for it. */
const BOOTSTRAP_JOB = 'dforge-bootstrap';
const BOOTSTRAP_TIMEOUT_S = 600;

const waitArgs = (config: DforgeConfig): string[] => ['-n', config.kubernetes.namespace, 'wait', '--for=condition=complete', `job/${BOOTSTRAP_JOB}`, `--timeout=${BOOTSTRAP_TIMEOUT_S}s`];

/** The commands that finish a k8s install by hand, run where the install directory is, with kubectl pointed at the cluster. */
async function nextCommands(dir: InstallDir, config: DforgeConfig): Promise<{masterKey: MasterKeySetup; deleteJob: string; apply: string; wait: string}> {
  const live = ((await readKeyringState(dir))?.versions ?? []).filter((v) => v.destroyedAt === undefined).map((v) => v.version);
  return {
    masterKey: masterKeySetup(config, dir, live),
    // A Job's pod template cannot change: the previous run goes before the apply creates this one.
    deleteJob: `kubectl -n ${config.kubernetes.namespace} delete job ${BOOTSTRAP_JOB} --ignore-not-found`,
    apply: `kubectl apply -k ${k8sOverlayDir(dir)}`,
    wait: `kubectl ${waitArgs(config).join(' ')}`,
  };
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
  // Every credential is sealed before the archive is packed: the archive carries the sealed store,
  // and one sealed after it would change the next run's archive (and roll the pods) for nothing.
  // The provisioner's is not in any Secret of its own: the bootstrap Job sets it on the cluster
  // and the backup job logs in with it, both from the archive.
  const passwords = {
    authDbSuperuser: await sealed(AUTH_DB_SUPERUSER_SECRET),
    authDb: await sealed(AUTH_DB_PASSWORD_SECRET),
    ...(bundled ? {superuser: await sealed(superuserSecret(bundled.name)), provisioner: await sealed(provisionerSecret(bundled.name))} : {}),
  };
  const values: Record<string, Record<string, string | Buffer>> = {
    'dforge-ca': {'ca.crt': caPem},
    'dforge-postgres-tls': {'tls.crt': postgresTls.certPem, 'tls.key': postgresTls.keyPem},
    'dforge-auth-db-superuser': {password: passwords.authDbSuperuser},
    'dforge-auth-db-password': {password: passwords.authDb},
    'dforge-jwt-signing-key': {'jwt-signing-key.pem': (await keys.sealed.get(jwtPrivateKeyName(signing.kid))).toString('utf8')},
    'dforge-jwks': {'jwks.json': await fs.readFile(jwksFile(dir), 'utf8')},
    'dforge-proxy-tls': {'tls.crt': `${proxyTls.certPem.trimEnd()}\n${caPem.trimEnd()}\n`, 'tls.key': proxyTls.keyPem},
    [ARCHIVE_SECRETS.backup]: {'install.tar': await installArchive(dir, archiveSecrets(config, 'backup'), archiveCarriesKeyring(config))},
    [ARCHIVE_SECRETS.bootstrap]: {'install.tar': await installArchive(dir, archiveSecrets(config, 'bootstrap'), archiveCarriesKeyring(config))},
    ...(passwords.superuser !== undefined ? {'dforge-postgres-superuser': {password: passwords.superuser}} : {}),
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

/**
 * The sealed secrets each job's archive carries, by name, and nothing else of secrets/ (no CA or
 * service key, no JWT key): the backup job logs in as the provisioner of each cluster and writes
 * to its destinations; the bootstrap Job sets up the bundled cluster and auth-db as their
 * superusers. Only the bootstrap Job's Secret carries a superuser.
 */
export function archiveSecrets(config: DforgeConfig, workload: 'backup' | 'bootstrap'): string[] {
  if (workload === 'backup') {
    const provisioners = [...clustersOf(config).keys()].map(provisionerSecret);
    const destinations = Object.values(config.regions).flatMap((r) => (r.backup?.destinations ?? []).flatMap((d) => (d.kind === 's3' ? [d.credentials.secret] : [])));
    return [...new Set([...provisioners, ...destinations])].sort(byCodePoint);
  }
  const bundled = findBundledCluster(config);
  return [...(bundled ? [superuserSecret(bundled.name), provisionerSecret(bundled.name)] : []), AUTH_DB_SUPERUSER_SECRET, AUTH_DB_PASSWORD_SECRET].sort(byCodePoint);
}

/**
 * What a job gets of the install, as one tar for its Secret (ARCHIVE_SECRETS), named file by
 * file: dforge.yaml, the CA certificate its TLS connections verify against, and the sealed
 * secrets `names` (those that exist), each under its 0700 directories. All of them are sealed
 * under the master key or public; the master key reaches the job only from the operator's
 * dforge-master-key or key volume, so no Secret dforge generates can open the others. With
 * `keyring`, secrets/master/keyring.json too (no key material: see archiveCarriesKeyring). Fixed mtimes and sorted
 * entries: the same install gives the same bytes, and the Secret's hash changes only when its
 * content does.
 */
export async function installArchive(dir: InstallDir, names: readonly string[], keyring = false): Promise<Buffer> {
  const tar = await import('tar');
  const rel = (file: string): string => path.relative(dir.root, file);
  const ca = rel(caCertFile(dir));
  const files: string[] = keyring ? [rel(keyringFile(dir))] : [];
  for (const name of names) {
    const file = dir.secretPath(`${name}.sealed`);
    if (await fs.stat(file).then((st) => st.isFile(), () => false)) files.push(rel(file));
  }
  const dirs = new Set<string>();
  for (const file of files) for (let d = path.dirname(file); d !== '.'; d = path.dirname(d)) dirs.add(d);
  const entries = [rel(dir.configFile), path.dirname(ca), ca, ...[...dirs, ...files].sort(byCodePoint)];
  // Packed from a private copy, so the jobs' dforge.yaml can name the pod's own paths.
  const stage = await fs.mkdtemp(path.join(dir.runtimeDir, '.job-install-'));
  try {
    for (const entry of entries.slice(1)) {
      const from = path.join(dir.root, entry);
      if ((await fs.stat(from)).isDirectory()) await fs.mkdir(path.join(stage, entry), {recursive: true, mode: 0o700});
      else await fs.copyFile(from, path.join(stage, entry));
    }
    await fs.writeFile(path.join(stage, entries[0]!), jobConfigText(await fs.readFile(dir.configFile, 'utf8')), {mode: 0o600});
    const chunks: Buffer[] = [];
    const stream = tar.c({cwd: stage, portable: true, mtime: new Date(0), noDirRecurse: true}, entries);
    for await (const chunk of stream) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks);
  } finally {
    await fs.rm(stage, {recursive: true, force: true});
  }
}

/** dforge.yaml as the jobs see it: each local destination at the path the backup job mounts it on. */
export function jobConfigText(text: string): string {
  const doc = parseDocument(text);
  const regions = (doc.toJS() as {regions?: Record<string, {backup?: {destinations?: Array<{name: string; kind: string}>}}>}).regions ?? {};
  for (const [region, r] of Object.entries(regions)) {
    (r.backup?.destinations ?? []).forEach((d, i) => {
      if (d.kind === 'local') doc.setIn(['regions', region, 'backup', 'destinations', i, 'path'], jobDestinationPath(region, d.name));
    });
  }
  return doc.toString();
}

