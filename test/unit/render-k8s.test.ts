import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {internalSubtrees, serviceHost} from '../../src/certs/service-names.js';
import {generateCertificates} from '../../src/certs/service.js';
import {configSchema, type DforgeConfig} from '../../src/config/schema.js';
import {caCertFile} from '../../src/certs/pki-paths.js';
import {UserError} from '../../src/errors.js';
import {archiveSecrets, installArchive, jobConfigText} from '../../src/install/k8s.js';
import {AUTH_DB_PASSWORD_SECRET, AUTH_DB_SUPERUSER_SECRET} from '../../src/install/secrets.js';
import {openKeyServices} from '../../src/keys/context.js';
import {initKeys} from '../../src/keys/init.js';
import {ensureSealedPassword} from '../../src/keys/sealed-password.js';
import {CATALOG_SECRET, kubernetesSecrets, MASTER_KEY_SECRET, renderKubernetes, renderKubernetesOverlay} from '../../src/render/k8s.js';
import type {RenderedFile} from '../../src/render/rendered-file.js';
import {caNameConstraints} from '../../src/pki/index.js';
import {namesOutside} from '../../src/pki/names.js';
import {masterDir} from '../../src/secrets/master-key.js';
import {InstallDir} from '../../src/state/install-dir.js';
import {tempInstall} from '../helpers/install-fixture.js';
import {objectId, parseManifests, podTemplates, schemaProblems, unknownFieldProblems, type Container, type K8sObject} from '../helpers/k8s-objects.js';
import {allowedFlows, type Endpoint} from '../helpers/network-policy.js';
import {confSettings, HARDENED_SETTINGS} from '../helpers/postgres-hardening.js';
import {projectSecretVolume} from '../helpers/secret-projection.js';

const base = {
  version: 1,
  domain: 'dforge.example.com',
  target: 'k8s',
  primaryRegion: 'eu',
  release: '1.4.2',
  regions: {
    eu: {
      jurisdiction: 'EU',
      clusters: [{name: 'eu-1', kind: 'bundled'}],
      backup: {destinations: [{name: 'eu-local', kind: 'local', path: '/var/backups/dforge/eu'}]},
    },
    us: {
      jurisdiction: 'US',
      clusters: [{name: 'us-1', kind: 'external', host: '192.0.2.10', admin: {secret: 'postgres/us-1-admin'}}],
      backup: {destinations: [{name: 'us-local', kind: 'local', path: '/var/backups/dforge/us'}]},
    },
  },
  kubernetes: {namespace: 'dforge', ingressClassName: 'nginx', storageClassName: 'encrypted-ssd'},
};

const config = (patch: Record<string, unknown> = {}): DforgeConfig => configSchema.parse({...base, ...patch});

/** No bundled cluster: tenant data on external servers only, one of them named by DNS. */
const externalOnly = (): DforgeConfig =>
  config({
    regions: {eu: {clusters: [{name: 'eu-1', kind: 'external', host: 'pg.eu.example.com', admin: {secret: 'postgres/eu-1-admin'}}]}},
    kubernetes: {},
  });

const objectsOf = (files: readonly RenderedFile[]): K8sObject[] => files.filter((f) => f.path !== 'kustomization.yaml').flatMap((f) => parseManifests(f.content));

const find = (objects: readonly K8sObject[], kind: string, name: string): K8sObject => {
  const found = objects.find((o) => o.kind === kind && o.metadata.name === name);
  if (!found) throw new Error(`no ${kind}/${name} rendered`);
  return found;
};

const allContainers = (spec: {containers: Container[]; initContainers?: Container[]}): Container[] => [...(spec.initContainers ?? []), ...spec.containers];

/** Every key path of a value ("spec.template.spec.containers[].image"), for comparing structure without values. */
function keyPaths(value: unknown, prefix = ''): string[] {
  if (Array.isArray(value)) return [`${prefix}[]`, ...value.flatMap((v) => keyPaths(v, `${prefix}[]`))];
  if (value !== null && typeof value === 'object') return Object.entries(value).flatMap(([k, v]) => [`${prefix}.${k}`, ...keyPaths(v, `${prefix}.${k}`)]);
  return [];
}

