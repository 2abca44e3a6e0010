import {isIP} from 'node:net';

import {isScalar, parseAllDocuments, stringify, visit} from 'yaml';

import type {DforgeConfig} from '../config/schema.js';
import {PROVISIONER_ROLE} from '../control/bootstrap.js';
import {BugError, UsageError, UserError} from '../errors.js';
import {EMBEDDED_SUPERUSER} from '../postgres/embedded-install.js';
import {masterDir} from '../secrets/master-key.js';
import {InstallDir} from '../state/install-dir.js';
import {validateSlug} from '../tenants/slug.js';
import {byCodePoint, hashFiles, type RenderedFile} from './rendered-file.js';
import {readTemplate} from './sources.js';
import {assertFilled, renderTextTemplate, renderYamlDocuments, type TemplateValues} from './template.js';
import {APP_UID, AUTH_DB_ROLE, findBundledCluster, POSTGRES_INITDB_ARGS, POSTGRES_UID, PROXY_UID, resolvedImages, serviceHosts} from './values.js';

/**
 * The Kubernetes target (DESIGN §6): a kustomize directory rendered from templates/k8s/, and the
 * contract of the overlay `install --target k8s` lays over it with the Secrets.
 *
 * The rendered directory holds no secret (DESIGN §4). Workloads name their Secrets
 * (kubernetesSecrets()); the overlay in runtime/k8s/ generates them from files there and lists
 * the tenant Secrets in the app's projected volume, so adding a tenant never re-renders.
 */


/** Not one of the compose stack's images (IMAGE_SERVICES): only the backup job runs it. */
const dforgeImage = (config: DforgeConfig): string => config.images.dforge ?? `dforge/dforge:${config.release}`;

const PART_OF = 'dforge';
const selector = (name: string): Record<string, string> => ({'app.kubernetes.io/name': name, 'app.kubernetes.io/part-of': PART_OF});

