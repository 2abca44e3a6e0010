import {execFile as execFileCb} from 'node:child_process';
import {randomBytes} from 'node:crypto';
import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {PassThrough} from 'node:stream';
import {promisify} from 'node:util';

import type Docker from 'dockerode';
import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {POSTGRES_INITDB_ARGS} from '../../src/render/values.js';
import {connectDocker, dockerUnavailableReason, runContainer, TEST_IMAGE_LABEL, type RunResult} from '../helpers/docker-engine.js';
import {missingComponent} from '../helpers/requirements.js';
import {createTestCa, type TestCa} from '../helpers/test-ca.js';
import {ensureTestImages, type TestImages} from '../helpers/test-images.js';

const execFile = promisify(execFileCb);

const reason = await dockerUnavailableReason();
const available = reason === undefined || missingComponent('Docker engine', reason);

const POSTGRES_UID = 999;
const STANDIN_UID = 10001;
const PGDATA = '/var/lib/postgresql/data';

/** Files by path relative to a target directory. */
type Files = Record<string, {content: string; mode: number}>;

interface ContainerSpec {
  readonly image: string;
  readonly aliases: string[];
  readonly env?: string[];
  readonly cmd?: string[];
  readonly mounts?: Docker.MountConfig;
  /** Copied in before start and owned by `uid`, as dforge's mounted secrets and configuration are. */
  readonly files?: Array<{dir: string; uid: number; files: Files}>;
}

interface HttpReply {
  readonly status: number;
  readonly body: unknown;
}

/**
 * The three images as one small install on a private network: postgres with TLS and init
 * scripts, the stand-in as `app` reaching a tenant database over verify-full TLS, and the proxy
 * terminating TLS 1.3 in front of it.
 */