describe('renderKubernetes', () => {
  it('renders byte-identical output twice, as this set of files', async () => {
    const first = await renderKubernetes(config(), undefined);
    const second = await renderKubernetes(config(), undefined);
    expect(second).toEqual(first);
    expect(first.map((f) => f.path)).toEqual([
      'app.yaml',
      'auth-db.yaml',
      'auth.yaml',
      'backup-cronjob.yaml',
      'bootstrap-job.yaml',
      'ingress.yaml',
      'kustomization.yaml',
      'namespace.yaml',
      'networkpolicies.yaml',
      'postgres.yaml',
      'proxy.yaml',
    ]);
    const kustomization = parseManifests(first.find((f) => f.path === 'kustomization.yaml')!.content)[0]!;
    expect(kustomization.resources).toEqual(['namespace.yaml', 'networkpolicies.yaml', 'postgres.yaml', 'auth-db.yaml', 'auth.yaml', 'app.yaml', 'proxy.yaml', 'ingress.yaml', 'backup-cronjob.yaml', 'bootstrap-job.yaml']);
    expect(objectsOf(first).map(objectId)).toEqual([
      'Service/app',
      'Deployment/app',
      'ServiceAccount/dforge-app',
      'PodDisruptionBudget/dforge-app',
      'ConfigMap/auth-db-config',
      'Service/auth-db',
      'StatefulSet/auth-db',
      'ServiceAccount/dforge-auth-db',
      'Service/auth',
      'Deployment/auth',
      'ServiceAccount/dforge-auth',
      'PodDisruptionBudget/dforge-auth',
      'PersistentVolumeClaim/dforge-backups',
      'CronJob/dforge-backup',
      'ServiceAccount/dforge-backup',
      'Job/dforge-bootstrap',
      'ServiceAccount/dforge-bootstrap',
      'Ingress/dforge',
      'Namespace/dforge',
      'NetworkPolicy/default-deny',
      'NetworkPolicy/allow-dns',
      'NetworkPolicy/proxy',
      'NetworkPolicy/app',
      'NetworkPolicy/auth',
      'NetworkPolicy/auth-db',
      'NetworkPolicy/backup',
      'NetworkPolicy/bootstrap',
      'ConfigMap/postgres-config',
      'Service/postgres',
      'StatefulSet/postgres',
      'NetworkPolicy/postgres',
      'ServiceAccount/dforge-postgres',
      'ConfigMap/proxy-config',
      'Service/proxy',
      'Deployment/proxy',
      'ServiceAccount/dforge-proxy',
      'PodDisruptionBudget/dforge-proxy',
    ]);
  });

  it('omits the bundled postgres, its Secret and its flows when every cluster is external', async () => {
    const files = await renderKubernetes(externalOnly(), undefined);
    expect(files.map((f) => f.path)).not.toContain('postgres.yaml');
    const kustomization = parseManifests(files.find((f) => f.path === 'kustomization.yaml')!.content)[0]!;
    expect(kustomization.resources).not.toContain('postgres.yaml');
    const objects = objectsOf(files);
    expect(objects.filter((o) => o.metadata.name === 'postgres' || o.metadata.name === 'postgres-config')).toEqual([]);
    expect(kubernetesSecrets(externalOnly()).map((s) => s.name)).not.toContain('dforge-postgres-superuser');
    expect(kubernetesSecrets(config()).map((s) => s.name)).toContain('dforge-postgres-superuser');
  });

  const variants: Array<[string, () => DforgeConfig]> = [
    ['bundled and external clusters, class names set', () => config()],
    ['external clusters only, defaults', externalOnly],
  ];

  it.each(variants)('every object validates against the Kubernetes schemas (%s)', async (_name, make) => {
    const objects = objectsOf(await renderKubernetes(make(), undefined));
    expect(objects.length).toBeGreaterThan(10);
    expect(await schemaProblems(objects)).toEqual([]);
  });

  it('no object holds a field the Kubernetes API does not know', async () => {
    const objects = [...objectsOf(await renderKubernetes(config(), undefined)), ...objectsOf(await renderKubernetes(externalOnly(), undefined))];
    expect(await unknownFieldProblems(objects)).toEqual([]);
  });

  it('the unknown-field check catches a misspelt field', async () => {
    const objects = objectsOf(await renderKubernetes(config(), undefined));
    const proxy = structuredClone(find(objects, 'Deployment', 'proxy')) as any;
    proxy.spec.template.spec.containers[0].securityContext.readOnlyRootFileSystem = true;
    const problems = await unknownFieldProblems([proxy]);
    expect(problems.join('\n')).toMatch(/Deployment\/proxy: .*readOnlyRootFileSystem/);
  });

  it('labels every object and pod with name, part-of and version; selectors and claim templates never carry the version', async () => {
    const objects = objectsOf(await renderKubernetes(config(), undefined));
    for (const o of objects) {
      expect(o.metadata.labels, objectId(o)).toMatchObject({'app.kubernetes.io/part-of': 'dforge', 'app.kubernetes.io/version': '1.4.2'});
      expect(o.metadata.labels?.['app.kubernetes.io/name'], objectId(o)).toBeTruthy();
      if (o.kind !== 'Namespace') expect(o.metadata.namespace, objectId(o)).toBe('dforge');
    }
    for (const t of podTemplates(objects)) {
      expect(t.metadata.labels, t.owner).toMatchObject({'app.kubernetes.io/part-of': 'dforge', 'app.kubernetes.io/version': '1.4.2'});
    }
    // Selectors and volumeClaimTemplates are immutable: a version in them would make upgrades unappliable.
    for (const o of objects.filter((x) => x.kind === 'Deployment' || x.kind === 'StatefulSet')) {
      const spec = o.spec as {selector: {matchLabels: Record<string, string>}; template: {metadata: {labels: Record<string, string>}}; volumeClaimTemplates?: Array<{metadata: {labels: Record<string, string>}}>};
      expect(Object.keys(spec.selector.matchLabels).sort(), objectId(o)).toEqual(['app.kubernetes.io/name', 'app.kubernetes.io/part-of']);
      expect(spec.template.metadata.labels, objectId(o)).toMatchObject(spec.selector.matchLabels);
      for (const claim of spec.volumeClaimTemplates ?? []) expect(claim.metadata.labels, objectId(o)).not.toHaveProperty('app.kubernetes.io/version');
    }
    for (const s of objects.filter((x) => x.kind === 'Service')) {
      const selector = (s.spec as {selector: Record<string, string>}).selector;
      const backing = podTemplates(objects).filter((t) => Object.entries(selector).every(([k, v]) => t.metadata.labels?.[k] === v));
      expect(backing.length, `pods behind ${objectId(s)}`).toBe(1);
    }
  });

  it('runs every pod restricted: non-root, no privilege escalation, read-only root, no capabilities, bounded resources, no token', async () => {
    for (const make of [config, externalOnly]) {
      const objects = objectsOf(await renderKubernetes(make(), undefined));
      const templates = podTemplates(objects);
      expect(templates.map((t) => t.owner).sort()).toEqual(
        make === config
          ? ['CronJob/dforge-backup', 'Deployment/app', 'Deployment/auth', 'Deployment/proxy', 'Job/dforge-bootstrap', 'StatefulSet/auth-db', 'StatefulSet/postgres']
          : ['CronJob/dforge-backup', 'Deployment/app', 'Deployment/auth', 'Deployment/proxy', 'Job/dforge-bootstrap', 'StatefulSet/auth-db'],
      );
      for (const {owner, spec} of templates) {
        expect(spec.automountServiceAccountToken, owner).toBe(false);
        for (const field of ['hostNetwork', 'hostPID', 'hostIPC']) expect(spec[field], `${owner} ${field}`).toBeUndefined();
        const pod = spec.securityContext as Record<string, unknown>;
        expect(pod, owner).toMatchObject({runAsNonRoot: true, seccompProfile: {type: 'RuntimeDefault'}});
        for (const id of ['runAsUser', 'runAsGroup', 'fsGroup']) {
          expect(Number.isInteger(pod[id]) && (pod[id] as number) > 0, `${owner} ${id} = ${String(pod[id])}`).toBe(true);
        }
        const emptyDirs = new Set((spec.volumes ?? []).filter((v) => v.emptyDir || v.persistentVolumeClaim).map((v) => v.name));
        for (const v of spec.volumes ?? []) expect(v.hostPath, `${owner} volume ${v.name}`).toBeUndefined();
        const claimed = new Set(((objects.find((o) => objectId(o) === owner)!.spec as {volumeClaimTemplates?: Array<{metadata: {name: string}}>}).volumeClaimTemplates ?? []).map((c) => c.metadata.name));
        for (const c of allContainers(spec)) {
          const where = `${owner} container ${c.name}`;
          expect(c.securityContext, where).toEqual({runAsNonRoot: true, allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: ['ALL']}});
          const resources = c.resources as {requests: Record<string, string>; limits: Record<string, string>};
          for (const kind of ['requests', 'limits'] as const) {
            expect(Object.keys(resources?.[kind] ?? {}).sort(), `${where} ${kind}`).toEqual(['cpu', 'ephemeral-storage', 'memory']);
          }
          // With a read-only root, everything writable is an emptyDir or a volume claim, and /tmp is one of them.
          const mounts = (c.volumeMounts ?? []) as Array<{name: string; mountPath: string; readOnly?: boolean}>;
          for (const m of mounts.filter((x) => !x.readOnly)) expect(emptyDirs.has(m.name) || claimed.has(m.name), `${where} writes ${m.mountPath}`).toBe(true);
          if (!spec.initContainers?.includes(c)) expect(mounts.map((m) => m.mountPath), where).toContain('/tmp');
        }
        // Long-running containers are probed; a batch job's run is bounded by activeDeadlineSeconds instead.
        if (!owner.startsWith('CronJob/') && !owner.startsWith('Job/')) {
          for (const c of spec.containers) {
            expect(c.readinessProbe, `${owner} ${c.name} readiness`).toBeDefined();
            expect(c.livenessProbe, `${owner} ${c.name} liveness`).toBeDefined();
          }
        }
      }
    }
  });

  it('holds no Secret: workloads reference exactly the Secrets of the overlay contract and the master key, group-readable only', async () => {
    for (const make of [config, externalOnly]) {
      const files = await renderKubernetes(make(), undefined);
      const objects = objectsOf(files);
      expect(objects.filter((o) => o.kind === 'Secret')).toEqual([]);
      expect(files.map((f) => f.content).join('\n')).not.toMatch(/PRIVATE KEY|stringData|\bdata:\s*\n\s+password/);
      const referenced = new Set<string>();
      const modes: number[] = [];
      for (const {spec} of podTemplates(objects)) {
        for (const v of spec.volumes ?? []) {
          const secret = v.secret as {secretName: string; defaultMode?: number} | undefined;
          const projected = v.projected as {defaultMode?: number; sources: Array<{secret?: {name: string}}>} | undefined;
          if (secret) {
            referenced.add(secret.secretName);
            modes.push(secret.defaultMode ?? -1);
          }
          if (projected) {
            modes.push(projected.defaultMode ?? -1);
            for (const s of projected.sources) if (s.secret) referenced.add(s.secret.name);
          }
        }
        // With the default file provider; the env and passphrase providers read the master key from a variable.
        for (const c of allContainers(spec)) expect(JSON.stringify(c.env ?? []), 'secrets come as files, never as env').not.toMatch(/secretKeyRef/);
      }
      for (const o of objects.filter((x) => x.kind === 'Ingress')) {
        for (const tls of (o.spec as {tls: Array<{secretName: string}>}).tls) referenced.add(tls.secretName);
      }
      expect([...referenced].sort()).toEqual([...kubernetesSecrets(make()).map((s) => s.name), MASTER_KEY_SECRET].sort());
      // The overlay generates every other Secret; the master key's is the operator's alone.
      expect(kubernetesSecrets(make()).map((s) => s.name)).not.toContain(MASTER_KEY_SECRET);
      // 0440: the pod's group (fsGroup) reads, nobody writes; PostgreSQL accepts a root-owned key so.
      expect(new Set(modes)).toEqual(new Set([0o440]));
    }
  });

  it('configures PostgreSQL for TLS 1.3, scram, checksums, CIS logging and sameuser, auth-db under its own name, and the proxy on 8080', async () => {
    const objects = objectsOf(await renderKubernetes(config(), undefined));
    const postgres = (find(objects, 'ConfigMap', 'postgres-config') as {data?: Record<string, string>}).data!;
    const authDb = (find(objects, 'ConfigMap', 'auth-db-config') as {data?: Record<string, string>}).data!;
    for (const conf of [postgres['postgresql.conf']!, authDb['postgresql.conf']!]) expect(confSettings(conf)).toMatchObject(HARDENED_SETTINGS);
    for (const owner of ['StatefulSet/postgres', 'StatefulSet/auth-db']) {
      const [container] = podTemplates(objects).find((t) => t.owner === owner)!.spec.containers;
      const initdbArgs = (container!.env as Array<{name: string; value?: string}>).find((e) => e.name === 'POSTGRES_INITDB_ARGS')?.value;
      expect(initdbArgs?.split(' '), owner).toEqual(expect.arrayContaining(['--data-checksums', '--auth-local=scram-sha-256', '--auth-host=scram-sha-256']));
    }
    expect(postgres['postgresql.conf']).toContain("cluster_name = 'eu-1'");
    expect(authDb['postgresql.conf']).toContain("cluster_name = 'auth-db'");
    const rules = (hba: string): string[] => hba.split('\n').filter((l) => l.trim() && !l.startsWith('#')).map((l) => l.split(/\s+/).join(' '));
    // The superuser over TLS: the bootstrap Job's way in, which the NetworkPolicy limits to app, backup and bootstrap pods.
    expect(rules(postgres['pg_hba.conf']!)).toEqual([
      'local all dforge_admin scram-sha-256',
      'hostssl all dforge_admin all scram-sha-256',
      'hostssl all dforge_provisioner all scram-sha-256',
      'hostssl sameuser all all scram-sha-256',
    ]);
    expect(rules(authDb['pg_hba.conf']!)).toEqual(['local all dforge_admin scram-sha-256', 'hostssl all dforge_admin all scram-sha-256', 'hostssl sameuser dforge_auth all scram-sha-256']);
    const nginx = (find(objects, 'ConfigMap', 'proxy-config') as {data?: Record<string, string>}).data!['nginx.conf']!;
    expect(nginx).toMatch(/listen 8080 default_server;/);
    expect(nginx).toMatch(/server_name dforge\.example\.com;/);
    expect(nginx).not.toMatch(/listen (80|443)\b/);
  });

  it('renders the Ingress with TLS for the domain, and leaves unset class names out', async () => {
    const withClass = objectsOf(await renderKubernetes(config(), undefined));
    expect(find(withClass, 'Ingress', 'dforge').spec).toMatchObject({
      ingressClassName: 'nginx',
      tls: [{hosts: ['dforge.example.com'], secretName: 'dforge-proxy-tls'}],
      rules: [{host: 'dforge.example.com', http: {paths: [{path: '/', pathType: 'Prefix', backend: {service: {name: 'proxy', port: {name: 'http'}}}}]}}],
    });
    expect(find(withClass, 'PersistentVolumeClaim', 'dforge-backups').spec).toMatchObject({storageClassName: 'encrypted-ssd'});
    const unset = objectsOf(await renderKubernetes(externalOnly(), undefined));
    const paths = unset.flatMap((o) => keyPaths(o));
    expect(paths.filter((p) => /ingressClassName|storageClassName/.test(p))).toEqual([]);
    expect(JSON.stringify(unset)).not.toContain('null');
  });

  it('an override in <dir>/templates/k8s/ shadows the packaged template and rolls the pods that read it', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-k8s-override-'));
    try {
      const packaged = objectsOf(await renderKubernetes(config(), dir));
      await fs.mkdir(path.join(dir, 'k8s', 'proxy'), {recursive: true});
      await fs.writeFile(path.join(dir, 'k8s', 'proxy', 'nginx.conf'), 'events {}\nhttp { server { listen 8080; server_name {{ domain | nginx }}; } }\n');
      const overridden = objectsOf(await renderKubernetes(config(), dir));
      const conf = (objects: K8sObject[]): string => (find(objects, 'ConfigMap', 'proxy-config') as {data?: Record<string, string>}).data!['nginx.conf']!;
      const hash = (objects: K8sObject[], kind: string, name: string): string | undefined =>
        (find(objects, kind, name).spec as {template: {metadata: {annotations?: Record<string, string>}}}).template.metadata.annotations?.['dforge.dev/config-hash'];
      expect(conf(overridden)).toBe('events {}\nhttp { server { listen 8080; server_name dforge.example.com; } }\n');
      expect(hash(overridden, 'Deployment', 'proxy')).not.toBe(hash(packaged, 'Deployment', 'proxy'));
      expect(hash(overridden, 'StatefulSet', 'postgres')).toBe(hash(packaged, 'StatefulSet', 'postgres'));
    } finally {
      await fs.rm(dir, {recursive: true, force: true});
    }
  });

  it('runs `dforge backup --all` nightly, never twice at once, with each local destination on the backups claim', async () => {
    const objects = objectsOf(await renderKubernetes(config(), undefined));
    const cron = find(objects, 'CronJob', 'dforge-backup').spec as any;
    expect(cron).toMatchObject({schedule: '17 2 * * *', concurrencyPolicy: 'Forbid'});
    const pod = cron.jobTemplate.spec.template.spec;
    const backup = pod.containers[0];
    expect(backup.image).toBe('dforge/dforge:1.4.2');
    expect(backup.command).toEqual(['dforge', 'backup', '--all', '--dir', '/var/lib/dforge']);
    expect(pod.initContainers[0].command).toEqual(['tar', '-x', '-f', '/etc/dforge-install/install.tar', '-C', '/var/lib/dforge']);
    expect(backup.env).toEqual([{name: 'HOME', value: '/tmp'}]);
    expect(backup.volumeMounts).toEqual([
      {name: 'install', mountPath: '/var/lib/dforge'},
      // Where the file provider reads the keyring of the install at --dir: secrets/master/.
      {name: 'master-key', mountPath: masterDir(new InstallDir('/var/lib/dforge')), readOnly: true},
      {name: 'tmp', mountPath: '/tmp'},
      // The pod's own paths: the operator's /var/backups/dforge/... never reaches a manifest.
      {name: 'backups', mountPath: '/backups/eu/eu-local', subPath: 'eu/eu-local'},
      {name: 'backups', mountPath: '/backups/us/us-local', subPath: 'us/us-local'},
    ]);
    expect(JSON.stringify(objects)).not.toContain('/var/backups/dforge');
    expect(pod.volumes).toContainEqual({name: 'install-archive', secret: {secretName: 'dforge-backup-install', defaultMode: 0o440}});
    expect(pod.volumes).toContainEqual({name: 'master-key', secret: {secretName: MASTER_KEY_SECRET, defaultMode: 0o440}});
    // The unpacked install (keys included) lives in memory, never on the node's disk.
    expect(pod.volumes).toContainEqual({name: 'install', emptyDir: {medium: 'Memory', sizeLimit: '64Mi'}});
    // The unpacking init container never sees the master key.
    expect(pod.initContainers[0].volumeMounts.map((m: {name: string}) => m.name)).toEqual(['install-archive', 'install']);
  });

  it('runs the backup job on images.dforge when set, else on the release\'s dforge image', async () => {
    const images = async (c: DforgeConfig): Promise<string[]> => {
      const pod = (find(objectsOf(await renderKubernetes(c, undefined)), 'CronJob', 'dforge-backup').spec as any).jobTemplate.spec.template.spec;
      return allContainers(pod).map((x) => x.image);
    };
    expect(await images(config())).toEqual(['dforge/dforge:1.4.2', 'dforge/dforge:1.4.2']);
    const pinned = `registry.example.com/dforge/dforge@sha256:${'a'.repeat(64)}`;
    expect(await images(config({images: {dforge: pinned}}))).toEqual([pinned, pinned]);
  });

  it.each([
    ['env', 'DFORGE_MASTER_KEY'],
    ['passphrase', 'DFORGE_MASTER_PASSPHRASE'],
  ] as const)('with the %s provider, gives the backup job the keyring file and %s from the master key Secret', async (provider, variable) => {
    const c = config({keys: {masterKeyProvider: provider}});
    const objects = objectsOf(await renderKubernetes(c, undefined));
    const pod = (find(objects, 'CronJob', 'dforge-backup').spec as any).jobTemplate.spec.template.spec;
    expect(pod.containers[0].env).toEqual([
      {name: 'HOME', value: '/tmp'},
      {name: variable, valueFrom: {secretKeyRef: {name: MASTER_KEY_SECRET, key: variable}}},
    ]);
    // keyring.json alone in the keyring directory: the key is not a file there as well.
    expect(pod.volumes).toContainEqual({name: 'master-key', secret: {secretName: MASTER_KEY_SECRET, items: [{key: 'keyring.json', path: 'keyring.json'}], defaultMode: 0o440}});
    expect(await schemaProblems(objects)).toEqual([]);
    expect(await unknownFieldProblems(objects)).toEqual([]);
  });

  it("mounts each local destination at a path of the pod, whatever the operator's path is, and the jobs' dforge.yaml names that path", async () => {
    // Paths that would once have shadowed the job's own mounts are harmless now: none reaches the pod.
    const at = (p: string): DforgeConfig => config({regions: {eu: {clusters: [{name: 'eu-1', kind: 'bundled'}], backup: {destinations: [{name: 'a', kind: 'local', path: p}, {name: 'b', kind: 'local', path: `${p}/`}]}}}});
    for (const p of ['/tmp', '/var/lib/dforge/secrets', '/srv/backups']) {
      const pod = (find(objectsOf(await renderKubernetes(at(p), undefined)), 'CronJob', 'dforge-backup').spec as any).jobTemplate.spec.template.spec;
      expect(pod.containers[0].volumeMounts.filter((m: {name: string}) => m.name === 'backups'), p).toEqual([
        {name: 'backups', mountPath: '/backups/eu/a', subPath: 'eu/a'},
        {name: 'backups', mountPath: '/backups/eu/b', subPath: 'eu/b'},
      ]);
    }
    const text = 'version: 1\n# the operator\'s own paths\nregions:\n  eu:\n    backup:\n      destinations:\n        - name: a\n          kind: local\n          path: /srv/backups # nightly\n        - name: s3\n          kind: s3\n          endpoint: https://203.0.113.7\n';
    const job = jobConfigText(text);
    expect(job).toContain('path: /backups/eu/a');
    expect(job).not.toContain('/srv/backups');
    expect(job).toContain('endpoint: https://203.0.113.7');
    expect(job).toContain("# the operator's own paths");
  });
});

