import {execFile as execFileCb} from 'node:child_process';
import {generateKeyPairSync, randomBytes} from 'node:crypto';
import {existsSync, promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {promisify} from 'node:util';

import pg from 'pg';
import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {UserError} from '../../src/errors.js';
import {findPostgresBinaries, pgToolPath, type PostgresTool} from '../../src/postgres/binaries.js';
import {EmbeddedPostgres, type EmbeddedInitOptions} from '../../src/postgres/embedded.js';
import {serverAccount, type ServiceAccount} from '../../src/postgres/service-account.js';
import {freePort, queryOnce} from '../helpers/pg-cluster.js';
import {HARDENED_SETTINGS} from '../helpers/postgres-hardening.js';
import {hostPostgresBinaries} from '../helpers/requirements.js';
import {createTestCa} from '../helpers/test-ca.js';

const execFile = promisify(execFileCb);

const bins = hostPostgresBinaries();
const available = bins !== undefined;

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  throw new Error('expected a rejection');
}

const superuser = 'dforge_admin';
const superuserPassword = randomBytes(24).toString('base64url');
const provisioner = 'dforge_provisioner';
const provisionerPassword = randomBytes(24).toString('base64url');
const tenantPasswords = {tenant_a: randomBytes(18).toString('base64url'), tenant_b: randomBytes(18).toString('base64url')};

