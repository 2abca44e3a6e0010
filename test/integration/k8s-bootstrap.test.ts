import {execFile as execFileCb} from 'node:child_process';
import {createHash} from 'node:crypto';
import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {promisify} from 'node:util';

import pg from 'pg';
import {parse as parseYaml, stringify as stringifyYaml} from 'yaml';
import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {CONTROL_DATABASE, PROVISIONER_ROLE} from '../../src/control/bootstrap.js';
import {bootstrapKubernetes, type KubernetesBootstrapTargets} from '../../src/k8s/bootstrap.js';
import {k8sOverlayDir} from '../../src/k8s/overlay.js';
import {overlaySecretFile} from '../../src/render/k8s.js';
import {AUTH_DB_ROLE} from '../../src/render/values.js';
import {masterDir} from '../../src/secrets/master-key.js';
import {InstallDir} from '../../src/state/install-dir.js';
import {runCli} from '../helpers/cli.js';
import {findPgBinaries, startPgCluster, type PgCluster} from '../helpers/pg-cluster.js';
import {missingComponent} from '../helpers/requirements.js';

/**
 * The in-cluster bootstrap, run as the Job dforge-bootstrap runs it, against real PostgreSQL. No
 * Kubernetes runs here, so the test plays the kubelet: the pod's inputs are the overlay's Secret
 * files that `install --target k8s` wrote (dforge-install's install.tar unpacked with tar, as the
 * init container does; the master key directory, as the operator's dforge-master-key mounts it),
 * and two clusters stand in for the postgres and auth-db pods, their superuser initialised from
 * the Secrets dforge-postgres-superuser and dforge-auth-db-superuser as the images' entrypoints
 * do. Only the addresses differ: the Services' names become the clusters' loopback ports.
 * Then a backup through the bootstrapped cluster works, which is what failed before the Job
 * existed ("cluster ... is not bootstrapped").
 */
const execFile = promisify(execFileCb);
const hasPg = findPgBinaries() !== undefined || missingComponent('PostgreSQL', 'no binaries under /usr/lib/postgresql');