describe('service names in Kubernetes', () => {
  it('every name a workload connects by is a Service of the install\'s namespace, and one the install CA may certify', async () => {
    const c = config({kubernetes: {...base.kubernetes, namespace: 'acme-prod'}});
    const objects = objectsOf(await renderKubernetes(c, undefined));
    const envOf = (owner: string, name: string): string => {
      const [container] = podTemplates(objects).find((t) => t.owner === owner)!.spec.containers;
      return (container!.env as Array<{name: string; value?: string}>).find((e) => e.name === name)!.value!;
    };
    const nginx = (find(objects, 'ConfigMap', 'proxy-config') as {data?: Record<string, string>}).data!['nginx.conf']!;
    const hosts = [
      new URL(envOf('Deployment/auth', 'DFORGE_AUTH_DB_URL')).hostname,
      new URL(envOf('Deployment/app', 'DFORGE_AUTH_URL')).hostname,
      // The tenant catalog (src/runtime/tenant-catalog.ts) and dforge's own endpoint for the bundled cluster.
      serviceHost(c, 'postgres'),
      ...[...nginx.matchAll(/server (\S+):8080;/g)].map((m) => m[1]!),
    ];
    expect(hosts).toEqual(['auth-db.acme-prod.svc', 'auth.acme-prod.svc', 'postgres.acme-prod.svc', 'app.acme-prod.svc', 'auth.acme-prod.svc']);
    const constraints = caNameConstraints({domain: c.domain, internalNames: internalSubtrees(c)});
    for (const host of hosts) {
      const [service, namespace] = host.split('.');
      expect(find(objects, 'Service', service!).metadata.namespace, host).toBe(namespace);
      expect(namesOutside(constraints, {dns: [host, `${host}.cluster.local`], ip: []}), host).toEqual([]);
    }
    // Another namespace's services, and the old bare names, are out of the CA's reach.
    expect(namesOutside(constraints, {dns: ['postgres.dforge.svc', 'db.kube-system.svc.cluster.local', 'postgres', 'app.dforge.internal'], ip: []})).toHaveLength(4);
  });
});

