import {execFile as execFileCb} from 'node:child_process';
import {createHash} from 'node:crypto';
import {promises as fs} from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import {promisify} from 'node:util';

import pg from 'pg';
import {stringify as stringifyYaml} from 'yaml';
import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {runCli, type CliResult} from '../helpers/cli.js';
import {connectDocker, dockerUnavailableReason} from '../helpers/docker-engine.js';
import {freePort} from '../helpers/pg-cluster.js';
import {HARDENED_SETTINGS} from '../helpers/postgres-hardening.js';
import {missingComponent} from '../helpers/requirements.js';
import {ensureTestImages, type TestImages} from '../helpers/test-images.js';

/**
 * The compose install end to end, on the real engine with locally built images: install
 * non-interactively, prove TLS 1.3-only with openssl, create tenants inside the containerised
 * PostgreSQL, back one up through `exec` and restore it as a copy, re-run install and see no secret
 * change, then uninstall.
 */
const execFile = promisify(execFileCb);
const reason = await dockerUnavailableReason();
const available = reason === undefined || missingComponent('Docker', reason);

const DOMAIN = 'dforge.localhost';
const STANDIN_REPO = `dforge-e2e/standin-${process.pid}`;

function ok(r: CliResult): CliResult {
  if (r.code !== 0) throw new Error(`exit ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return r;
}

/** Every file under a directory with its SHA-256, owner and mode: what "no secret changed" compares. */
async function fingerprint(root: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (dir: string): Promise<void> => {
    for (const e of await fs.readdir(dir, {withFileTypes: true})) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) await walk(p);
      else if (e.isFile()) {
        const st = await fs.stat(p);
        out[path.relative(root, p)] = `${createHash('sha256').update(await fs.readFile(p)).digest('hex')} ${st.uid}:${st.gid} ${(st.mode & 0o777).toString(8)}`;
      }
    }
  };
  await walk(root);
  return out;
}

describe.skipIf(!available)('dforge install on Docker Compose', () => {
  let images: TestImages;
  let root: string;
  let dir: string;
  let ports: {https: number; http: number; postgres: number};
  let caPem: string;
  const project = `dforge-e2e-${process.pid}`;
  const cli = (...args: string[]): Promise<CliResult> => runCli([...args, '--dir', dir]);

  beforeAll(async () => {
    const docker = await connectDocker();
    images = await ensureTestImages(docker);
    // The app and auth images under release tags, so upgrade has a release to move to.
    for (const tag of ['1.0.0', '1.1.0']) await docker.getImage(images.standin).tag({repo: STANDIN_REPO, tag});
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-compose-'));
    dir = path.join(root, 'install');
    ports = {https: await freePort(), http: await freePort(), postgres: await freePort()};
  }, 900_000);

  afterAll(async () => {
    if (!root) return;
    // Whatever happened above, leave no stack, volume or network behind.
    await runCli(['uninstall', '--purge', '--confirm', DOMAIN, '--dir', dir]).catch(() => undefined);
    await execFile('sh', ['-c', `docker ps -aq --filter label=com.docker.compose.project=${project} | xargs -r docker rm -f; docker volume ls -q --filter label=com.docker.compose.project=${project} | xargs -r docker volume rm; docker network ls -q --filter label=com.docker.compose.project=${project} | xargs -r docker network rm`]).catch(() => undefined);
    await fs.rm(root, {recursive: true, force: true});
    const docker = await connectDocker();
    for (const tag of ['1.0.0', '1.1.0']) await docker.getImage(`${STANDIN_REPO}:${tag}`).remove().catch(() => undefined);
  }, 300_000);

  it('installs non-interactively from an answers file, and reports TLS 1.3 on the proxy and postgres', async () => {
    const answers = path.join(root, 'answers.yaml');
    await fs.writeFile(
      answers,
      stringifyYaml({
        target: 'compose',
        domain: DOMAIN,
        region: 'eu',
        httpsPort: ports.https,
        httpPort: ports.http,
        postgresPort: ports.postgres,
        backupDir: path.join(root, 'backups'),
        project,
        release: '1.0.0',
        images: {postgres: images.postgres, authDb: images.postgres, auth: `${STANDIN_REPO}:1.0.0`, app: `${STANDIN_REPO}:1.0.0`, proxy: images.proxy},
      }),
    );
    const r = ok(await cli('install', '--config', answers, '--yes', '--json'));
    const result = JSON.parse(r.stdout) as {caFingerprint: string; services: Array<{service: string; health: string}>; tls: Array<{tls13: boolean; tls12Refused: boolean}>; secretsCreated: string[]; backupCronLine: string};
    expect(result.caFingerprint).toMatch(/^[0-9A-F:]{95}$/i);
    expect(result.services.map((s) => `${s.service}:${s.health}`).sort()).toEqual(['app:healthy', 'auth-db:healthy', 'auth:healthy', 'postgres:healthy', 'proxy:healthy']);
    expect(result.tls).toHaveLength(2);
    for (const t of result.tls) expect(t).toMatchObject({tls13: true, tls12Refused: true});
    expect(result.secretsCreated.length).toBeGreaterThanOrEqual(4);
    expect(result.backupCronLine).toContain('backup --all');
    // Progress went to stderr as plain lines; stdout held only the JSON.
    expect(r.stderr).toMatch(/Health/);
    caPem = await fs.readFile(path.join(dir, 'pki', 'ca.crt'), 'utf8');
  }, 900_000);

  it('openssl s_client: TLS 1.3 succeeds and TLS 1.2 fails, on the proxy and on postgres', async () => {
    const caFile = path.join(dir, 'pki', 'ca.crt');
    const sClient = (port: number, version: string, extra: string[]): Promise<{code: number | null; out: string}> =>
      new Promise((resolve) => {
        // stdin closed at once: s_client handshakes, prints the session, and quits.
        const child = execFileCb('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, version, '-CAfile', caFile, '-verify_return_error', ...extra], {timeout: 20_000}, (err, stdout, stderr) =>
          resolve({code: err ? ((err as {code?: number}).code ?? 1) : 0, out: `${stdout}${stderr}`}),
        );
        child.stdin?.end();
      });
    const proxy13 = await sClient(ports.https, '-tls1_3', ['-servername', DOMAIN]);
    expect(proxy13.code, proxy13.out).toBe(0);
    expect(proxy13.out).toMatch(/New, TLSv1\.3/);
    expect(proxy13.out).toMatch(/Verify return code: 0 \(ok\)/);
    expect((await sClient(ports.https, '-tls1_2', ['-servername', DOMAIN])).code).not.toBe(0);
    const pg13 = await sClient(ports.postgres, '-tls1_3', ['-starttls', 'postgres', '-servername', 'postgres.dforge.internal']);
    expect(pg13.code, pg13.out).toBe(0);
    expect(pg13.out).toMatch(/New, TLSv1\.3/);
    expect((await sClient(ports.postgres, '-tls1_2', ['-starttls', 'postgres', '-servername', 'postgres.dforge.internal'])).code).not.toBe(0);
  }, 120_000);

  it('the superuser cannot log in over TCP, even with its password; every container is locked down', async () => {
    const {openKeyServices} = await import('../../src/keys/context.js');
    const {InstallDir} = await import('../../src/state/install-dir.js');
    const keys = await openKeyServices(new InstallDir(dir));
    const password = (await keys.sealed.get('postgres/eu-1/superuser')).toString('utf8');
    for (const database of ['postgres', 'dforge_admin']) {
      const c = new pg.Client({host: '127.0.0.1', port: ports.postgres, user: 'dforge_admin', password, database, ssl: {ca: caPem, servername: 'postgres.dforge.internal', minVersion: 'TLSv1.3'}});
      await expect(c.connect()).rejects.toThrow(/pg_hba\.conf rejects connection/);
      await c.end().catch(() => undefined);
    }
    const docker = await connectDocker();
    const containers = await docker.listContainers({filters: {label: [`com.docker.compose.project=${project}`]}});
    expect(containers).toHaveLength(5);
    for (const c of containers) {
      const info = await docker.getContainer(c.Id).inspect();
      const host = info.HostConfig;
      const name = c.Labels['com.docker.compose.service']!;
      expect({ro: host.ReadonlyRootfs, drop: host.CapDrop, add: host.CapAdd ?? [], opt: host.SecurityOpt}, name).toEqual({ro: true, drop: ['ALL'], add: [], opt: ['no-new-privileges:true']});
      // A numeric, non-root user: the engine starts the process as it, whatever the image says.
      expect(info.Config.User, name).toMatch(/^[1-9][0-9]*:[1-9][0-9]*$/);
      expect({memory: host.Memory! > 0, swap: host.MemorySwap === host.Memory, cpus: host.NanoCpus! > 0, pids: host.PidsLimit! > 0}, name).toEqual({memory: true, swap: true, cpus: true, pids: true});
      expect(host.LogConfig, name).toEqual({Type: 'json-file', Config: {'max-size': '10m', 'max-file': '5'}});
      for (const [mount, options] of Object.entries(host.Tmpfs ?? {})) expect(options, `${name} ${mount}`).toMatch(/size=\d+m/);
      // The image by an immutable reference (a local build has no registry digest: its image id), the tag on a label.
      expect(info.Config.Image, name).toMatch(/^(sha256:[0-9a-f]{64}|[^@]+@sha256:[0-9a-f]{64})$/);
      expect((await docker.getImage(info.Config.Image).inspect()).Id, name).toBe(info.Image);
      expect(info.Config.Labels['dev.dforge.image'], name).toMatch(/:[^/]+$/);
    }
    // Only the proxy's network routes out; postgres's second one exists for its loopback port, with no NAT.
    const networks = await docker.listNetworks({filters: {label: [`com.docker.compose.project=${project}`]}});
    const byName = Object.fromEntries(networks.map((n) => [n.Labels?.['com.docker.compose.network'] ?? n.Name, n]));
    expect(Object.fromEntries(Object.entries(byName).map(([name, n]) => [name, n.Internal]))).toEqual({
      public: false,
      'postgres-host': false,
      'edge-app': true,
      'edge-auth': true,
      'app-auth': true,
      data: true,
      auth: true,
    });
    expect(byName['postgres-host']!.Options).toMatchObject({'com.docker.network.bridge.enable_ip_masquerade': 'false', 'com.docker.network.bridge.enable_icc': 'false'});
    // Hostile: auth-db (internal networks only) tries to leave its network for the host, at the
    // proxy's published port on the public network's gateway; the proxy, on that network, can.
    const gateway = byName.public!.IPAM?.Config?.[0]?.Gateway;
    expect(gateway).toMatch(/^\d+\.\d+\.\d+\.\d+$/);
    const probe = `timeout 5 bash -c 'exec 3<>/dev/tcp/${gateway}/${ports.http}'`;
    expect(await execExitCode(docker, project, 'proxy', probe)).toBe(0);
    expect(await execExitCode(docker, project, 'auth-db', probe)).not.toBe(0);
  }, 60_000);

  it('postgres and auth-db: initialised with checksums, running with the hardened settings, a 0700 socket', async () => {
    const {openKeyServices} = await import('../../src/keys/context.js');
    const {InstallDir} = await import('../../src/state/install-dir.js');
    const {AUTH_DB_SUPERUSER_SECRET} = await import('../../src/install/secrets.js');
    const {authDbSocketDir, postgresSocketDir} = await import('../../src/install/compose-runtime.js');
    const {connectOverSocket} = await import('../../src/postgres/connect.js');
    const install = new InstallDir(dir);
    const keys = await openKeyServices(install);
    const expected = {...HARDENED_SETTINGS, data_checksums: 'on'};
    const list = Object.keys(expected).map((name) => `'${name}'`).join(', ');
    for (const [socketDir, secret] of [[postgresSocketDir(install), 'postgres/eu-1/superuser'], [authDbSocketDir(install), AUTH_DB_SUPERUSER_SECRET]] as const) {
      const password = (await keys.sealed.get(secret)).toString('utf8');
      const c = await connectOverSocket(socketDir, 5432, {user: 'dforge_admin', password, database: 'postgres'});
      try {
        const {rows} = await c.query<{name: string; value: string}>(`SELECT name, current_setting(name) AS value FROM unnest(ARRAY[${list}]) AS name`);
        expect(Object.fromEntries(rows.map((r) => [r.name, r.value])), socketDir).toEqual(expected);
      } finally {
        await c.end();
      }
      expect((await fs.stat(path.join(socketDir, '.s.PGSQL.5432'))).mode & 0o777, socketDir).toBe(0o700);
    }
  }, 60_000);

  it('HTTP redirects to HTTPS on the configured domain, and answers 421 to any other Host', async () => {
    const get = (host: string): Promise<{status: number; location?: string}> =>
      new Promise((resolve, reject) => {
        // node's fetch will not send a Host header of the caller's choosing: a plain request does.
        const req = http.request({host: '127.0.0.1', port: ports.http, path: '/some/path', headers: {host}}, (res) => {
          res.resume();
          resolve({status: res.statusCode ?? 0, ...(res.headers.location ? {location: res.headers.location} : {})});
        });
        req.on('error', reject);
        req.end();
      });
    expect(await get(DOMAIN)).toEqual({status: 301, location: `https://${DOMAIN}:${ports.https}/some/path`});
    expect(await get('evil.example')).toEqual({status: 421});
    expect(await get(`127.0.0.1:${ports.http}`)).toEqual({status: 421});
  });

  it('HTTPS: the security headers on the real host; 421 for another Host, with or without SNI, and nothing forwarded', async () => {
    const get = (servername: string | undefined, host: string, pathname = '/tenants'): Promise<{status: number; headers: Record<string, unknown>}> =>
      new Promise((resolve, reject) => {
        const req = https.request({host: '127.0.0.1', port: ports.https, path: pathname, ...(servername ? {servername} : {}), ca: caPem, checkServerIdentity: () => undefined, headers: {host}, minVersion: 'TLSv1.3'}, (res) => {
          res.resume();
          resolve({status: res.statusCode ?? 0, headers: res.headers});
        });
        req.on('error', reject);
        req.end();
      });
    const real = await get(DOMAIN, DOMAIN, '/healthz');
    expect(real.status).toBe(200);
    expect(real.headers).toMatchObject({
      'strict-transport-security': 'max-age=63072000',
      'x-content-type-options': 'nosniff',
      'x-frame-options': 'DENY',
      'content-security-policy': "frame-ancestors 'none'",
      'referrer-policy': 'no-referrer',
    });
    // Proxied answers carry them too.
    expect((await get(DOMAIN, DOMAIN, '/')).headers).toMatchObject({'x-frame-options': 'DENY', 'x-content-type-options': 'nosniff'});
    for (const [servername, host] of [[DOMAIN, 'evil.example'], ['evil.example', 'evil.example'], [undefined, 'evil.example']] as const) {
      const r = await get(servername, host);
      expect(r.status, `SNI ${servername ?? 'none'}, Host ${host}`).toBe(421);
      expect(r.headers['x-frame-options']).toBe('DENY');
    }
  });

  it('creates two tenants inside the containerised PostgreSQL, and the app sees them through its catalog', async () => {
    ok(await cli('tenant', 'create', 'acme'));
    ok(await cli('tenant', 'create', 'globex'));
    const tenants = (JSON.parse(ok(await cli('tenant', 'list', '--json')).stdout) as {tenants: Array<{slug: string; cluster: string; status: string}>}).tenants;
    expect(tenants.map((t) => `${t.slug}@${t.cluster}:${t.status}`).sort()).toEqual(['acme@eu-1:active', 'globex@eu-1:active']);

    // The catalog and one 0400 password file per tenant, owned by the app's user, no secret in the catalog.
    const runtime = path.join(dir, 'runtime', 'tenants');
    const catalog = JSON.parse(await fs.readFile(path.join(runtime, 'catalog.json'), 'utf8')) as {tenants: Array<{slug: string; passwordFile: string}>};
    expect(catalog.tenants.map((t) => t.slug)).toEqual(['acme', 'globex']);
    const pw = await fs.stat(path.join(runtime, 'acme.password'));
    expect([pw.uid, pw.mode & 0o777]).toEqual([10_001, 0o400]);
    expect(JSON.stringify(catalog)).not.toContain(await fs.readFile(path.join(runtime, 'acme.password'), 'utf8'));

    // The app re-read the catalog on SIGHUP, and reaches each tenant's database as that tenant, over verified TLS.
    const listed = await getJson<{tenants: string[]}>('/tenants');
    expect(listed.tenants.sort()).toEqual(['acme', 'globex']);
    expect(await getJson<{user: string; database: string}>('/tenants/acme/ping')).toEqual({user: 'tenant_acme', database: 'tenant_acme'});

    // No tenant secret reaches the app through its environment.
    const docker = await connectDocker();
    const [app] = await docker.listContainers({filters: {label: [`com.docker.compose.project=${project}`, 'com.docker.compose.service=app']}});
    const env = (await docker.getContainer(app!.Id).inspect()).Config.Env.join('\n');
    expect(env).not.toContain(await fs.readFile(path.join(runtime, 'globex.password'), 'utf8'));
  }, 180_000);

  it('backs a tenant up through exec in the postgres container and restores it --as a copy with equal data', async () => {
    await asTenant('acme', async (c) => {
      await c.query("CREATE TABLE crm.deals (id int PRIMARY KEY, title text); INSERT INTO crm.deals SELECT g, 'deal ' || g || ' ✓' FROM generate_series(1, 20000) g");
    });
    const before = await asTenant('acme', async (c) => (await c.query<{sum: string}>("SELECT md5(string_agg(d::text, '|' ORDER BY id)) AS sum FROM crm.deals d")).rows[0]!.sum);

    const backup = JSON.parse(ok(await cli('backup', '--tenant', 'acme', '--pg-tools', 'container', '--json')).stdout) as {id: string; size: number};
    expect(backup.size).toBeGreaterThan(0);
    ok(await cli('backup', 'verify', backup.id, '--deep'));
    const restored = JSON.parse(ok(await cli('restore', '--tenant', 'acme', '--from', backup.id, '--as', 'acme-copy', '--pg-tools', 'container', '--json')).stdout) as {database: string};
    expect(restored.database).toBe('tenant_acme_copy');
    const after = await asTenant('acme-copy', async (c) => (await c.query<{sum: string}>("SELECT md5(string_agg(d::text, '|' ORDER BY id)) AS sum FROM crm.deals d")).rows[0]!.sum);
    expect(after).toBe(before);
    // The copy joined the app's catalog.
    expect((await getJson<{tenants: string[]}>('/tenants')).tenants.sort()).toEqual(['acme', 'acme-copy', 'globex']);
  }, 300_000);

  it('posture on the compose stack: the proxy and postgres pass the live handshake checks, isolation and the audit trail hold, every container is hardened', async () => {
    const r = await cli('posture', '--json');
    const report = JSON.parse(r.stdout) as {exitCode: number; checks: Array<{id: string; scope: string; status: string; observed: string}>};
    const status = (id: string, scope: string): string | undefined => report.checks.find((c) => c.id === id && c.scope === scope)?.status;
    for (const id of ['in-transit.tls13', 'in-transit.tls12-refused', 'in-transit.certificate']) {
      expect(status(id, 'proxy'), id).toBe('PASS');
      expect(status(id, 'cluster:eu-1'), id).toBe('PASS');
    }
    const isolationAndAudit = report.checks.filter((c) => c.id.startsWith('isolation.') || c.id.startsWith('audit.change-log'));
    expect(isolationAndAudit.length).toBeGreaterThan(10);
    expect(isolationAndAudit.filter((c) => c.status !== 'PASS').map((c) => `${c.id} [${c.scope}] ${c.status}: ${c.observed}`)).toEqual([]);
    expect(report.checks.find((c) => c.id === 'audit.change-log-coverage' && c.scope === 'tenant:acme')?.observed).toMatch(/^1\/1 module tables/);
    const runtime = report.checks.filter((c) => c.id.startsWith('runtime.container.'));
    expect(runtime.length).toBe(5 * 7);
    expect(runtime.filter((c) => c.status !== 'PASS').map((c) => `${c.id} [${c.scope}] ${c.status}: ${c.observed}`)).toEqual([]);
    expect(report.checks.filter((c) => c.status === 'FAIL').map((c) => `${c.id} [${c.scope}]: ${c.observed}`)).toEqual([]);
    expect(r.code).toBe(0);
  }, 300_000);

  it('re-running install reconciles: no secret changes, no container is recreated or restarted', async () => {
    const secretsBefore = await fingerprint(path.join(dir, 'secrets'));
    const runtimeBefore = await fingerprint(path.join(dir, 'runtime'));
    const docker = await connectDocker();
    const ids = async (): Promise<string[]> => (await docker.listContainers({filters: {label: [`com.docker.compose.project=${project}`]}})).map((c) => `${c.Id}:${c.Created}`).sort();
    const containersBefore = await ids();
    const r = JSON.parse(ok(await cli('install', '--yes', '--json')).stdout) as {secretsCreated: string[]; restarted: string[]; rendered: {written: string[]}};
    expect(r.secretsCreated).toEqual([]);
    expect(r.restarted).toEqual([]);
    expect(r.rendered.written).toEqual([]);
    expect(await fingerprint(path.join(dir, 'secrets'))).toEqual(secretsBefore);
    expect(await fingerprint(path.join(dir, 'runtime'))).toEqual(runtimeBefore);
    expect(await ids()).toEqual(containersBefore);
  }, 600_000);

  it('after a JWT key rotation, install restarts exactly the services that mount the keys', async () => {
    ok(await cli('keys', 'rotate', '--jwt'));
    const r = JSON.parse(ok(await cli('install', '--yes', '--json')).stdout) as {secretsCreated: string[]; restarted: string[]; services: Array<{service: string; health: string}>};
    expect(r.secretsCreated).toEqual([]);
    expect(r.restarted.sort()).toEqual(['app', 'auth']);
    expect(r.services.every((s) => s.health === 'healthy')).toBe(true);
    // The app still reaches its tenants after the restart.
    expect(await getJson<{user: string}>('/tenants/globex/ping')).toMatchObject({user: 'tenant_globex'});
  }, 600_000);

  it('upgrade refuses a release whose images are missing, and changes nothing', async () => {
    const config = await fs.readFile(path.join(dir, 'dforge.yaml'), 'utf8');
    const r = await cli('upgrade', '--to', '9.9.9');
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`${STANDIN_REPO}:9.9.9`);
    expect(r.stderr).toContain('Nothing was changed');
    expect(await fs.readFile(path.join(dir, 'dforge.yaml'), 'utf8')).toBe(config);
  }, 120_000);

  it('upgrade backs up every tenant first, then moves the images that follow the release and reconciles', async () => {
    const r = JSON.parse(ok(await cli('upgrade', '--to', '1.1.0', '--json')).stdout) as {
      upgrade: {from: string; to: string; backups: number; pinned: string[]};
      install: {services: Array<{service: string; image: string; health: string}>};
    };
    expect(r.upgrade).toMatchObject({from: '1.0.0', to: '1.1.0', backups: 3});
    // postgres, auth-db and proxy are pinned to other tags: they stay.
    expect(r.upgrade.pinned.length).toBe(3);
    const byService = Object.fromEntries(r.install.services.map((s) => [s.service, s]));
    expect(byService.app).toMatchObject({image: `${STANDIN_REPO}:1.1.0`, health: 'healthy'});
    expect(byService.auth).toMatchObject({image: `${STANDIN_REPO}:1.1.0`, health: 'healthy'});
    expect(byService.postgres?.image).toBe(images.postgres);
    const yaml = await fs.readFile(path.join(dir, 'dforge.yaml'), 'utf8');
    expect(yaml).toContain('release: 1.1.0');
    expect(await fs.readFile(path.join(dir, 'dforge.yaml.pre-upgrade-1.0.0'), 'utf8')).toContain('release: 1.0.0');
    // Asking again for the release it is at is refused: the copy of what ran before stays as it is.
    const again = await cli('upgrade', '--to', '1.1.0');
    expect(again.code).toBe(2);
    expect(again.stderr).toContain('already at release 1.1.0');
    // The data survived, and the app still reaches it.
    expect(await getJson<{user: string}>('/tenants/acme/ping')).toMatchObject({user: 'tenant_acme'});
  }, 600_000);

  it('status shows services, tenants with their last backup, and certificates', async () => {
    const s = JSON.parse(ok(await cli('status', '--json')).stdout) as {services: Array<{service: string; health: string}>; tenants: Array<{slug: string; lastBackup: string | null}>; certificates: Array<{name: string}>; problems: string[]};
    expect(s.problems).toEqual([]);
    expect(s.services).toHaveLength(5);
    expect(s.tenants.find((t) => t.slug === 'acme')?.lastBackup).not.toBeNull();
    expect(s.certificates.map((c) => c.name)).toContain('proxy');
  }, 120_000);

  it('status exits 3 naming a stopped service and 0 once it is back; the runtime probe measures each container', async () => {
    const {InstallDir} = await import('../../src/state/install-dir.js');
    const {openPostureContext} = await import('../../src/posture/context.js');
    const {runtimeProbe} = await import('../../src/posture/probes/runtime.js');
    const probe = async (): Promise<Record<string, Record<string, string>>> => {
      const ctx = await openPostureContext(new InstallDir(dir));
      try {
        const out: Record<string, Record<string, string>> = {};
        for (const r of await runtimeProbe(ctx)) (out[r.scope] ??= {})[r.id.replace(/^runtime\./, '')] = r.status;
        return out;
      } finally {
        await ctx.plane?.close();
      }
    };
    const hardened = {'container.non-root': 'PASS', 'container.read-only-rootfs': 'PASS', 'container.capabilities': 'PASS', 'container.no-new-privileges': 'PASS', 'container.not-privileged': 'PASS', 'container.resource-limits': 'PASS', 'container.healthy': 'PASS'};
    const proxy = hardened;
    const skipped = {'embedded.server-running': 'SKIP', 'embedded.server-account': 'SKIP', 'embedded.systemd-unit': 'SKIP'};
    expect(await probe()).toEqual({'service:app': hardened, 'service:auth': hardened, 'service:auth-db': hardened, 'service:postgres': hardened, 'service:proxy': proxy, install: skipped});

    const docker = await connectDocker();
    const [container] = await docker.listContainers({filters: {label: [`com.docker.compose.project=${project}`, 'com.docker.compose.service=proxy']}});
    await docker.getContainer(container!.Id).stop();
    try {
      const text = await cli('status');
      expect(text.code).toBe(3);
      expect(text.stderr).toMatch(/service proxy is exited/);
      const json = JSON.parse((await cli('status', '--json')).stdout) as {error: {exitCode: number; data: {problems: string[]; services: Array<{service: string; state: string}>; tenants: unknown[]}}};
      expect(json.error.exitCode).toBe(3);
      expect(json.error.data.problems).toEqual([expect.stringMatching(/^service proxy is exited/)]);
      expect(json.error.data.services.find((x) => x.service === 'proxy')?.state).toBe('exited');
      expect(json.error.data.tenants.length).toBeGreaterThan(0);
      expect(await probe()).toMatchObject({'service:proxy': {...proxy, 'container.healthy': 'FAIL'}, 'service:app': hardened});
    } finally {
      await docker.getContainer(container!.Id).start();
    }
    // Back once its health check passes again.
    let last: CliResult | undefined;
    for (let i = 0; i < 60 && last?.code !== 0; i++) {
      if (i > 0) await new Promise((r) => setTimeout(r, 1000));
      last = await cli('status', '--json');
    }
    expect(last?.code, last?.stdout).toBe(0);

    // An engine that does not answer: not a pass, not a crash.
    const noEngine = {DOCKER_HOST: `unix://${path.join(root, 'no-engine.sock')}`};
    const down = await runCli(['status', '--dir', dir], {env: noEngine});
    expect(down.code).toBe(3);
    expect(down.stderr).toContain('could not read services');
    const saved = process.env.DOCKER_HOST;
    process.env.DOCKER_HOST = noEngine.DOCKER_HOST;
    try {
      const blind = await probe();
      for (const service of ['postgres', 'auth-db', 'auth', 'app', 'proxy']) expect(new Set(Object.values(blind[`service:${service}`]!)), service).toEqual(new Set(['ERROR']));
    } finally {
      if (saved === undefined) delete process.env.DOCKER_HOST;
      else process.env.DOCKER_HOST = saved;
    }
  }, 180_000);

  it('postgres and auth-db log every session with its application name, and no password verifier', async () => {
    const docker = await connectDocker();
    for (const service of ['postgres', 'auth-db']) {
      const [c] = await docker.listContainers({filters: {label: [`com.docker.compose.project=${project}`, `com.docker.compose.service=${service}`]}});
      const {stdout, stderr} = await execFile('docker', ['logs', c!.Id], {maxBuffer: 64 * 1024 * 1024});
      const log = `${stdout}${stderr}`;
      // Bootstrap, tenant creation and the auth role all set passwords; log_statement none keeps their text out.
      expect(log, service).toMatch(/ \[\d+\] dforge_admin@postgres \[local\] app=dforge LOG: {2}00000: disconnection: /);
      expect(log, service).not.toContain('SCRAM-SHA-256$');
    }
  }, 60_000);

  it('uninstalls: containers go, volumes and secrets stay; --purge without --confirm is refused', async () => {
    const docker = await connectDocker();
    const refused = await cli('uninstall', '--purge');
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain(`--confirm ${DOMAIN}`);
    ok(await cli('uninstall'));
    expect(await docker.listContainers({all: true, filters: {label: [`com.docker.compose.project=${project}`]}})).toEqual([]);
    const volumes = (await docker.listVolumes({filters: {label: [`com.docker.compose.project=${project}`]}})).Volumes ?? [];
    expect(volumes.length).toBe(2);
    await fs.access(path.join(dir, 'secrets', 'master'));
  }, 300_000);

  async function getJson<T>(pathname: string): Promise<T> {
    // The app may still be handling the SIGHUP of the last change: retry briefly.
    for (let attempt = 0; ; attempt++) {
      const body = await new Promise<{status: number; text: string}>((resolve, reject) => {
        const req = https.request({host: '127.0.0.1', port: ports.https, path: pathname, servername: DOMAIN, ca: caPem, headers: {host: DOMAIN}, minVersion: 'TLSv1.3'}, (res) => {
          let text = '';
          res.on('data', (c: Buffer) => (text += c.toString()));
          res.on('end', () => resolve({status: res.statusCode ?? 0, text}));
        });
        req.on('error', reject);
        req.end();
      });
      if (body.status === 200) return JSON.parse(body.text) as T;
      if (attempt >= 20) throw new Error(`GET ${pathname}: ${body.status} ${body.text}`);
      await new Promise((r) => setTimeout(r, 500));
    }
  }

  async function asTenant<T>(slug: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
    const password = await fs.readFile(path.join(dir, 'runtime', 'tenants', `${slug}.password`), 'utf8');
    const role = `tenant_${slug.replaceAll('-', '_')}`;
    const c = new pg.Client({host: '127.0.0.1', port: ports.postgres, user: role, password, database: role, ssl: {ca: caPem, servername: 'postgres.dforge.internal', minVersion: 'TLSv1.3'}});
    await c.connect();
    try {
      return await fn(c);
    } finally {
      await c.end();
    }
  }
});

/** Runs a shell command in a service's container, as its user, and returns its exit code. */
async function execExitCode(docker: Awaited<ReturnType<typeof connectDocker>>, project: string, service: string, command: string): Promise<number | null> {
  const [c] = await docker.listContainers({filters: {label: [`com.docker.compose.project=${project}`, `com.docker.compose.service=${service}`]}});
  const exec = await docker.getContainer(c!.Id).exec({Cmd: ['sh', '-c', command], AttachStdout: true, AttachStderr: true});
  await new Promise<void>((resolve, reject) => {
    exec.start({}, (err, stream) => {
      if (err || !stream) return reject(err ?? new Error('no stream'));
      stream.resume();
      stream.on('end', () => resolve());
    });
  });
  return (await exec.inspect()).ExitCode;
}