describe.skipIf(!available)('locally built test images', () => {
  const id = randomBytes(4).toString('hex');
  const network = `dforge-test-images-${id}`;
  const volume = `dforge-test-images-pgdata-${id}`;
  const superuserPassword = randomBytes(12).toString('hex');
  const tenantPassword = randomBytes(12).toString('hex');
  const wrongPassword = randomBytes(12).toString('hex');
  const containers: Docker.Container[] = [];
  let docker: Docker;
  let images: TestImages;
  let tmp: string;
  let ca: TestCa;
  let postgres: Docker.Container;
  let standin: Docker.Container;
  let proxy: Docker.Container;

  beforeAll(async () => {
    docker = await connectDocker();
    // A cold build debootstraps and installs packages: minutes, not the default hook timeout.
    images = await ensureTestImages(docker);
    tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-test-images-'));
    ca = await createTestCa(path.join(tmp, 'ca'), {serverNames: ['postgres', 'localhost'], serverIps: []});
    await docker.createNetwork({Name: network, Labels: {[TEST_IMAGE_LABEL]: '1'}});
    await docker.createVolume({Name: volume, Labels: {[TEST_IMAGE_LABEL]: '1'}});

    postgres = await startContainer(await postgresSpec({initialize: true}));
    await waitUntilExecSucceeds(postgres, ['pg_isready', '-q', '-h', '127.0.0.1']);
    standin = await startContainer({image: images.standin, aliases: ['app'], env: ['SERVICE_NAME=app'], files: [{dir: '/run', uid: STANDIN_UID, files: await standinFiles()}]});
    await waitUntilExecSucceeds(standin, ['curl', '-fsS', 'http://127.0.0.1:8080/healthz']);
    // nginx resolves `app` when it loads its configuration, so the stand-in comes first.
    proxy = await startContainer({image: images.proxy, aliases: ['proxy'], files: [{dir: '/etc/nginx', uid: 0, files: await proxyFiles()}]});
    await waitUntilExecSucceeds(proxy, ['curl', '-fsk', 'https://localhost/healthz']);
  }, 900_000);

  afterAll(async () => {
    for (const container of containers) await container.remove({force: true}).catch(() => undefined);
    await docker?.getNetwork(network).remove().catch(() => undefined);
    await docker?.getVolume(volume).remove().catch(() => undefined);
    if (tmp) await fs.rm(tmp, {recursive: true, force: true});
  });

  it('labels each image with a hash of its build inputs, so a second call only inspects', async () => {
    const started = Date.now();
    expect(await ensureTestImages(docker)).toEqual(images);
    expect(Date.now() - started).toBeLessThan(2_000);
    for (const tag of Object.values(images)) {
      const labels = (await docker.getImage(tag).inspect()).Config.Labels ?? {};
      expect(labels[TEST_IMAGE_LABEL]).toBe('1');
      expect(labels[`${TEST_IMAGE_LABEL}.inputs`]).toMatch(/^[0-9a-f]{64}$/);
    }
  });

  it('postgres: server and client binaries on PATH, uid and gid 999, PGDATA 0700', async () => {
    const script = 'id -u; id -g; stat -c "%u:%g %a" "$PGDATA" /var/run/postgresql; for b in postgres initdb pg_ctl pg_dump pg_restore psql pg_isready; do command -v $b; done';
    const result = await runContainer(docker, images.postgres, ['sh', '-c', script]);
    expect(result.exitCode).toBe(0);
    const binaries = ['postgres', 'initdb', 'pg_ctl', 'pg_dump', 'pg_restore', 'psql', 'pg_isready'];
    expect(result.stdout.trimEnd().split('\n')).toEqual(['999', '999', '999:999 700', expect.stringMatching(/^999:999 \d+$/), ...binaries.map((b) => `/usr/lib/postgresql/15/bin/${b}`)]);
  });

  it('postgres: refuses to initialize without POSTGRES_PASSWORD_FILE, and says why', async () => {
    const result = await runContainer(docker, images.postgres, ['postgres']);
    expect(result.exitCode).toBe(1);
    expect(result.stderr).toContain('POSTGRES_PASSWORD_FILE is not set');
  });

  it('postgres: initialized the new volume and ran the init scripts under scram-sha-256', async () => {
    expect(await exec(postgres, ['stat', '-c', '%u:%g %a', PGDATA])).toMatchObject({stdout: '999:999 700\n'});
    const logs = await logsOf(postgres);
    expect(logs).toContain('running /docker-entrypoint-initdb.d/10-tenant-role.sql');
    expect(logs).toContain('running /docker-entrypoint-initdb.d/20-tenant-database.sh');
    expect(logs).toContain('running /docker-entrypoint-initdb.d/30-init-server-is-private.sh');
    for (const secret of [superuserPassword, tenantPassword]) expect(logs).not.toContain(secret);
    // POSTGRES_INITDB_ARGS (dforge's own) reached initdb: even the local socket wants the password, and pages carry checksums.
    expect((await exec(postgres, ['psql', '-XAtc', 'select 1', '--username=dforge', '--no-password'])).exitCode).not.toBe(0);
    const query = 'select current_user, current_database(), count(*), current_setting($$data_checksums$$) from pg_roles where rolname = $$tenant_acme$$';
    expect(await exec(postgres, ['psql', '-XAtc', query, '--username=dforge'], [`PGPASSWORD=${superuserPassword}`])).toMatchObject({exitCode: 0, stdout: 'dforge|dforge|1|on\n'});
  });

  it('standin: health, catalog, and a ping as the tenant role over verify-full TLS', async () => {
    expect(await exec(standin, ['id', '-u'])).toMatchObject({stdout: `${STANDIN_UID}\n`});
    expect(await get(standin, '/healthz')).toEqual({status: 200, body: 'ok app'});
    expect(await get(standin, '/tenants')).toEqual({status: 200, body: {loadedAt: 1, tenants: ['acme', 'wrongpw', 'unlisted', 'frozen']}});
    expect(await get(standin, '/tenants/acme/ping')).toEqual({status: 200, body: {user: 'tenant_acme', database: 'tenant_acme'}});
    expect(await get(standin, '/tenants/nobody/ping')).toMatchObject({status: 404});
    expect(await get(standin, '/tenants/frozen/ping')).toMatchObject({status: 403});
  });

  it('standin: psql errors are 502s without the password; verify-full checks the host name', async () => {
    const wrong = await get(standin, '/tenants/wrongpw/ping');
    expect(wrong).toMatchObject({status: 502, body: {error: expect.stringContaining('password authentication failed for user "tenant_acme"')}});
    expect(JSON.stringify(wrong)).not.toContain(wrongPassword);
    // `pg-unlisted` reaches the same server, but its certificate names only `postgres` and `localhost`.
    expect(await get(standin, '/tenants/unlisted/ping')).toMatchObject({status: 502, body: {error: expect.stringContaining('does not match host name "pg-unlisted"')}});
  });

  it('standin: reloads the catalog on SIGHUP and keeps the last good one when it is broken', async () => {
    const write = (content: string): Promise<void> => putFiles(standin, '/run', STANDIN_UID, {'dforge/tenants/catalog.json': {content, mode: 0o644}});
    await write(catalog([tenant('acme'), tenant('beta')]));
    await standin.kill({signal: 'SIGHUP'});
    await waitFor(async () => ((await get(standin, '/tenants')).body as {loadedAt: number}).loadedAt === 2, 'the stand-in to reload its catalog');
    expect(await get(standin, '/tenants')).toEqual({status: 200, body: {loadedAt: 2, tenants: ['acme', 'beta']}});

    await write('{"version":1,');
    await standin.kill({signal: 'SIGHUP'});
    await waitFor(async () => (await logsOf(standin)).includes('catalog reload failed, keeping load 2'), 'the stand-in to reject a broken catalog');
    expect(await get(standin, '/tenants')).toEqual({status: 200, body: {loadedAt: 2, tenants: ['acme', 'beta']}});
  });

  it('proxy: the mounted config passes nginx -t and serves TLS 1.3 only, logging to stdout', async () => {
    const test = await exec(proxy, ['nginx', '-t']);
    expect(test.exitCode).toBe(0);
    expect(test.stderr).toContain('test is successful');
    expect(await exec(proxy, ['curl', '-fsk', 'https://localhost/healthz'])).toMatchObject({exitCode: 0, stdout: 'ok app'});
    const ping = await exec(proxy, ['curl', '-fsS', '--cacert', '/etc/nginx/tls/ca.crt', 'https://localhost/tenants/acme/ping']);
    expect(JSON.parse(ping.stdout)).toEqual({user: 'tenant_acme', database: 'tenant_acme'});
    expect((await exec(proxy, ['curl', '-fsk', '--tls-max', '1.2', 'https://localhost/healthz'])).exitCode).not.toBe(0);
    expect(await exec(proxy, ['openssl', 'version'])).toMatchObject({exitCode: 0, stdout: expect.stringMatching(/^OpenSSL 3\./)});
    expect(await logsOf(proxy)).toMatch(/"GET \/tenants\/acme\/ping HTTP\/2\.0" 200/);
  });

  it('postgres: a new container on the volume keeps the cluster and needs no password file', async () => {
    await postgres.stop();
    const restarted = await startContainer(await postgresSpec({initialize: false}));
    await waitUntilExecSucceeds(restarted, ['pg_isready', '-q', '-h', '127.0.0.1']);
    expect(await logsOf(restarted)).not.toContain('docker-entrypoint');
    const query = 'select datname from pg_database where datname like $$tenant%$$';
    expect(await exec(restarted, ['psql', '-XAtc', query, '--username=dforge'], [`PGPASSWORD=${superuserPassword}`])).toMatchObject({exitCode: 0, stdout: 'tenant_acme\n'});
  });

  async function postgresSpec({initialize}: {initialize: boolean}): Promise<ContainerSpec> {
    const tls = '/var/lib/postgresql/tls';
    return {
      image: images.postgres,
      aliases: ['postgres', 'pg-unlisted'],
      env: ['POSTGRES_USER=dforge', `POSTGRES_INITDB_ARGS=${POSTGRES_INITDB_ARGS}`, ...(initialize ? ['POSTGRES_PASSWORD_FILE=/var/lib/postgresql/superuser.password'] : [])],
      cmd: ['postgres', '-c', 'ssl=on', '-c', 'ssl_min_protocol_version=TLSv1.3', '-c', `ssl_cert_file=${tls}/server.crt`, '-c', `ssl_key_file=${tls}/server.key`],
      mounts: [{Type: 'volume', Source: volume, Target: PGDATA}],
      files: [
        {
          dir: '/var/lib/postgresql',
          uid: POSTGRES_UID,
          files: {
            'superuser.password': {content: `${superuserPassword}\n`, mode: 0o600},
            'tls/server.crt': {content: await fs.readFile(ca.serverCertFile, 'utf8'), mode: 0o644},
            'tls/server.key': {content: await fs.readFile(ca.serverKeyFile, 'utf8'), mode: 0o600},
          },
        },
        {
          dir: '/docker-entrypoint-initdb.d',
          uid: POSTGRES_UID,
          files: {
            '10-tenant-role.sql': {content: `CREATE ROLE tenant_acme LOGIN PASSWORD '${tenantPassword}';\n`, mode: 0o644},
            // Not executable, so it is sourced; psql finds the superuser password in the environment.
            '20-tenant-database.sh': {content: 'psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -c "CREATE DATABASE tenant_acme OWNER tenant_acme"\n', mode: 0o644},
            // Health checks must not see the init server, neither on the public socket nor on TCP.
            '30-init-server-is-private.sh': {content: 'if pg_isready -q -h /var/run/postgresql || pg_isready -q -h 127.0.0.1; then echo "init server is reachable" >&2; exit 1; fi\n', mode: 0o644},
          },
        },
      ],
    };
  }

  async function standinFiles(): Promise<Files> {
    return {
      'dforge/ca.crt': {content: ca.caCertPem, mode: 0o644},
      'dforge/tenants/catalog.json': {
        content: catalog([tenant('acme'), tenant('wrongpw'), tenant('unlisted', {host: 'pg-unlisted', passwordFile: '/run/dforge/tenants/acme.password'}), tenant('frozen', {status: 'suspended'})]),
        mode: 0o644,
      },
      'dforge/tenants/acme.password': {content: `${tenantPassword}\n`, mode: 0o600},
      'dforge/tenants/wrongpw.password': {content: wrongPassword, mode: 0o600},
    };
  }

  async function proxyFiles(): Promise<Files> {
    const config = `events {}
http {
  server {
    listen 443 ssl http2;
    server_name localhost;
    ssl_certificate /etc/nginx/tls/server.crt;
    ssl_certificate_key /etc/nginx/tls/server.key;
    ssl_protocols TLSv1.3;
    location / {
      proxy_pass http://app:8080;
    }
  }
}
`;
    return {
      'nginx.conf': {content: config, mode: 0o644},
      'tls/ca.crt': {content: ca.caCertPem, mode: 0o644},
      'tls/server.crt': {content: await fs.readFile(ca.serverCertFile, 'utf8'), mode: 0o644},
      'tls/server.key': {content: await fs.readFile(ca.serverKeyFile, 'utf8'), mode: 0o600},
    };
  }

  async function startContainer(spec: ContainerSpec): Promise<Docker.Container> {
    const container = await docker.createContainer({
      Image: spec.image,
      Env: spec.env ?? [],
      ...(spec.cmd ? {Cmd: spec.cmd} : {}),
      Labels: {[TEST_IMAGE_LABEL]: '1'},
      HostConfig: {NetworkMode: network, Mounts: spec.mounts ?? []},
      NetworkingConfig: {EndpointsConfig: {[network]: {Aliases: spec.aliases}}},
    });
    containers.push(container);
    for (const {dir, uid, files} of spec.files ?? []) await putFiles(container, dir, uid, files);
    await container.start();
    return container;
  }

  /** docker cp, keeping ownership: the engine applies the uid and gid recorded in the archive. */
  async function putFiles(container: Docker.Container, dir: string, uid: number, files: Files): Promise<void> {
    const stage = await fs.mkdtemp(path.join(tmp, 'stage-'));
    for (const [name, {content, mode}] of Object.entries(files)) {
      await fs.mkdir(path.dirname(path.join(stage, name)), {recursive: true});
      await fs.writeFile(path.join(stage, name), content, {mode});
    }
    const topLevel = [...new Set(Object.keys(files).map((name) => name.split('/')[0]!))];
    const {stdout} = await execFile('tar', ['-c', '--numeric-owner', `--owner=${uid}`, `--group=${uid}`, '-C', stage, ...topLevel], {encoding: 'buffer'});
    await container.putArchive(stdout, {path: dir});
    await fs.rm(stage, {recursive: true, force: true});
  }

  async function get(container: Docker.Container, urlPath: string): Promise<HttpReply> {
    const result = await exec(container, ['curl', '-sS', '-w', '\n%{http_code}', `http://127.0.0.1:8080${urlPath}`]);
    const split = result.stdout.lastIndexOf('\n');
    const body = result.stdout.slice(0, split);
    let parsed: unknown = body;
    try {
      parsed = JSON.parse(body);
    } catch {
      // /healthz answers in plain text.
    }
    return {status: Number(result.stdout.slice(split + 1)), body: parsed};
  }

  async function exec(container: Docker.Container, cmd: string[], env: string[] = []): Promise<RunResult> {
    const execution = await container.exec({Cmd: cmd, Env: env, AttachStdout: true, AttachStderr: true});
    const stream = await execution.start({hijack: true, stdin: false});
    const [stdout, stderr] = await demux(container, stream);
    const {ExitCode} = await execution.inspect();
    return {exitCode: ExitCode ?? -1, stdout, stderr};
  }

  async function logsOf(container: Docker.Container): Promise<string> {
    const raw = await container.logs({stdout: true, stderr: true});
    // Without a TTY the engine frames each chunk: stream id, three zero bytes, a 32-bit length.
    const chunks: Buffer[] = [];
    for (let at = 0; at + 8 <= raw.length; at += 8 + raw.readUInt32BE(at + 4)) chunks.push(raw.subarray(at + 8, at + 8 + raw.readUInt32BE(at + 4)));
    return Buffer.concat(chunks).toString();
  }

  async function demux(container: Docker.Container, stream: NodeJS.ReadableStream): Promise<[string, string]> {
    const out = new PassThrough();
    const err = new PassThrough();
    const chunks = {out: [] as Buffer[], err: [] as Buffer[]};
    out.on('data', (c: Buffer) => chunks.out.push(c));
    err.on('data', (c: Buffer) => chunks.err.push(c));
    container.modem.demuxStream(stream, out, err);
    await new Promise<void>((resolve) => stream.on('end', () => resolve()));
    return [Buffer.concat(chunks.out).toString(), Buffer.concat(chunks.err).toString()];
  }

  async function waitUntilExecSucceeds(container: Docker.Container, cmd: string[]): Promise<void> {
    try {
      await waitFor(async () => (await exec(container, cmd)).exitCode === 0, cmd.join(' '));
    } catch (err) {
      throw new Error(`${(err as Error).message}\ncontainer logs:\n${await logsOf(container)}`);
    }
  }
});

function tenant(slug: string, overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {slug, database: 'tenant_acme', role: 'tenant_acme', host: 'postgres', port: 5432, sslmode: 'verify-full', passwordFile: `/run/dforge/tenants/${slug}.password`, status: 'active', ...overrides};
}

function catalog(tenants: Array<Record<string, unknown>>): string {
  return JSON.stringify({version: 1, tenants});
}

async function waitFor(condition: () => Promise<boolean>, what: string, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}