describe('renderKubernetes with hostile values (zod bypassed)', () => {
  const hostile = (mutate: (c: DforgeConfig) => DforgeConfig): DforgeConfig => mutate(structuredClone(config()));

  it('keeps an injected image, ingress namespace or class name one inert string', async () => {
    const image = 'x"\nprivileged: true\n  hostNetwork: true #';
    const className = 'nginx"\n  hostPID: true';
    const ingressNamespace = 'x"\n        - ipBlock: {cidr: 0.0.0.0/0}';
    const evil = hostile((c) => ({...c, images: {...c.images, app: image, proxy: image, dforge: image}, kubernetes: {...c.kubernetes, ingressNamespace, ingressClassName: className}}));
    const normal = objectsOf(await renderKubernetes(config(), undefined));
    const injected = objectsOf(await renderKubernetes(evil, undefined));
    // The same objects with the same keys: the values changed, the structure did not.
    expect(injected.map((o) => o.kind)).toEqual(normal.map((o) => o.kind));
    injected.forEach((o, i) => expect(keyPaths(o), objectId(o)).toEqual(keyPaths(normal[i])));
    const containers = podTemplates(injected).flatMap((t) => allContainers(t.spec));
    expect(containers.filter((c) => c.name === 'app' || c.name === 'proxy').map((c) => c.image)).toEqual([image, image]);
    expect(containers.filter((c) => c.name === 'backup').map((c) => c.image)).toEqual([image]);
    expect((find(injected, 'NetworkPolicy', 'proxy').spec as any).ingress[0].from).toEqual([{namespaceSelector: {matchLabels: {'kubernetes.io/metadata.name': ingressNamespace}}}]);
    expect((find(injected, 'Ingress', 'dforge').spec as {ingressClassName: string}).ingressClassName).toBe(className);
  });

  it('refuses an injected namespace, which the proxy configuration names its upstreams by, without echoing it', async () => {
    const namespace = 'evil\n  hostNetwork: true';
    const err = await renderKubernetes(hostile((c) => ({...c, kubernetes: {...c.kubernetes, namespace}})), undefined).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UserError);
    expect((err as Error).message).toMatch(/hosts\.app cannot be written into .*nginx\.conf/);
    expect((err as Error).message).not.toContain('hostNetwork');
  });

  it('refuses a domain that the proxy configuration cannot hold, without echoing it', async () => {
    const evil = hostile((c) => ({...c, domain: 'evil.com;\n  hostNetwork: true'}));
    const err = await renderKubernetes(evil, undefined).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UserError);
    expect((err as Error).message).toMatch(/domain cannot be written into .*nginx\.conf/);
    expect((err as Error).message).not.toContain('hostNetwork');
  });

  it('refuses a release that cannot be a label value', async () => {
    for (const release of ['1.0\n  privileged: true', 'x'.repeat(64), '1.0-']) {
      await expect(renderKubernetes(hostile((c) => ({...c, release})), undefined)).rejects.toThrow(/cannot be a Kubernetes label value/);
    }
  });
});