describe.skipIf(!available)('embedded PostgreSQL data plane (real binaries)', () => {
  let base: string;
  let dataDir: string;
  let runDir: string;
  let port: number;
  let account: ServiceAccount | undefined;
  let caPem: string;
  let initOptions: EmbeddedInitOptions;
  let plane: EmbeddedPostgres;
  let firstInit: Awaited<ReturnType<EmbeddedPostgres['init']>>;
  let firstStart: {started: boolean};
  const extraPlanes: EmbeddedPostgres[] = [];

  // The superuser's only way in: the unix socket (PostgreSQL speaks no TLS on sockets; the 0700 run directory guards it).
  const socketConfig = (database = 'postgres'): pg.ClientConfig => ({host: runDir, port, user: superuser, password: superuserPassword, database, ssl: false});
  const tlsConfig = (user: string, password: string, database: string, ssl: pg.ClientConfig['ssl'] = {ca: caPem, servername: 'localhost', minVersion: 'TLSv1.3', rejectUnauthorized: true}): pg.ClientConfig => ({
    host: '127.0.0.1',
    port,
    user,
    password,
    database,
    ssl,
  });

  beforeAll(async () => {
    base = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-embedded-'));
    // mkdtemp makes it 0700 root: the server account must be able to pass through to its directories.
    await fs.chmod(base, 0o711);
    const ca = await createTestCa(path.join(base, 'ca'), {serverNames: ['localhost'], serverIps: ['127.0.0.1']});
    caPem = ca.caCertPem;
    initOptions = {
      superuser,
      superuserPassword,
      provisionerRole: provisioner,
      tls: {certPem: await fs.readFile(ca.serverCertFile, 'utf8'), keyPem: await fs.readFile(ca.serverKeyFile, 'utf8'), caPem},
    };
    dataDir = path.join(base, 'install', 'data', 'postgres');
    runDir = path.join(base, 'install', 'run', 'postgres');
    account = serverAccount();
    port = await freePort();
    plane = new EmbeddedPostgres({dataDir, runDir, port, bins: bins!, account});
    firstInit = await plane.init(initOptions);
    firstStart = await plane.start();

    const admin = new pg.Client(socketConfig());
    await admin.connect();
    try {
      await admin.query(`CREATE ROLE ${provisioner} LOGIN CREATEDB CREATEROLE PASSWORD ${admin.escapeLiteral(provisionerPassword)}`);
      for (const [tenant, password] of Object.entries(tenantPasswords)) {
        await admin.query(`CREATE ROLE ${tenant} LOGIN PASSWORD ${admin.escapeLiteral(password)}`);
        await admin.query(`CREATE DATABASE ${tenant} OWNER ${tenant}`);
      }
    } finally {
      await admin.end();
    }
  });

  afterAll(async () => {
    for (const p of [plane, ...extraPlanes]) await p?.stop({mode: 'immediate'}).catch(() => undefined);
    if (base) await fs.rm(base, {recursive: true, force: true});
  });

  it('initialises a new cluster, writes every managed file, and starts it', async () => {
    expect(firstInit).toEqual({
      initialised: true,
      changedFiles: ['server.crt', 'server.key', 'root.crt', 'dforge.conf', 'pg_hba.conf', 'postgresql.conf'],
      reloaded: false,
    });
    expect(firstStart).toEqual({started: true});
    const status = await plane.status();
    expect(status).toMatchObject({initialised: true, running: true, port, version: String(bins!.majorVersion), dataDir});
    expect(status.pid).toBeGreaterThan(0);
  });

  it('runs the server as the unprivileged account, with the private key 0600 and the initdb password file gone', async () => {
    const key = await fs.stat(path.join(dataDir, 'server.key'));
    const data = await fs.stat(dataDir);
    expect(key.mode & 0o777).toBe(0o600);
    expect(data.mode & 0o777).toBe(0o700);
    expect((await fs.stat(runDir)).mode & 0o777).toBe(0o700);
    if (account) {
      expect(account.uid).not.toBe(0);
      expect(key.uid).toBe(account.uid);
      expect(data.uid).toBe(account.uid);
      const {pid} = await plane.status();
      const owner = (await fs.readFile(`/proc/${pid}/status`, 'utf8')).match(/^Uid:\s+(\d+)/m)?.[1];
      expect(Number(owner)).toBe(account.uid);
    }
    expect((await fs.readdir(runDir)).filter((f) => f.startsWith('.initdb-pw'))).toEqual([]);
  });

  it('keeps durability defaults and turns on checksums, scram and TLS 1.3', async () => {
    const rows = await queryOnce<{enc: string; min: string; fsync: string; fpw: string; sync: string; checksums: string; ssl: string}>(
      socketConfig(),
      `SELECT current_setting('password_encryption') AS enc, current_setting('ssl_min_protocol_version') AS min,
              current_setting('fsync') AS fsync, current_setting('full_page_writes') AS fpw,
              current_setting('synchronous_commit') AS sync, current_setting('data_checksums') AS checksums, current_setting('ssl') AS ssl`,
    );
    expect(rows[0]).toEqual({enc: 'scram-sha-256', min: 'TLSv1.3', fsync: 'on', fpw: 'on', sync: 'on', checksums: 'on', ssl: 'on'});
    const [shown] = await queryOnce<{password_encryption: string}>(socketConfig(), 'SHOW password_encryption');
    expect(shown!.password_encryption).toBe('scram-sha-256');
    const [verifier] = await queryOnce<{rolpassword: string}>(socketConfig(), `SELECT rolpassword FROM pg_authid WHERE rolname = '${superuser}'`);
    expect(verifier!.rolpassword).toMatch(/^SCRAM-SHA-256\$/);
  });

  it('runs with the hardened settings: CIS logging, explicit TLS 1.2 suites, a 0700 socket', async () => {
    const list = Object.keys(HARDENED_SETTINGS).map((name) => `'${name}'`).join(', ');
    const rows = await queryOnce<{name: string; value: string}>(socketConfig(), `SELECT name, current_setting(name) AS value FROM unnest(ARRAY[${list}]) AS name`);
    expect(Object.fromEntries(rows.map((r) => [r.name, r.value]))).toEqual(HARDENED_SETTINGS);
    expect((await fs.stat(path.join(runDir, `.s.PGSQL.${port}`))).mode & 0o777).toBe(0o700);
  });

  it('logs the application name, and no password sent as SQL text (log_statement is none)', async () => {
    await queryOnce({...socketConfig(), application_name: 'dforge-log-probe'}, 'SELECT 1');
    // The collector writes asynchronously: wait for the disconnection line of that session.
    let log = '';
    for (let i = 0; i < 50 && !log.includes('app=dforge-log-probe LOG:  00000: disconnection'); i++) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      const files = (await fs.readdir(runDir)).filter((f) => /^postgresql-.*\.log$/.test(f));
      log = (await Promise.all(files.map((f) => fs.readFile(path.join(runDir, f), 'utf8')))).join('');
    }
    // verbose: the SQLSTATE follows the level.
    expect(log).toMatch(/ \[\d+\] dforge_admin@postgres \[local\] app=dforge-log-probe LOG: {2}00000: disconnection: /);
    // beforeAll created the provisioner and the tenants with plaintext passwords at top level.
    for (const secret of [superuserPassword, provisionerPassword, ...Object.values(tenantPasswords)]) expect(log).not.toContain(secret);
  });

  it('lets the provisioner reach every database over verified TLS 1.3', async () => {
    for (const database of ['postgres', 'tenant_a', 'tenant_b']) {
      const [row] = await queryOnce<{version: string; db: string}>(
        tlsConfig(provisioner, provisionerPassword, database),
        'SELECT s.version, current_database() AS db FROM pg_stat_ssl s WHERE s.pid = pg_backend_pid()',
      );
      expect(row).toEqual({version: 'TLSv1.3', db: database});
    }
  });

  it('refuses the superuser over TCP, even with TLS: administration is socket-only', async () => {
    const err = await rejection(queryOnce(tlsConfig(superuser, superuserPassword, 'postgres'), 'SELECT 1'));
    expect(String(err)).toMatch(/no pg_hba\.conf entry for host "127\.0\.0\.1", user "dforge_admin", database "postgres", SSL encryption/);
  });

  it('refuses a client that offers at most TLS 1.2', async () => {
    const ssl = {ca: caPem, servername: 'localhost', maxVersion: 'TLSv1.2' as const};
    await expect(queryOnce(tlsConfig(provisioner, provisionerPassword, 'postgres', ssl), 'SELECT 1')).rejects.toThrow(/protocol version|handshake|alert/i);
  });

  it('refuses a TCP connection without TLS: no pg_hba line matches it', async () => {
    await expect(queryOnce(tlsConfig(provisioner, provisionerPassword, 'postgres', false), 'SELECT 1')).rejects.toThrow(/no pg_hba\.conf entry.*no encryption/);
  });

  it('sameuser: a tenant role reaches its own database and no other', async () => {
    const [own] = await queryOnce<{db: string; version: string}>(
      tlsConfig('tenant_a', tenantPasswords.tenant_a, 'tenant_a'),
      'SELECT current_database() AS db, s.version FROM pg_stat_ssl s WHERE s.pid = pg_backend_pid()',
    );
    expect(own).toEqual({db: 'tenant_a', version: 'TLSv1.3'});
    for (const database of ['tenant_b', 'postgres']) {
      await expect(queryOnce(tlsConfig('tenant_a', tenantPasswords.tenant_a, database), 'SELECT 1')).rejects.toThrow(
        new RegExp(`no pg_hba\\.conf entry for host "127\\.0\\.0\\.1", user "tenant_a", database "${database}", SSL encryption`),
      );
    }
    // Nor through the socket, which only the superuser may use.
    await expect(queryOnce({host: runDir, port, user: 'tenant_a', password: tenantPasswords.tenant_a, database: 'tenant_a'}, 'SELECT 1')).rejects.toThrow(/no pg_hba\.conf entry/);
  });

  it('writes exactly the five pg_hba rules, all scram-sha-256', async () => {
    const rules = await queryOnce<{type: string; database: string[]; user_name: string[]; address: string | null; auth_method: string; error: string | null}>(
      socketConfig(),
      'SELECT type, database, user_name, address, auth_method, error FROM pg_hba_file_rules ORDER BY line_number',
    );
    expect(rules.map((r) => [r.type, r.database.join(','), r.user_name.join(','), r.address, r.auth_method, r.error])).toEqual([
      ['local', 'all', superuser, null, 'scram-sha-256', null],
      ['hostssl', 'all', provisioner, '127.0.0.1', 'scram-sha-256', null],
      ['hostssl', 'all', provisioner, '::1', 'scram-sha-256', null],
      ['hostssl', 'sameuser', 'all', '127.0.0.1', 'scram-sha-256', null],
      ['hostssl', 'sameuser', 'all', '::1', 'scram-sha-256', null],
    ]);
    expect(await fs.readFile(path.join(dataDir, 'pg_hba.conf'), 'utf8')).toContain('# pg_hba.conf: written by dforge');
  });

  it('re-running init leaves the data alone, changes nothing, and repairs drifted files', async () => {
    const tenant = tlsConfig('tenant_a', tenantPasswords.tenant_a, 'tenant_a');
    await queryOnce(tenant, "CREATE TABLE survives (note text); INSERT INTO survives VALUES ('before re-init')");

    expect(await plane.init(initOptions)).toEqual({initialised: false, changedFiles: [], reloaded: false});
    expect(await queryOnce(tenant, 'SELECT note FROM survives')).toEqual([{note: 'before re-init'}]);

    const hba = path.join(dataDir, 'pg_hba.conf');
    await fs.appendFile(hba, 'host all all 127.0.0.1/32 trust\n');
    expect(await plane.init(initOptions)).toEqual({initialised: false, changedFiles: ['pg_hba.conf'], reloaded: true});
    expect(await fs.readFile(hba, 'utf8')).not.toContain('trust');
    const [counts] = await queryOnce<{rules: string; weak: string}>(socketConfig(), "SELECT count(*) AS rules, count(*) FILTER (WHERE auth_method <> 'scram-sha-256') AS weak FROM pg_hba_file_rules");
    expect(counts).toEqual({rules: '5', weak: '0'});
    expect(await queryOnce(tenant, 'SELECT note FROM survives')).toEqual([{note: 'before re-init'}]);
  });

  it('stops, reports, and starts again; start and stop are no-ops when already there', async () => {
    expect(await plane.stop()).toEqual({stopped: true});
    expect(await plane.status()).toEqual({initialised: true, running: false, port, version: String(bins!.majorVersion), dataDir});
    expect(await plane.stop()).toEqual({stopped: false});
    await expect(queryOnce(tlsConfig(provisioner, provisionerPassword, 'postgres'), 'SELECT 1')).rejects.toThrow(/ECONNREFUSED/);

    expect(await plane.start()).toEqual({started: true});
    expect(await plane.start()).toEqual({started: false});
    const status = await plane.status();
    expect(status.running).toBe(true);
    const startedAt = Date.parse(status.startedAt!);
    const later = new EmbeddedPostgres({dataDir, runDir, port, bins: bins!, account, clock: () => new Date(startedAt + 90_000)});
    expect((await later.status()).uptimeSeconds).toBe(90);
    expect(await queryOnce(tlsConfig('tenant_a', tenantPasswords.tenant_a, 'tenant_a'), 'SELECT note FROM survives')).toEqual([{note: 'before re-init'}]);
  });

  it('a failed start names the cause from the server log', async () => {
    const other = new EmbeddedPostgres({dataDir: path.join(base, 'other', 'data'), runDir: path.join(base, 'other', 'run'), port, bins: bins!, account});
    extraPlanes.push(other);
    expect((await other.init({...initOptions, superuserPassword: randomBytes(12).toString('hex')})).initialised).toBe(true);
    const err = await rejection(other.start());
    expect(err).toBeInstanceOf(UserError);
    expect((err as UserError).message).toMatch(/did not start[\s\S]*server log[\s\S]*Address already in use/);
    expect((err as UserError).nextSteps.join('\n')).toContain(`sport = :${port}`);
    expect((await other.status()).running).toBe(false);
  });

  it('refuses an existing cluster of another major version without touching it', async () => {
    const foreign = path.join(base, 'foreign', 'data');
    await fs.mkdir(foreign, {recursive: true});
    await fs.writeFile(path.join(foreign, 'PG_VERSION'), '9\n');
    const before = await fs.readdir(foreign);
    const p = new EmbeddedPostgres({dataDir: foreign, runDir: path.join(base, 'foreign', 'run'), port: 1, bins: bins!, account});
    const err = await rejection(p.init(initOptions));
    expect(err).toBeInstanceOf(UserError);
    expect((err as UserError).message).toContain('PostgreSQL 9 cluster');
    expect((err as UserError).nextSteps.join('\n')).toContain('pg_upgrade');
    expect(await fs.readdir(foreign)).toEqual(before);
  });

  it('rejects unsafe inputs before touching the disk', async () => {
    const scratch = path.join(base, 'scratch', 'data');
    const p = new EmbeddedPostgres({dataDir: scratch, runDir: path.join(base, 'scratch', 'run'), port: 1, bins: bins!, account});
    await expect(p.init({...initOptions, superuser: 'postgres'})).rejects.toThrow(/sameuser rule/);
    await expect(p.init({...initOptions, provisionerRole: 'all'})).rejects.toThrow(/invalid PostgreSQL provisioner role name/);
    await expect(p.init({...initOptions, superuserPassword: 'first\nsecond'})).rejects.toThrow(/line break/);
    const strangerKey = generateKeyPairSync('ec', {namedCurve: 'prime256v1'}).privateKey.export({type: 'pkcs8', format: 'pem'}).toString();
    const err = await rejection(p.init({...initOptions, tls: {...initOptions.tls, keyPem: strangerKey}}));
    expect((err as UserError).message).toBe('the PostgreSQL server certificate does not belong to the given private key');
    expect(existsSync(scratch)).toBe(false);
    expect(() => new EmbeddedPostgres({dataDir: '/srv/d forge/data', runDir, port, bins: bins!, account})).toThrow(UserError);
    expect(() => new EmbeddedPostgres({dataDir, runDir: `/${'r'.repeat(100)}`, port, bins: bins!, account})).toThrow(/longer than the 107 bytes/);
  });

  it('renders a hardened, deterministic systemd unit that systemd-analyze accepts', async () => {
    // Rendering touches no disk, so it can describe the production layout.
    const prodData = '/opt/dforge/data/postgres';
    const prodRun = '/opt/dforge/run/postgres';
    const production = new EmbeddedPostgres({dataDir: prodData, runDir: prodRun, port: 5432, bins: bins!, account});
    const unit = production.renderSystemdUnit();
    expect(production.renderSystemdUnit()).toBe(unit);
    const lines = unit.split('\n');
    const user = account?.user ?? os.userInfo().username;
    for (const expected of [
      'Type=notify',
      `User=${user}`,
      `ExecStart=${pgToolPath(bins!, 'postgres')} -D ${prodData}`,
      'KillMode=mixed',
      'KillSignal=SIGINT',
      'Restart=on-failure',
      'TimeoutStartSec=infinity',
      'TimeoutStopSec=300',
      'LimitNOFILE=65536',
      'ProtectSystem=strict',
      `ReadWritePaths=${prodData} ${prodRun}`,
      'ProtectHome=true',
      'PrivateTmp=true',
      'NoNewPrivileges=true',
      'CapabilityBoundingSet=',
      'SystemCallFilter=@system-service',
      'IPAddressDeny=any',
      'IPAddressAllow=localhost',
      'WantedBy=multi-user.target',
    ]) {
      expect(lines).toContain(expected);
    }
    if (account) expect(lines).toContain(`Group=${account.group}`);
    expect(production.renderSystemdUnit({description: 'eu primary', execUser: 'pgsvc'}).split('\n')).toEqual(expect.arrayContaining(['Description=eu primary', 'User=pgsvc']));
    expect(production.renderSystemdUnit({execUser: 'pgsvc'})).not.toMatch(/^Group=/m);
    const exposed = new EmbeddedPostgres({dataDir: prodData, runDir: prodRun, port: 5432, bins: bins!, account, listenAddresses: ['10.0.0.5']});
    expect(exposed.renderSystemdUnit().split('\n')).toEqual(expect.arrayContaining(['Wants=network-online.target', 'After=network-online.target', 'IPAddressAllow=localhost 10.0.0.5']));
    // A data directory in /tmp would be hidden by PrivateTmp and aged out by systemd-tmpfiles.
    expect(() => plane.renderSystemdUnit()).toThrow(/temporary directory/);

    const analyze = ['/usr/bin/systemd-analyze', '/bin/systemd-analyze'].find((f) => existsSync(f));
    if (!analyze) {
      process.stderr.write('[skip] systemd-analyze not installed: unit file not verified by systemd\n');
      return;
    }
    const unitFile = path.join(base, 'dforge-postgres.service');
    await fs.writeFile(unitFile, unit);
    const {stderr} = await execFile(analyze, ['verify', unitFile]);
    expect(stderr.split('\n').filter((l) => l.includes(unitFile))).toEqual([]);
  });
});

