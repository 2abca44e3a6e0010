import {execFileSync} from 'node:child_process';
import {promises as fs} from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

import type Docker from 'dockerode';
import pg from 'pg';
import {afterAll, beforeAll, describe, expect, it} from 'vitest';
import {parse, stringify} from 'yaml';

import {configSchema, type DforgeConfig} from '../../src/config/schema.js';
import {UserError} from '../../src/errors.js';
import {initKeys} from '../../src/keys/init.js';
import {openKeyServices} from '../../src/keys/context.js';
import {probePort} from '../../src/preflight/checks/ports.js';
import {runPreflight, type CheckResult, type PreflightReport} from '../../src/preflight/service.js';
import {detectComposeCli} from '../../src/runtime/compose-cli.js';
import {runCli} from '../helpers/cli.js';
import {buildImageFromHostBinaries, connectDocker, dockerUnavailableReason, TEST_IMAGE_LABEL} from '../helpers/docker-engine.js';
import {quickstartInstall, type EmbeddedInstall} from '../helpers/embedded-install.js';
import {findPgBinaries, freePort, startPgCluster, type PgCluster} from '../helpers/pg-cluster.js';
import {missingComponent} from '../helpers/requirements.js';
import {tempInstall} from '../helpers/install-fixture.js';

const asRoot = process.getuid?.() === 0 || missingComponent('root', 'mounting a small tmpfs needs root');
const withPostgres = findPgBinaries() !== undefined || missingComponent('PostgreSQL', 'no binaries under /usr/lib/postgresql');
const dockerReason = await dockerUnavailableReason();
const withDocker = dockerReason === undefined || missingComponent('Docker engine', dockerReason);

const check = (report: PreflightReport, id: string): CheckResult => {
  const found = report.checks.find((c) => c.id === id);
  if (!found) throw new Error(`no check ${id} in the report: ${report.checks.map((c) => c.id).join(', ')}`);
  return found;
};

/**
 * A host with a real port conflict and too little disk: the install directory is a 16 MiB tmpfs
 * and another process listens on the configured HTTPS port. So that waivers have an ops log to
 * land in, the directory carries the keys and CA of a quickstart install (its control database
 * runs on the large disk) and names that install's embedded cluster as its primary.
 */