describe.runIf(hasPg)('the Kubernetes bootstrap Job, against real PostgreSQL', () => {
  let root: string;
  let install: InstallDir;
  let pod: InstallDir;
  let postgres: PgCluster;
  let authDb: PgCluster;
  let cluster: string;
  let installRun: {code: number | null; stderr: string};

  const targets = async (): Promise<KubernetesBootstrapTargets> => {
    const endpoint = (c: PgCluster, name: string) => ({name, host: c.host, port: c.port, caPem: c.ca.caCertPem, servername: 'localhost'});
    return {postgres: endpoint(postgres, cluster), authDb: endpoint(authDb, 'auth-db')};
  };
  /** A job's pod: its archive Secret's install.tar unpacked by the real tar into an empty directory, the master key mounted beside. */
  const unpackPod = async (archiveSecret: string, name: string): Promise<InstallDir> => {
    const dir = new InstallDir(path.join(root, name));
    await fs.mkdir(dir.root, {mode: 0o700});
    await execFile('tar', ['-x', '-f', path.join(k8sOverlayDir(install), overlaySecretFile(archiveSecret, 'install.tar')), '-C', dir.root]);
    await fs.cp(masterDir(install), masterDir(dir), {recursive: true});
    return dir;
  };
  const overlaySecret = (secret: string, key: string): Promise<string> => fs.readFile(path.join(k8sOverlayDir(install), overlaySecretFile(secret, key)), 'utf8');

  beforeAll(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-k8s-bootstrap-'));
    install = new InstallDir(path.join(root, 'install'));
    const r = await runCli(['install', '--dir', install.root, '--target', 'k8s', '--domain', 'dforge.localhost', '--region', 'eu', '--yes']);
    installRun = r;
    const config = parseYaml(await fs.readFile(install.configFile, 'utf8')) as {regions: {eu: {clusters: Array<{name: string; kind: string}>}}};
    cluster = config.regions.eu.clusters.find((c) => c.kind === 'bundled')!.name;

    pod = await unpackPod('dforge-bootstrap-install', 'bootstrap-pod');

    [postgres, authDb] = await Promise.all([startPgCluster('k8s-postgres'), startPgCluster('k8s-auth-db')]);
    for (const [c, secret] of [
      [postgres, 'dforge-postgres-superuser'],
      [authDb, 'dforge-auth-db-superuser'],
    ] as const) {
      const admin = new pg.Client(c.clientConfig());
      await admin.connect();
      try {
        // The image's entrypoint sets the superuser's password from its Secret on first start.
        await admin.query(`ALTER ROLE ${c.superuser} PASSWORD ${pg.escapeLiteral(await overlaySecret(secret, 'password'))}`);
      } finally {
        await admin.end();
      }
    }
  }, 180_000);

  afterAll(async () => {
    await Promise.all([postgres?.stop(), authDb?.stop()]);
    await fs.rm(root, {recursive: true, force: true});
  });

  it('install without a reachable cluster writes everything, exits 4 (incomplete) and names the commands that finish it', async () => {
    expect(installRun.code, installRun.stderr).toBe(4);
    expect(installRun.stderr).toContain('the install is incomplete');
    for (const command of [
      `kubectl -n dforge create secret generic dforge-master-key --from-file=${masterDir(install)}/`,
      'kubectl -n dforge delete job dforge-bootstrap --ignore-not-found',
      `kubectl apply -k ${k8sOverlayDir(install)}`,
      'kubectl -n dforge wait --for=condition=complete job/dforge-bootstrap --timeout=600s',
    ]) {
      expect(installRun.stderr).toContain(command);
    }
    await fs.access(path.join(install.renderedDir, 'k8s', 'bootstrap-job.yaml'));
    await fs.access(path.join(k8sOverlayDir(install), 'kustomization.yaml'));
  });

  it('a second identical install writes a byte-identical overlay: the archive is packed after every secret is sealed', async () => {
    const snapshot = async (): Promise<Map<string, string>> => {
      const files = (await fs.readdir(k8sOverlayDir(install), {recursive: true, withFileTypes: true})).filter((e) => e.isFile());
      return new Map(await Promise.all(files.map(async (e) => [path.relative(k8sOverlayDir(install), path.join(e.parentPath, e.name)), createHash('sha256').update(await fs.readFile(path.join(e.parentPath, e.name))).digest('hex')] as const)));
    };
    const before = await snapshot();
    expect(before.has(overlaySecretFile('dforge-bootstrap-install', 'install.tar'))).toBe(true);
    const again = await runCli(['install', '--dir', install.root, '--yes']);
    expect(again.code, again.stderr).toBe(4);
    expect(await snapshot()).toEqual(before);
  }, 120_000);

  it('opens nothing without the operator\'s master key Secret: the archive alone is sealed', async () => {
    const bare = await unpackPod('dforge-bootstrap-install', 'bootstrap-pod-no-master');
    await fs.rm(masterDir(bare), {recursive: true, force: true});
    await expect(bootstrapKubernetes(bare, targets)).rejects.toThrow(/no master key/);
  });

  it('creates the provisioner, dforge_control and the auth database from the pod inputs alone, and a rerun changes nothing', async () => {
    const first = await bootstrapKubernetes(pod, targets);
    expect(first).toMatchObject({cluster: {name: cluster, provisionerCreated: true, controlDatabaseCreated: true}, authDatabaseCreated: true});
    expect(first.cluster!.migrationsApplied.length).toBeGreaterThan(0);

    const again = await bootstrapKubernetes(pod, targets);
    expect(again).toEqual({cluster: {name: cluster, provisionerCreated: false, controlDatabaseCreated: false, migrationsApplied: []}, authDatabaseCreated: false});

    const auth = new pg.Client(authDb.clientConfig({user: AUTH_DB_ROLE, password: await overlaySecret('dforge-auth-db-password', 'password'), database: AUTH_DB_ROLE}));
    await auth.connect();
    await auth.end();
    const admin = new pg.Client(postgres.clientConfig({database: CONTROL_DATABASE, password: await overlaySecret('dforge-postgres-superuser', 'password')}));
    await admin.connect();
    try {
      const owner = await admin.query<{owner: string}>('SELECT pg_get_userbyid(datdba) AS owner FROM pg_database WHERE datname = $1', [CONTROL_DATABASE]);
      expect(owner.rows[0]?.owner).toBe(PROVISIONER_ROLE);
    } finally {
      await admin.end();
    }
  }, 120_000);

  it('a backup through the bootstrapped cluster works, run by dforge in the backup pod', async () => {
    const backupPod = await unpackPod('dforge-backup-install', 'backup-pod');
    // The backup pod gets no superuser, no key of the PKI, no JWT key: only the provisioner's password.
    expect((await fs.readdir(backupPod.secretsDir, {recursive: true})).sort()).toEqual(['master', 'master/keyring.json', 'master/v1.key', 'postgres', `postgres/${cluster}`, `postgres/${cluster}/provisioner.sealed`]);
    // Where the backup CronJob reaches postgres by its Service name, this host reaches the stand-in
    // by address: the cluster becomes an external one of the same name (its secrets are named by it).
    const config = parseYaml(await fs.readFile(backupPod.configFile, 'utf8')) as {regions: {eu: {clusters: Array<Record<string, unknown>>; backup?: unknown}}};
    config.regions.eu.clusters = [{name: cluster, kind: 'external', host: 'localhost', port: postgres.port, caFile: postgres.ca.caCertFile, admin: {secret: `postgres/${cluster}-admin`}}];
    const backups = path.join(root, 'backups');
    config.regions.eu.backup = {destinations: [{name: 'local', kind: 'local', path: backups}]};
    await fs.writeFile(backupPod.configFile, stringifyYaml(config));

    const r = await runCli(['backup', '--all', '--dir', backupPod.root, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const result = JSON.parse(r.stdout) as {control: unknown};
    expect(result.control).toBeDefined();
    expect((await fs.readdir(backups, {recursive: true})).some((f) => String(f).endsWith('.dfb'))).toBe(true);
  }, 180_000);
});