describe('NetworkPolicies', () => {
  const outside: Endpoint[] = [
    {name: 'kube-dns', namespace: 'kube-system', namespaceLabels: {'kubernetes.io/metadata.name': 'kube-system'}, labels: {'k8s-app': 'kube-dns'}, ip: '10.96.0.10'},
    {name: 'ingress-controller', namespace: 'ingress-nginx', namespaceLabels: {'kubernetes.io/metadata.name': 'ingress-nginx'}, labels: {'app.kubernetes.io/name': 'ingress-nginx'}, ip: '10.0.9.1'},
    {name: 'external-db', ip: '192.0.2.10'},
    {name: 'internet', ip: '203.0.113.7'},
  ];
  const probes = [
    {port: 53, protocol: 'UDP'},
    {port: 53, protocol: 'TCP'},
    {port: 22, protocol: 'TCP'},
    {port: 80, protocol: 'TCP'},
    {port: 443, protocol: 'TCP'},
    {port: 5432, protocol: 'TCP'},
    {port: 8080, protocol: 'TCP'},
    {port: 9000, protocol: 'TCP'},
  ] as const;

  /** The rendered pods as endpoints, one per workload, named by app.kubernetes.io/name. */
  const podsOf = (objects: readonly K8sObject[]): Endpoint[] =>
    podTemplates(objects).map((t, i) => ({
      name: t.metadata.labels!['app.kubernetes.io/name']!,
      namespace: 'dforge',
      namespaceLabels: {'kubernetes.io/metadata.name': 'dforge'},
      labels: t.metadata.labels!,
      ip: `10.0.1.${i + 1}`,
      namedPorts: Object.fromEntries(t.spec.containers.flatMap((c) => ((c.ports ?? []) as Array<{name: string; containerPort: number}>).map((p) => [p.name, p.containerPort]))),
    }));

  const flowsOf = async (c: DforgeConfig): Promise<string[]> => {
    const objects = objectsOf(await renderKubernetes(c, undefined));
    return allowedFlows(objects, [...podsOf(objects), ...outside], probes);
  };

  const dns = (pods: string[]): string[] => pods.flatMap((p) => [`${p} -> kube-dns:53/TCP`, `${p} -> kube-dns:53/UDP`]);
  // The Ingress controller, in kubernetes.ingressNamespace (default ingress-nginx), and nothing else.
  const intoProxy = ['ingress-controller -> proxy:8080/TCP'];

  it('allow exactly the flows the stack needs, and nothing else', async () => {
    expect(await flowsOf(config())).toEqual(
      [
        ...intoProxy,
        'proxy -> app:8080/TCP',
        'proxy -> auth:8080/TCP',
        'app -> auth:8080/TCP',
        'app -> postgres:5432/TCP',
        'app -> external-db:5432/TCP',
        'auth -> auth-db:5432/TCP',
        'backup -> postgres:5432/TCP',
        'backup -> external-db:5432/TCP',
        'bootstrap -> postgres:5432/TCP',
        'bootstrap -> auth-db:5432/TCP',
        ...dns(['app', 'auth', 'auth-db', 'backup', 'bootstrap', 'postgres', 'proxy']),
      ].sort(),
    );
  });

  it('keep auth-db from the app even when an external cluster named by DNS opens port 5432 to any address', async () => {
    const flows = await flowsOf(externalOnly());
    expect(flows).toEqual(
      [
        ...intoProxy,
        'proxy -> app:8080/TCP',
        'proxy -> auth:8080/TCP',
        'app -> auth:8080/TCP',
        // A DNS name cannot be a NetworkPolicy peer: port 5432 opens to every address, in-cluster
        // pods of other namespaces included; the pods of this namespace still refuse.
        ...['external-db', 'ingress-controller', 'internet', 'kube-dns'].flatMap((to) => [`app -> ${to}:5432/TCP`, `backup -> ${to}:5432/TCP`]),
        'auth -> auth-db:5432/TCP',
        'bootstrap -> auth-db:5432/TCP',
        ...dns(['app', 'auth', 'auth-db', 'backup', 'bootstrap', 'proxy']),
      ].sort(),
    );
    expect(flows).not.toContain('app -> auth-db:5432/TCP');
    expect(flows).not.toContain('auth -> postgres:5432/TCP');
  });

  it('let the backup job, and only it, reach each S3 destination on its port: its address, or the ranges given for a name, never every address', async () => {
    const withS3 = (endpoint: string, egressCidrs?: string[]): DforgeConfig =>
      config({
        regions: {
          ...base.regions,
          us: {...base.regions.us, backup: {destinations: [{name: 'us-s3', kind: 's3', endpoint, bucket: 'dforge-us', credentials: {secret: 'backup/us-s3'}, ...(egressCidrs ? {egressCidrs} : {})}]}},
        },
      });
    const byAddress = await flowsOf(withS3('https://203.0.113.7'));
    const baseline = await flowsOf(config());
    expect(byAddress.filter((f) => !baseline.includes(f))).toEqual(['backup -> internet:443/TCP']);
    expect(baseline.filter((f) => !byAddress.includes(f))).toEqual([]);

    // A DNS name cannot be a NetworkPolicy peer, and the backup job holds the master key: without
    // the store's ranges the render is refused rather than opened to every address.
    await expect(renderKubernetes(withS3('https://s3.us.example.com:9000'), undefined)).rejects.toThrow(/us-s3: its endpoint s3\.us\.example\.com:9000 is a DNS name[\s\S]*not opened to every address/);
    const byName = await flowsOf(withS3('https://s3.us.example.com:9000', ['203.0.113.0/24']));
    expect(byName.filter((f) => !baseline.includes(f))).toEqual(['backup -> internet:9000/TCP']);
  });

  it('admit the Ingress controller of kubernetes.ingressNamespace to the proxy, and one elsewhere not', async () => {
    const objects = objectsOf(await renderKubernetes(config({kubernetes: {...base.kubernetes, ingressNamespace: 'traefik'}}), undefined));
    const traefik: Endpoint = {name: 'traefik', namespace: 'traefik', namespaceLabels: {'kubernetes.io/metadata.name': 'traefik'}, labels: {'app.kubernetes.io/name': 'traefik'}, ip: '10.0.9.2'};
    const flows = allowedFlows(objects, [...podsOf(objects), ...outside, traefik], probes);
    expect(flows.filter((f) => f.includes(' -> proxy:'))).toEqual(['traefik -> proxy:8080/TCP']);
  });
});