describe('finding PostgreSQL binaries', () => {
  const roots: string[] = [];
  afterAll(async () => {
    for (const r of roots) await fs.rm(r, {recursive: true, force: true});
  });
  const tempRoot = async (): Promise<string> => {
    const r = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-pgbin-'));
    roots.push(r);
    return r;
  };

  it('names the packages to install when no server binaries exist', async () => {
    const err = await rejection(Promise.resolve().then(async () => findPostgresBinaries({searchRoots: [await tempRoot()]})));
    expect(err).toBeInstanceOf(UserError);
    expect((err as UserError).message).toContain('no PostgreSQL server binaries were found');
    const steps = (err as UserError).nextSteps.join('\n');
    expect(steps).toContain('apt-get install postgresql');
    expect(steps).toContain('dnf install postgresql-server');
    expect(steps).toContain('postgresql-<N>');
    expect(steps).toContain('postgresql<N>-server');
  });

  it.skipIf(!available)('finds Debian, PGDG and RHEL layouts, newest first, and honours the minimum version', async () => {
    const root = await tempRoot();
    const tools: PostgresTool[] = ['initdb', 'pg_ctl', 'postgres', 'pg_dump', 'pg_restore', 'psql'];
    const layout = async (binDir: string, only = tools): Promise<void> => {
      await fs.mkdir(binDir, {recursive: true});
      for (const tool of only) await fs.symlink(pgToolPath(bins!, tool), path.join(binDir, tool));
    };
    await layout(path.join(root, '12', 'bin'));
    expect(() => findPostgresBinaries({searchRoots: [root]})).toThrow(/PostgreSQL 12 was found .* needs PostgreSQL 13 or newer/);
    expect(findPostgresBinaries({searchRoots: [root], minMajor: 12})).toEqual({binDir: path.join(root, '12', 'bin'), majorVersion: 12});

    await layout(path.join(root, 'pgsql-98', 'bin'));
    await layout(path.join(root, '99', 'bin'), ['psql', 'pg_dump', 'pg_restore']); // client tools only: not a server
    expect(findPostgresBinaries({searchRoots: [root]})).toEqual({binDir: path.join(root, 'pgsql-98', 'bin'), majorVersion: 98});

    const rhel = await tempRoot();
    await layout(path.join(rhel, 'bin'));
    expect(findPostgresBinaries({searchRoots: [rhel]})).toEqual({binDir: path.join(rhel, 'bin'), majorVersion: bins!.majorVersion});
  });

  it('runs the server as a non-root system account, never root', () => {
    const account = serverAccount();
    if (process.getuid?.() !== 0) {
      expect(account).toBeUndefined();
      return;
    }
    expect(account).toBeDefined();
    expect(account!.uid).not.toBe(0);
    expect(['postgres', 'dforge-postgres']).toContain(account!.user);
  });
});