describe.skipIf(!asRoot || !withPostgres)('dforge preflight on a host with a port taken and too little disk', () => {
  let install: EmbeddedInstall;
  let mountPoint: string;
  let dir: string;
  let busy: net.Server;
  let busyPort: number;
  const cli = (...args: string[]): ReturnType<typeof runCli> => runCli([...args, '--dir', dir]);

  beforeAll(async () => {
    install = await quickstartInstall();
    mountPoint = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-preflight-'));
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=16m', 'tmpfs', mountPoint]);
    dir = path.join(mountPoint, 'install');
    await fs.mkdir(dir);
    for (const sub of ['secrets', 'pki']) await fs.cp(path.join(install.dir.root, sub), path.join(dir, sub), {recursive: true});
    busy = net.createServer();
    await new Promise<void>((resolve) => busy.listen(0, '0.0.0.0', resolve));
    busyPort = (busy.address() as net.AddressInfo).port;
    const config = parse(await fs.readFile(install.dir.configFile, 'utf8')) as Record<string, unknown>;
    const project = `pf${process.pid}`;
    await fs.writeFile(
      path.join(dir, 'dforge.yaml'),
      stringify({...config, domain: 'localhost', target: 'compose', compose: {project, bindAddress: '0.0.0.0', httpPort: await freePort(), httpsPort: busyPort}}),
    );
  });

  afterAll(async () => {
    await new Promise((resolve) => busy?.close(resolve));
    if (mountPoint) {
      execFileSync('umount', [mountPoint]);
      await fs.rm(mountPoint, {recursive: true, force: true});
    }
    await install?.cleanup();
  });

  let firstRun: PreflightReport;

  it('lists both failures with their remedies, in the table and in --json, and exits 3', async () => {
    const human = await cli('preflight');
    expect(human.code, human.stderr).toBe(3);
    expect(human.stdout).toMatch(/^fail\s+host\.disk\s+install directory .*: \d+\.\d MiB free of 16\.0 MiB/m);
    expect(human.stdout).toMatch(new RegExp(`^fail\\s+host\\.ports\\s+.*${busyPort}/tcp on 0\\.0\\.0\\.0 \\(compose\\.httpsPort\\): in use`, 'm'));
    expect(human.stdout).toMatch(/^ {2}host\.disk: Free space on .* to at least 10\.0 GiB \(compose minimum\)/m);
    expect(human.stdout).toMatch(new RegExp(`^ {2}host\\.ports: Free port ${busyPort} .*compose\\.httpsPort in dforge\\.yaml`, 'm'));
    expect(human.stderr).toMatch(/^Error: \d+ preflight checks? failed: .*host\.disk, host\.ports/m);

    const json = await cli('preflight', '--json');
    expect(json.code).toBe(3);
    const {error} = JSON.parse(json.stdout) as {error: {kind: string; exitCode: number; data: PreflightReport}};
    expect(error).toMatchObject({kind: 'check', exitCode: 3});
    firstRun = error.data;
    expect(firstRun.failed).toEqual(expect.arrayContaining(['host.disk', 'host.ports']));
    expect(check(firstRun, 'host.ports').remedy).toContain(`ss -ltnp 'sport = :${busyPort}'`);
    // Every check is reported, each with status, detail and remedy: preflight never stops at the first failure.
    expect(firstRun.checks.map((c) => c.id)).toEqual(expect.arrayContaining(['host.platform', 'host.cpu', 'host.memory', 'host.disk', 'host.encryption', 'host.ports', 'host.time', 'host.open-files', 'host.lsm', 'runtime.docker', 'runtime.compose', 'domain.dns', 'certs.expiry']));
    for (const c of firstRun.checks) {
      expect(Object.keys(c)).toEqual(expect.arrayContaining(['id', 'title', 'status', 'detail', 'remedy']));
      expect(['pass', 'warn', 'fail']).toContain(c.status);
      expect(c.detail.length).toBeGreaterThan(0);
      expect(c.status === 'pass' || (c.remedy ?? '').length > 0, `${c.id} says what to do`).toBe(true);
    }
    // A tmpfs is no block device, so it cannot be encrypted at rest.
    expect(check(firstRun, 'host.encryption')).toMatchObject({status: 'warn', detail: expect.stringMatching(/tmpfs on .*, not a block device/)});
  });

  it('prints a readable table: a header, one aligned row per check, and a one-line summary', async () => {
    const {stdout} = await cli('preflight');
    const lines = stdout.split('\n');
    const header = lines[0]!;
    expect(header).toMatch(/^STATUS\s+CHECK\s+DETAIL$/);
    const rows = lines.slice(1, 1 + firstRun.checks.length);
    expect(rows.map((r) => r.split(/\s+/)[1])).toEqual(firstRun.checks.map((c) => c.id));
    const detailColumn = header.indexOf('DETAIL');
    for (const row of rows) expect(row[detailColumn - 1], row).toBe(' ');
    expect(stdout).toMatch(new RegExp(`^compose preflight: \\d+ pass, \\d+ warn, ${firstRun.failed.length} fail, 0 waived$`, 'm'));
  });

  it('with --ignore on both (and whatever else this host fails) exits 0, and the ops log records each waiver', async () => {
    const waive = [...new Set(['host.disk', 'host.ports', ...firstRun.failed])];
    const r = await cli('preflight', ...waive.flatMap((id) => ['--ignore', id]), '--json');
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const report = JSON.parse(r.stdout) as PreflightReport;
    expect(report.failed).toEqual([]);
    expect(report.waived).toEqual(expect.arrayContaining(['host.disk', 'host.ports']));
    expect(report.waiversLogged).toBe(true);
    expect(check(report, 'host.disk')).toMatchObject({status: 'waived', waivedStatus: 'fail', remedy: expect.stringContaining('10.0 GiB')});
    expect(check(report, 'host.ports')).toMatchObject({status: 'waived', waivedStatus: 'fail'});

    const tail = await cli('audit', 'tail', '--limit', '50', '--json');
    expect(tail.code, tail.stderr).toBe(0);
    const waivers = (JSON.parse(tail.stdout) as {entries: Array<{action: string; target: string; outcome: string; details: {was?: string; target?: string}}>}).entries.filter((e) => e.action === 'preflight.waive');
    for (const id of ['host.disk', 'host.ports']) {
      expect(waivers).toContainEqual(expect.objectContaining({target: `check:${id}`, outcome: 'waived', details: expect.objectContaining({was: 'fail', target: 'compose'})}));
    }
    expect((await cli('audit', 'verify')).code).toBe(0);
  });

  it('refuses an unknown --ignore id with a usage error that lists the valid ids', async () => {
    const r = await cli('preflight', '--ignore', 'host.dsik');
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--ignore host\.dsik: no such check for the compose target \(did you mean host\.disk\?\)/);
    expect(r.stderr).toMatch(/Checks of the compose target: host\.platform, .*host\.ports.*certs\.expiry/);
  });

  it.skipIf(!withDocker)('finds the Docker engine and Docker Compose on this machine', () => {
    expect(check(firstRun, 'runtime.docker')).toMatchObject({status: 'pass', detail: expect.stringMatching(/^Docker \d+\.\d+\S* \(API 1\.\d+\) at \/\S+, root \//)});
    expect(check(firstRun, 'runtime.compose')).toMatchObject({status: 'pass', detail: expect.stringMatching(/^docker(-| )compose \d+\.\d+\S* \(v[12]\)$/)});
    // For compose the Docker root holds the volumes, so its disk is measured too.
    expect(check(firstRun, 'host.disk').detail).toMatch(/Docker root \/\S+: /);
  });

  it('a re-run on the installed embedded stack does not count its own PostgreSQL as a port conflict', async () => {
    const r = await install.cli(['preflight', '--json']);
    const report = JSON.parse(r.stdout) as PreflightReport;
    expect(report.target).toBe('embedded');
    expect(check(report, 'host.ports')).toMatchObject({status: 'pass', detail: expect.stringContaining(`${install.port}/tcp on 127.0.0.1 (the port of cluster local-1): held by embedded cluster local-1 of this install`)});
    expect(check(report, 'runtime.postgres').status).toBe('pass');
    expect(check(report, 'certs.expiry')).toMatchObject({status: 'pass', detail: expect.stringMatching(/^5 certificates valid/)});
    expect(report.checks.map((c) => c.id)).not.toContain('runtime.docker');
  });
});

describe.skipIf(!withDocker)('preflight and the compose project already running', () => {
  const TAG = 'dforge-test/hostbin:preflight';
  let docker: Docker;
  let container: Docker.Container;
  let port: number;
  let otherPorts: {http: number; postgres: number};
  let root: Awaited<ReturnType<typeof tempInstall>>;
  const project = `pfown${process.pid}`;
  const configFor = (composeProject: string): DforgeConfig =>
    configSchema.parse({
      version: 1,
      domain: 'localhost',
      target: 'compose',
      primaryRegion: 'eu',
      regions: {eu: {clusters: [{name: 'eu-1', kind: 'bundled', port: otherPorts.postgres}]}},
      compose: {project: composeProject, httpPort: otherPorts.http, httpsPort: port},
    });

  beforeAll(async () => {
    docker = await connectDocker();
    root = await tempInstall();
    await buildImageFromHostBinaries(docker, {tag: TAG, binaries: ['/bin/sleep']});
    port = await freePort();
    otherPorts = {http: await freePort(), postgres: await freePort()};
    container = await docker.createContainer({
      Image: TAG,
      Cmd: ['/bin/sleep', '600'],
      Labels: {[TEST_IMAGE_LABEL]: '1', 'com.docker.compose.project': project, 'com.docker.compose.service': 'proxy'},
      ExposedPorts: {'8443/tcp': {}},
      HostConfig: {PortBindings: {'8443/tcp': [{HostIp: '0.0.0.0', HostPort: String(port)}]}},
    });
    await container.start();
  });

  afterAll(async () => {
    await container?.remove({force: true}).catch(() => undefined);
    await docker?.getImage(TAG).remove({force: true}).catch(() => undefined);
    await root?.cleanup();
  });

  it('a port published by this project passes as held by it; the same port under another project fails', async () => {
    // docker-proxy really holds the port on the host.
    expect(await probePort('0.0.0.0', port)).toEqual({free: false, code: 'EADDRINUSE'});
    const own = await runPreflight({dir: root, config: configFor(project), target: 'compose'});
    expect(check(own, 'host.ports').status).toBe('pass');
    expect(check(own, 'host.ports').detail).toContain(`${port}/tcp on 0.0.0.0 (compose.httpsPort): held by compose project ${project}`);
    const other = await runPreflight({dir: root, config: configFor(`${project}x`), target: 'compose'});
    expect(check(other, 'host.ports')).toMatchObject({status: 'fail', detail: expect.stringContaining(`${port}/tcp on 0.0.0.0 (compose.httpsPort): in use`)});
  });

  it('detectComposeCli returns a runnable compose, and names the packages when there is none', async () => {
    const cli = await detectComposeCli();
    expect(cli.flavour === 'v2' ? cli.argv : ['docker-compose']).toEqual(cli.argv);
    expect(execFileSync(cli.argv[0]!, [...cli.argv.slice(1), 'version', '--short'], {encoding: 'utf8'})).toContain(cli.version);
    const none = await detectComposeCli({PATH: '/nonexistent'}).catch((err: unknown) => err);
    expect(none).toBeInstanceOf(UserError);
    expect((none as UserError).nextSteps.join('\n')).toMatch(/apt-get install docker-compose/);
  });
});

/**
 * External clusters against a real TLS 1.3 server: one admin role with exactly what the
 * provisioner bootstrap needs, one superuser, one lacking CREATEROLE, one whose secret is missing.
 */
describe.skipIf(!withPostgres)('preflight of external PostgreSQL clusters', () => {
  let cluster: PgCluster;
  let root: Awaited<ReturnType<typeof tempInstall>>;
  const passwords = {ok: 'pf-ok-password-0123456789', weak: 'pf-weak-password-0123456789'};

  beforeAll(async () => {
    cluster = await startPgCluster('preflight');
    const admin = new pg.Client(cluster.clientConfig());
    await admin.connect();
    await admin.query(`CREATE ROLE pf_ok LOGIN CREATEDB CREATEROLE PASSWORD '${passwords.ok}'`);
    await admin.query(`CREATE ROLE pf_weak LOGIN CREATEDB PASSWORD '${passwords.weak}'`);
    await admin.end();
    root = await tempInstall();
    await initKeys(root, {command: 'test'});
    const keys = await openKeyServices(root);
    await keys.sealed.put('postgres/ok-admin', JSON.stringify({user: 'pf_ok', password: passwords.ok}));
    await keys.sealed.put('postgres/super-admin', JSON.stringify({user: cluster.superuser, password: cluster.superuserPassword}));
    await keys.sealed.put('postgres/weak-admin', JSON.stringify({user: 'pf_weak', password: passwords.weak}));
  });

  afterAll(async () => {
    await cluster?.stop();
    await root?.cleanup();
  });

  it('passes the right role, warns on a superuser, fails a missing privilege and a missing secret', async () => {
    const external = (name: string): Record<string, unknown> => ({name, kind: 'external', host: 'localhost', port: cluster.port, caFile: cluster.ca.caCertFile, admin: {secret: `postgres/${name}-admin`}});
    const config = configSchema.parse({
      version: 1,
      domain: 'localhost',
      target: 'k8s',
      primaryRegion: 'eu',
      regions: {eu: {clusters: ['ok', 'super', 'weak', 'missing'].map(external)}},
    });
    const report = await runPreflight({dir: root, config, target: 'k8s'});
    const tls = new RegExp(`^localhost:${cluster.port}: PostgreSQL ${cluster.majorVersion}\\S* over TLSv1\\.3`);
    expect(check(report, 'postgres.external.ok')).toMatchObject({status: 'pass', remedy: null, detail: expect.stringMatching(tls)});
    expect(check(report, 'postgres.external.ok').detail).toContain('role pf_ok has CREATEDB, CREATEROLE');
    expect(check(report, 'postgres.external.super')).toMatchObject({status: 'warn', remedy: expect.stringContaining('dforge needs only CREATEDB and CREATEROLE')});
    expect(check(report, 'postgres.external.weak')).toMatchObject({status: 'fail', detail: expect.stringContaining('role pf_weak has CREATEDB'), remedy: expect.stringContaining('ALTER ROLE pf_weak CREATEDB CREATEROLE')});
    expect(check(report, 'postgres.external.missing')).toMatchObject({status: 'fail', detail: expect.stringContaining('sealed secret postgres/missing-admin is missing')});
    expect(report.failed).toEqual(expect.arrayContaining(['postgres.external.weak', 'postgres.external.missing']));
    // k8s: no host sizing here, kubectl instead.
    expect(report.checks.map((c) => c.id)).not.toContain('host.memory');
    expect(report.checks.map((c) => c.id)).toContain('runtime.kubectl');
    const text = JSON.stringify(report);
    for (const secret of [passwords.ok, passwords.weak, cluster.superuserPassword]) expect(text.includes(secret), 'a password appeared in the report').toBe(false);
  });
});