describe('renderKubernetesOverlay', () => {
  it('generates every referenced Secret and one per tenant, and lists the tenants in the app volume', () => {
    const c = config();
    const files = renderKubernetesOverlay(c, {base: '../../rendered/k8s', tenants: ['globex', 'acme', 'acme']});
    expect(files.map((f) => f.path)).toEqual(['kustomization.yaml', 'tenants.yaml']);
    const kustomization = parseManifests(files[0]!.content)[0] as any;
    expect(kustomization).toMatchObject({namespace: 'dforge', bases: ['../../rendered/k8s'], patchesStrategicMerge: ['tenants.yaml']});
    const generated = (kustomization.secretGenerator as Array<{name: string; files: string[]; type?: string}>).map((g) => g.name);
    expect(generated).toEqual([...kubernetesSecrets(c).map((s) => s.name), 'dforge-tenant-acme', 'dforge-tenant-globex']);
    expect(kustomization.secretGenerator).toContainEqual({name: 'dforge-proxy-tls', type: 'kubernetes.io/tls', files: ['secrets/dforge-proxy-tls/tls.crt', 'secrets/dforge-proxy-tls/tls.key']});
    const patch = parseManifests(files[1]!.content)[0] as any;
    expect(patch.spec.template.spec.volumes[0].projected.sources).toEqual([
      {secret: {name: CATALOG_SECRET, items: [{key: 'catalog.json', path: 'catalog.json'}]}},
      {secret: {name: 'dforge-tenant-acme', items: [{key: 'password', path: 'acme.password'}]}},
      {secret: {name: 'dforge-tenant-globex', items: [{key: 'password', path: 'globex.password'}]}},
    ]);
  });

  it('refuses a tenant slug that is not one', () => {
    expect(() => renderKubernetesOverlay(config(), {base: '../../rendered/k8s', tenants: ['../evil']})).toThrow(UserError);
  });
});