/** Label values: at most 63 characters, alphanumeric at both ends (the config allows longer releases). */
const LABEL_VALUE = /^(?=.{1,63}$)[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$/;

/** The jobs' install directory: where they unpack their archive Secret, and their --dir. */
const JOB_INSTALL_DIR = '/var/lib/dforge';
const jobInstall = new InstallDir(JOB_INSTALL_DIR);
/**
 * Where the backup job mounts a local destination: its part of the backups claim, at a path of the
 * pod's own. The operator's path in dforge.yaml is a place on the operator's machine and never
 * reaches a manifest; the dforge.yaml packed for the jobs names these paths instead (install/k8s.ts).
 */
export const jobDestinationPath = (region: string, name: string): string => `/backups/${region}/${name}`;

/**
 * The master key (KEK) reaches the backup job from this Secret, which the operator creates and
 * dforge never writes: the jobs' archive Secrets carry what they need of secrets/, all of it sealed under
 * that key or public, so the Secrets dforge generates are worthless without it. It is mounted
 * read-only where the keyring lives in the unpacked install (secrets/master/: keyring.json, and
 * v<N>.key for the file provider). See kustomization.yaml for how it is created. The mounted
 * provider uses no such Secret: the jobs mount the operator's kubernetes.masterKeyVolume instead.
 */
export const MASTER_KEY_SECRET = 'dforge-master-key';

/** The variable the env and passphrase providers read their key from (src/secrets/master-key.ts); the file and mounted providers have none. */
function masterKeyVariable(config: DforgeConfig): string | undefined {
  const provider = config.keys.masterKeyProvider;
  return provider === 'env' ? 'DFORGE_MASTER_KEY' : provider === 'passphrase' ? 'DFORGE_MASTER_PASSPHRASE' : undefined;
}

/**
 * What the operator provides, once, before the jobs can open the install's secrets: the Secret
 * MASTER_KEY_SECRET and the command that creates it from the install directory `dir` (run where it
 * lives; the key never appears in argv: files, or the variable piped from the environment by the
 * shell's printf builtin), or for the mounted provider the key files of kubernetes.masterKeyVolume.
 */
export type MasterKeySetup =
  | {readonly kind: 'secret'; readonly secret: string; readonly command: string}
  | {readonly kind: 'volume'; readonly mountPath: string; readonly requirement: string};

/** `versions`: the master key versions whose material the install still uses, which the volume must hold. */
export function masterKeySetup(config: DforgeConfig, dir: InstallDir, versions: readonly number[]): MasterKeySetup {
  const keyDir = mountedKeyDirOf(config);
  if (keyDir !== undefined) {
    const files = versions.map((v) => `${keyDir}/v${v}.key`).join(', ');
    return {kind: 'volume', mountPath: keyDir, requirement: `the volume kubernetes.masterKeyVolume must provide ${files || `${keyDir}/v<N>.key`} (the files dforge reads on this host), read-only`};
  }
  const create = `kubectl -n ${config.kubernetes.namespace} create secret generic ${MASTER_KEY_SECRET}`;
  const master = shellWord(masterDir(dir));
  const variable = masterKeyVariable(config);
  const command = variable ? `printf %s "$${variable}" | ${create} --from-file=${master}/keyring.json --from-file=${variable}=/dev/stdin` : `${create} --from-file=${master}/`;
  return {kind: 'secret', secret: MASTER_KEY_SECRET, command};
}

/** The mounted provider's key directory; undefined for the providers that read MASTER_KEY_SECRET. */
function mountedKeyDirOf(config: DforgeConfig): string | undefined {
  return config.keys.masterKeyProvider === 'mounted' ? config.keys.mountedKeyDir : undefined;
}

/**
 * Whether the jobs' archives carry secrets/master/keyring.json. It holds no key material, and with
 * the Secret providers it comes in MASTER_KEY_SECRET next to the key; the mounted provider's
 * volume holds only key files, so the keyring travels with the rest of the install.
 */
export function archiveCarriesKeyring(config: DforgeConfig): boolean {
  return mountedKeyDirOf(config) !== undefined;
}

/** A path as one sh word, quoted only when it has to be. */
const shellWord = (word: string): string => (/^[A-Za-z0-9_./-]+$/.test(word) ? word : `'${word.replaceAll("'", "'\\''")}'`);

/**
 * The backup container's master key: the keyring directory from MASTER_KEY_SECRET, and for the env
 * and passphrase providers the variable from the same Secret. Those project keyring.json alone,
 * so the key is not also a file in the keyring directory. The mounted provider mounts the
 * operator's volume read-only at keys.mountedKeyDir, where it reads the keys on any host.
 */
function masterKeyAccess(config: DforgeConfig): {volume: unknown; mount: unknown; env: unknown[]} {
  const keyDir = mountedKeyDirOf(config);
  if (keyDir !== undefined) {
    const source = config.kubernetes.masterKeyVolume;
    if (source === undefined) throw new BugError('the config schema lets the mounted provider through on k8s without kubernetes.masterKeyVolume');
    refuseKeyDirOverlap(config, keyDir);
    return {volume: {name: 'master-key', ...source}, mount: {name: 'master-key', mountPath: keyDir, readOnly: true}, env: []};
  }
  const variable = masterKeyVariable(config);
  const secret = {secretName: MASTER_KEY_SECRET, ...(variable ? {items: [{key: 'keyring.json', path: 'keyring.json'}]} : {}), defaultMode: 0o440};
  return {
    volume: {name: 'master-key', secret},
    mount: {name: 'master-key', mountPath: masterDir(jobInstall), readOnly: true},
    env: variable ? [{name: variable, valueFrom: {secretKeyRef: {name: MASTER_KEY_SECRET, key: variable}}}] : [],
  };
}

/**
 * The key volume mounted over, or under, another mount of the jobs would hide one from the other:
 * the unpacked install (with the keyring), /tmp, or a local backup destination.
 */
function refuseKeyDirOverlap(config: DforgeConfig, keyDir: string): void {
  const overlaps = (a: string, b: string): boolean => a === b || a.startsWith(`${b}/`) || b.startsWith(`${a}/`);
  const taken = [JOB_INSTALL_DIR, '/tmp', '/backups'].find((other) => overlaps(keyDir, other));
  if (taken !== undefined) {
    throw new UsageError(`keys.mountedKeyDir ${keyDir} overlaps ${taken}, which the backup and bootstrap jobs mount for something else`, {
      nextSteps: ['Set keys.mountedKeyDir to a directory of its own, e.g. /var/run/dforge-kms, and mount the key store there on this host too.'],
    });
  }
}

/**
 * NetworkPolicy egress to the tenant clusters: the postgres pods, and each external cluster on its
 * port. NetworkPolicy cannot name a host, so an external cluster given by DNS name is reachable at
 * any address on its port (the pods of this namespace still refuse: their own ingress policies);
 * giving its IP address in dforge.yaml narrows the rule to that address.
 */
function databaseEgress(config: DforgeConfig): unknown[] {
  const rules: unknown[] = [];
  if (findBundledCluster(config)) rules.push({to: [{podSelector: {matchLabels: selector('postgres')}}], ports: [{protocol: 'TCP', port: 5432}]});
  // Embedded clusters live on a dforge host, not in Kubernetes: nothing in the namespace reaches them.
  const external = Object.values(config.regions).flatMap((r) => r.clusters.flatMap((c) => (c.kind === 'external' ? [{host: c.host, port: c.port}] : [])));
  return [...rules, ...egressByPort(external.map(({host, port}) => ({cidrs: hostCidrs(host), port})))];
}

/**
 * The backup job's egress: the tenant clusters, and each S3 destination's endpoint on its port:
 * its address, or the `egressCidrs` given for an endpoint named by DNS. The job holds the master
 * key, so unlike an external cluster a store is never opened to every address.
 */
function backupEgress(config: DforgeConfig, databases: unknown[]): unknown[] {
  const stores = Object.values(config.regions).flatMap((r) =>
    (r.backup?.destinations ?? []).flatMap((d) => {
      if (d.kind !== 's3') return [];
      const url = new URL(d.endpoint);
      const host = url.hostname.replace(/^\[|\]$/g, '');
      const port = url.port ? Number(url.port) : url.protocol === 'https:' ? 443 : 80;
      if (isIP(host)) return [{cidrs: hostCidrs(host), port}];
      if (d.egressCidrs === undefined) {
        throw new UsageError(`backup destination ${d.name}: its endpoint ${url.host} is a DNS name, and a Kubernetes NetworkPolicy cannot follow a name; the backup job holds the master key, so it is not opened to every address`, {
          nextSteps: [`List the store's address ranges in dforge.yaml under the destination: egressCidrs: [<cidr>, ...]`, 'Or give the endpoint as an IP address'],
          data: {destination: d.name, endpoint: d.endpoint},
        });
      }
      return [{cidrs: d.egressCidrs, port}];
    }),
  );
  return [...databases, ...egressByPort(stores)];
}

/** What NetworkPolicy can name for a host: its own address, or every address for a DNS name. */
const hostCidrs = (host: string): string[] => (isIP(host) === 4 ? [`${host}/32`] : isIP(host) === 6 ? [`${host}/128`] : ['0.0.0.0/0', '::/0']);

/** One egress rule per port, to the given address ranges. */
function egressByPort(targets: ReadonlyArray<{cidrs: readonly string[]; port: number}>): unknown[] {
  const byPort = new Map<number, Set<string>>();
  for (const {cidrs, port} of targets) {
    const set = byPort.get(port) ?? new Set<string>();
    for (const cidr of cidrs) set.add(cidr);
    byPort.set(port, set);
  }
  return [...byPort].sort(([a], [b]) => a - b).map(([port, cidrs]) => ({to: [...cidrs].sort(byCodePoint).map((cidr) => ({ipBlock: {cidr}})), ports: [{protocol: 'TCP', port}]}));
}

/** The backup job's mounts: the unpacked install, its master key, /tmp, and each local destination on the backups claim. */
function backupMounts(config: DforgeConfig, masterKeyMount: unknown): unknown[] {
  const mounts: unknown[] = [{name: 'install', mountPath: JOB_INSTALL_DIR}, masterKeyMount, {name: 'tmp', mountPath: '/tmp'}];
  const destinations = Object.entries(config.regions)
    .flatMap(([region, r]) => (r.backup?.destinations ?? []).flatMap((d) => (d.kind === 'local' ? [{region, name: d.name}] : [])))
    .sort((a, b) => byCodePoint(`${a.region}/${a.name}`, `${b.region}/${b.name}`));
  for (const d of destinations) mounts.push({name: 'backups', mountPath: jobDestinationPath(d.region, d.name), subPath: `${d.region}/${d.name}`});
  return mounts;
}

/** The manifests of the directory, in the order kustomization.yaml lists them. */
function manifestNames(config: DforgeConfig): string[] {
  return [
    'namespace.yaml',
    'networkpolicies.yaml',
    ...(findBundledCluster(config) ? ['postgres.yaml'] : []),
    'auth-db.yaml',
    'auth.yaml',
    'app.yaml',
    'proxy.yaml',
    'ingress.yaml',
    'backup-cronjob.yaml',
    'bootstrap-job.yaml',
  ];
}

async function renderText(name: string, overridesDir: string | undefined, values: TemplateValues): Promise<string> {
  const source = await readTemplate('k8s', name, overridesDir);
  const content = renderTextTemplate(source.origin, source.text, values);
  assertFilled(source.origin, content);
  return content;
}

/**
 * Kubernetes reads an explicit null as "not set": optional settings (ingressClassName,
 * storageClassName) are passed as null and their keys dropped, so the output says only what is set.
 */
function dropNullKeys(text: string): string {
  const docs = parseAllDocuments(text);
  if (!Array.isArray(docs)) return text;
  return docs
    .map((doc, i) => {
      if (doc.errors.length > 0) throw new BugError(`rendered YAML does not parse: ${doc.errors[0]!.message}`);
      visit(doc, {Pair: (_key, pair) => (isScalar(pair.value) && pair.value.value === null ? visit.REMOVE : undefined)});
      if (i > 0) doc.directives.docStart = true;
      return doc.toString({lineWidth: 0, minContentWidth: 0, indentSeq: true});
    })
    .join('');
}

/** Renders the kustomize directory for `target: k8s`; files sorted by path, byte-identical for the same input. */
export async function renderKubernetes(config: DforgeConfig, overridesDir: string | undefined): Promise<RenderedFile[]> {
  if (!LABEL_VALUE.test(config.release)) {
    throw new UserError(`release ${JSON.stringify(config.release.slice(0, 80))} cannot be a Kubernetes label value`, {
      nextSteps: ['Use at most 63 characters, starting and ending with a letter or digit (e.g. 1.4.2).'],
    });
  }
  const bundled = findBundledCluster(config);
  const common = {
    domain: config.domain,
    release: config.release,
    postgres: {superuser: EMBEDDED_SUPERUSER, provisioner: PROVISIONER_ROLE, initdbArgs: POSTGRES_INITDB_ARGS},
    auth: {role: AUTH_DB_ROLE},
    hosts: serviceHosts(config, 'k8s'),
  };
  const clusterValues = (cluster: string): TemplateValues => ({...common, postgres: {...common.postgres, cluster}});

  const postgres = bundled
    ? {conf: await renderText('postgres/postgresql.conf', overridesDir, clusterValues(bundled.name)), hba: await renderText('postgres/pg_hba.conf', overridesDir, common)}
    : undefined;
  const authDb = {conf: await renderText('postgres/postgresql.conf', overridesDir, clusterValues('auth-db')), hba: await renderText('auth-db/pg_hba.conf', overridesDir, common)};
  const proxy = {nginx: await renderText('proxy/nginx.conf', overridesDir, common)};
  // Pod-template annotations that change with the configuration, so a config change rolls the pods.
  const hash = (texts: Record<string, string>): string => hashFiles(Object.entries(texts).map(([name, content]) => ({path: name, content})));

  const manifests = manifestNames(config);
  const databases = databaseEgress(config);
  const masterKey = masterKeyAccess(config);
  const values: TemplateValues = {
    ...common,
    images: {...resolvedImages(config), dforge: dforgeImage(config)},
    k8s: {
      namespace: config.kubernetes.namespace,
      ingressNamespace: config.kubernetes.ingressNamespace,
      ingressClassName: config.kubernetes.ingressClassName ?? null,
      storageClassName: config.kubernetes.storageClassName ?? null,
      postgresStorage: config.kubernetes.postgresStorage,
    },
    uids: {postgres: POSTGRES_UID, app: APP_UID, proxy: PROXY_UID, dforge: APP_UID},
    config: {...(postgres ? {postgres} : {}), authDb, proxy},
    hashes: {...(postgres ? {postgres: hash(postgres)} : {}), authDb: hash(authDb), proxy: hash(proxy)},
    network: {
      databaseEgress: databases,
      backupEgress: backupEgress(config, databases),
      // The bootstrap Job reaches the bundled postgres and auth-db, nothing else.
      bootstrapEgress: [{to: [...(findBundledCluster(config) ? [{podSelector: {matchLabels: selector('postgres')}}] : []), {podSelector: {matchLabels: selector('auth-db')}}], ports: [{protocol: 'TCP', port: 5432}]}],
      appEgress: [{to: [{podSelector: {matchLabels: selector('auth')}}], ports: [{protocol: 'TCP', port: 8080}]}, ...databases],
    },
    backup: {
      installDir: JOB_INSTALL_DIR,
      // HOME on the writable /tmp: the root filesystem is read-only.
      env: [{name: 'HOME', value: '/tmp'}, ...masterKey.env],
      volumeMounts: backupMounts(config, masterKey.mount),
      masterKeyVolume: masterKey.volume,
    },
    // The bootstrap Job: the backup job's install and master key, without the backup destinations.
    bootstrap: {volumeMounts: [{name: 'install', mountPath: JOB_INSTALL_DIR}, masterKey.mount, {name: 'tmp', mountPath: '/tmp'}]},
    resources: manifests,
  };

  const files: RenderedFile[] = [];
  for (const name of ['kustomization.yaml', ...manifests]) {
    const source = await readTemplate('k8s', name, overridesDir);
    const content = dropNullKeys(renderYamlDocuments(source.origin, source.text, values));
    assertFilled(source.origin, content);
    files.push({path: name, content});
  }
  return files.sort((a, b) => byCodePoint(a.path, b.path));
}

/** The Secrets that carry a job's archive of the install, one per job so that each reaches only its own credentials. */
export const ARCHIVE_SECRETS = {backup: 'dforge-backup-install', bootstrap: 'dforge-bootstrap-install'} as const;

/** A Secret the rendered workloads reference by name, with the keys they read from it. */
export interface KubernetesSecret {
  readonly name: string;
  readonly type?: 'kubernetes.io/tls';
  readonly keys: readonly string[];
}

/**
 * The app's view of tenants: the catalog Secret, then one Secret per tenant. The catalog is not
 * dforge-tenant-catalog because a tenant may be called "catalog".
 */
export const CATALOG_SECRET = 'dforge-catalog';
export const TENANT_SECRET_PREFIX = 'dforge-tenant-';
export const tenantSecretName = (slug: string): string => `${TENANT_SECRET_PREFIX}${validateSlug(slug)}`;
export const TENANT_PASSWORD_KEY = 'password';

/**
 * Every Secret the overlay generates for the rendered directory, sorted by name; the overlay adds
 * the tenant Secrets. The workloads reference these and MASTER_KEY_SECRET, which dforge never writes.
 */
export function kubernetesSecrets(config: DforgeConfig): KubernetesSecret[] {
  const secrets: KubernetesSecret[] = [
    {name: 'dforge-ca', keys: ['ca.crt']},
    // One server certificate for postgres and auth-db (SANs postgres and auth-db), as in compose.
    {name: 'dforge-postgres-tls', type: 'kubernetes.io/tls', keys: ['tls.crt', 'tls.key']},
    {name: 'dforge-auth-db-superuser', keys: ['password']},
    {name: 'dforge-auth-db-password', keys: ['password']},
    {name: 'dforge-jwt-signing-key', keys: ['jwt-signing-key.pem']},
    // Public, but apart from the signing key so that the app's pods reference no private key.
    {name: 'dforge-jwks', keys: ['jwks.json']},
    {name: 'dforge-proxy-tls', type: 'kubernetes.io/tls', keys: ['tls.crt', 'tls.key']},
    {name: CATALOG_SECRET, keys: ['catalog.json']},
    // Each job's share of the install's sealed store (install/k8s.ts: archiveSecrets).
    {name: ARCHIVE_SECRETS.backup, keys: ['install.tar']},
    {name: ARCHIVE_SECRETS.bootstrap, keys: ['install.tar']},
    ...(findBundledCluster(config) ? [{name: 'dforge-postgres-superuser', keys: ['password']}] : []),
  ];
  return secrets.sort((a, b) => byCodePoint(a.name, b.name));
}

/** Where the overlay expects a Secret's key as a file: secrets/<secret>/<key>, under runtime/k8s/. */
export const overlaySecretFile = (secret: string, key: string): string => `secrets/${secret}/${key}`;

/**
 * The overlay `install --target k8s` writes to runtime/k8s/ next to the Secret files: its
 * kustomization (the rendered directory as base, one secretGenerator per Secret) and tenants.yaml.
 * It uses `bases` and `patchesStrategicMerge` because the kustomize inside kubectl 1.20 knows no
 * other way to take a directory or a patch; current kubectl still accepts both (with a warning).
 * Generated Secret names carry a content hash, which kustomize writes into every reference, so a
 * rotated secret rolls exactly the pods that read it.
 *
 * `base` is the rendered directory relative to the overlay; `tenants` are the slugs whose password
 * the app may read (the active ones: as in compose, a suspended tenant is in catalog.json only).
 */
export function renderKubernetesOverlay(config: DforgeConfig, options: {base: string; tenants: readonly string[]}): RenderedFile[] {
  const slugs = [...new Set(options.tenants.map(validateSlug))].sort(byCodePoint);
  const generated: KubernetesSecret[] = [...kubernetesSecrets(config), ...slugs.map((slug) => ({name: tenantSecretName(slug), keys: [TENANT_PASSWORD_KEY]}))];
  const kustomization = {
    apiVersion: 'kustomize.config.k8s.io/v1beta1',
    kind: 'Kustomization',
    namespace: config.kubernetes.namespace,
    bases: [options.base],
    generatorOptions: {labels: {'app.kubernetes.io/part-of': PART_OF, 'app.kubernetes.io/version': config.release}},
    secretGenerator: generated.map((s) => ({name: s.name, ...(s.type ? {type: s.type} : {}), files: s.keys.map((key) => overlaySecretFile(s.name, key))})),
    patchesStrategicMerge: ['tenants.yaml'],
  };
  // The whole source list of the app's "tenants" volume: a list without a merge key is replaced, not merged.
  const tenantsPatch = {
    apiVersion: 'apps/v1',
    kind: 'Deployment',
    metadata: {name: 'app', namespace: config.kubernetes.namespace},
    spec: {
      template: {
        spec: {
          volumes: [
            {
              name: 'tenants',
              projected: {
                sources: [
                  {secret: {name: CATALOG_SECRET, items: [{key: 'catalog.json', path: 'catalog.json'}]}},
                  ...slugs.map((slug) => ({secret: {name: tenantSecretName(slug), items: [{key: TENANT_PASSWORD_KEY, path: `${slug}.password`}]}})),
                ],
              },
            },
          ],
        },
      },
    },
  };
  const header = '# Written by dforge install (src/render/k8s.ts); replaced on every install and tenant change.\n';
  const yaml = (value: unknown): string => header + stringify(value, {lineWidth: 0, minContentWidth: 0, indentSeq: true});
  return [
    {path: 'kustomization.yaml', content: yaml(kustomization)},
    {path: 'tenants.yaml', content: yaml(tenantsPatch)},
  ];
}