describe('installArchive (the Secrets dforge-backup-install and dforge-bootstrap-install)', () => {
  let install: InstallDir & {cleanup(): Promise<void>};
  let job: string;
  let provisioner: string;
  beforeAll(async () => {
    install = await tempInstall();
    job = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-backup-job-'));
    await initKeys(install, {command: 'test'});
    // The PKI puts its sealed keys under secrets/pki/ and the CA certificate in pki/.
    await generateCertificates(install, {command: 'test'});
    provisioner = (await ensureSealedPassword(await openKeyServices(install), 'postgres/eu-1/provisioner')).value;
  });
  afterAll(async () => {
    await install.cleanup();
    await fs.rm(job, {recursive: true, force: true});
  });

  const entriesOf = async (archive: Buffer): Promise<string[]> => {
    const tar = await import('tar');
    const entries: string[] = [];
    const parser = tar.t({onReadEntry: (e) => entries.push(e.path)});
    const ended = new Promise((resolve) => parser.on('end', resolve));
    parser.end(archive);
    await ended;
    return entries;
  };

  /** Every file under a directory, relative to `root`. */
  const filesUnder = async (root: string, dir: string): Promise<string[]> =>
    (await fs.readdir(path.join(root, dir), {recursive: true, withFileTypes: true})).filter((e) => e.isFile()).map((e) => path.relative(root, path.join(e.parentPath, e.name)));

  it('gives each job dforge.yaml, the CA certificate and only the sealed secrets it needs, byte-identical each time', async () => {
    const keys = await openKeyServices(install);
    for (const name of ['postgres/eu-1/superuser', AUTH_DB_SUPERUSER_SECRET, AUTH_DB_PASSWORD_SECRET]) await ensureSealedPassword(keys, name);
    const ca = path.relative(install.root, caCertFile(install));
    const expected = {
      backup: ['dforge.yaml', ca, 'secrets/postgres/eu-1/provisioner.sealed'],
      bootstrap: ['dforge.yaml', ca, 'secrets/auth/db-password.sealed', 'secrets/postgres/auth-db/superuser.sealed', 'secrets/postgres/eu-1/provisioner.sealed', 'secrets/postgres/eu-1/superuser.sealed'],
    };
    // What neither job may reach, though the install holds it: the keys of the PKI, the JWT signing key, the master key.
    expect(await filesUnder(install.root, 'secrets')).toEqual(expect.arrayContaining(['secrets/pki/ca.key.sealed', 'secrets/master/v1.key']));
    for (const workload of ['backup', 'bootstrap'] as const) {
      const archive = await installArchive(install, archiveSecrets(config(), workload));
      expect(await installArchive(install, archiveSecrets(config(), workload))).toEqual(archive);
      const entries = await entriesOf(archive);
      expect(entries.filter((e) => !e.endsWith('/')).sort(), workload).toEqual(expected[workload].sort());
      // Not in any encoding: the key file's base64, nor the key's bytes.
      const key = (await fs.readFile(path.join(masterDir(install), 'v1.key'), 'utf8')).trim();
      expect(archive.includes(key)).toBe(false);
      expect(archive.includes(Buffer.from(key, 'base64'))).toBe(false);
    }
  });

  it('opens in the backup job only once the master key Secret is mounted where the rendered CronJob mounts it', async () => {
    const tar = await import('tar');
    const extract = tar.x({cwd: job});
    const done = new Promise((resolve, reject) => extract.on('close', resolve).on('error', reject));
    extract.end(await installArchive(install, archiveSecrets(config(), 'backup')));
    await done;
    const unpacked = new InstallDir(job);
    await expect(openKeyServices(unpacked)).rejects.toThrow(/no master key/);

    // The Secret volume: each key of the Secret (each file of secrets/master/) as a file at the mount path, relative to --dir.
    const pod = (find(objectsOf(await renderKubernetes(config(), undefined)), 'CronJob', 'dforge-backup').spec as any).jobTemplate.spec.template.spec;
    const jobDir = pod.containers[0].command.at(-1) as string;
    const mount = (pod.containers[0].volumeMounts as Array<{name: string; mountPath: string}>).find((m) => m.name === 'master-key')!;
    const mounted = path.join(job, path.relative(jobDir, mount.mountPath));
    const defaultMode = (pod.volumes as Array<{name: string; secret?: {defaultMode: number}}>).find((v) => v.name === 'master-key')!.secret!.defaultMode;
    const files = new Map(await Promise.all((await fs.readdir(masterDir(install))).map(async (name) => [name, await fs.readFile(path.join(masterDir(install), name))] as const)));
    await projectSecretVolume(mounted, files, defaultMode);

    const keys = await openKeyServices(unpacked);
    expect((await keys.sealed.get('postgres/eu-1/provisioner')).toString('utf8')).toBe(provisioner);
    expect(await fs.readFile(caCertFile(unpacked), 'utf8')).toBe(await fs.readFile(caCertFile(install), 'utf8'));
  });
});
