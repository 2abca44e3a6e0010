import {execFile as execFileCb, execFileSync} from 'node:child_process';
import {randomBytes} from 'node:crypto';
import {existsSync, promises as fs, readFileSync, readdirSync, rmSync} from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import {promisify} from 'node:util';

import pg, {type ClientConfig} from 'pg';

import {createTestCa, type TestCa} from './test-ca.js';

const execFile = promisify(execFileCb);

/**
 * Throwaway PostgreSQL clusters for tests, started with the machine's own binaries:
 * scram-sha-256 only, TLS 1.3 only (certificate from a test CA), a random free port on loopback,
 * a private temp directory. PostgreSQL refuses to run as root, so as root the server runs as the
 * unprivileged `postgres` system user (or `nobody`). Several clusters can run at once.
 */
export interface PgCluster {
  readonly name: string;
  readonly host: '127.0.0.1';
  readonly port: number;
  readonly baseDir: string;
  readonly dataDir: string;
  readonly superuser: string;
  readonly superuserPassword: string;
  readonly ca: TestCa;
  readonly majorVersion: number;
  /** A pg client config over verified TLS 1.3 (full chain and hostname). */
  clientConfig(overrides?: Partial<ClientConfig>): ClientConfig;
  /** Environment for libpq tools (psql, pg_dump): the password travels in env, never in argv. */
  libpqEnv(user?: string, password?: string, database?: string): NodeJS.ProcessEnv;
  stop(): Promise<void>;
}

export interface PgBinaries {
  readonly binDir: string;
  readonly majorVersion: number;
}

/** The newest PostgreSQL under /usr/lib/postgresql, or undefined. */
export function findPgBinaries(): PgBinaries | undefined {
  const root = '/usr/lib/postgresql';
  if (!existsSync(root)) return undefined;
  const versions = readdirSync(root)
    .filter((v) => /^\d+$/.test(v) && existsSync(path.join(root, v, 'bin', 'initdb')))
    .map(Number)
    .sort((a, b) => b - a);
  const major = versions[0];
  return major === undefined ? undefined : {binDir: path.join(root, String(major), 'bin'), majorVersion: major};
}

interface RunAs {
  uid: number;
  gid: number;
  user: string;
}

/** As root, the unprivileged account the server runs as; otherwise the current user. */
function serverAccount(): RunAs | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const passwd = readFileSync('/etc/passwd', 'utf8').split('\n').map((l) => l.split(':'));
  for (const user of ['postgres', 'nobody']) {
    const entry = passwd.find((f) => f[0] === user);
    if (entry) return {user, uid: Number(entry[2]), gid: Number(entry[3])};
  }
  throw new Error('running as root, but neither a postgres nor a nobody account exists to run PostgreSQL as');
}

const running = new Set<{dataDir: string; baseDir: string; pgCtl: string; account: RunAs | undefined}>();

// A crashed or interrupted test run must not leave servers behind.
process.once('exit', () => {
  for (const c of running) {
    try {
      execFileSync(c.pgCtl, ['stop', '-D', c.dataDir, '-m', 'immediate'], {stdio: 'ignore', ...(c.account ? {uid: c.account.uid, gid: c.account.gid} : {})});
    } catch {
      // already down
    }
    rmSync(c.baseDir, {recursive: true, force: true});
  }
});

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port'))));
    });
  });
}

export async function startPgCluster(name = 'test'): Promise<PgCluster> {
  const bins = findPgBinaries();
  if (!bins) throw new Error('no PostgreSQL binaries under /usr/lib/postgresql; install the Debian package postgresql');
  const account = serverAccount();
  const ids = account ? {uid: account.uid, gid: account.gid} : {};
  const baseDir = await fs.mkdtemp(path.join(os.tmpdir(), `dforge-pg-${name}-`));
  const dataDir = path.join(baseDir, 'data');
  const socketDir = path.join(baseDir, 'sock');
  const tlsDir = path.join(baseDir, 'tls');
  await fs.mkdir(socketDir);
  const ca = await createTestCa(tlsDir, {serverNames: ['localhost'], serverIps: ['127.0.0.1']});
  const superuser = 'dforge_admin';
  const superuserPassword = randomBytes(24).toString('base64url');
  const pwfile = path.join(baseDir, 'pwfile');
  await fs.writeFile(pwfile, `${superuserPassword}\n`, {mode: 0o600});
  if (account) await chownTree(baseDir, account);
  await fs.chmod(baseDir, 0o700);

  const tool = (t: string): string => path.join(bins.binDir, t);
  const env = {PATH: process.env.PATH ?? '/usr/bin:/bin', LC_ALL: 'C', TZ: 'UTC'};
  try {
    await execFile(tool('initdb'), ['-D', dataDir, '-U', superuser, `--pwfile=${pwfile}`, '--auth-local=scram-sha-256', '--auth-host=scram-sha-256', '-E', 'UTF8', '--no-locale', '--no-sync'], {...ids, env});
  } finally {
    await fs.rm(pwfile, {force: true});
  }
  await fs.writeFile(
    path.join(dataDir, 'pg_hba.conf'),
    ['# dforge test cluster: scram over TLS only; plain TCP matches no line and is refused', 'local all all scram-sha-256', 'hostssl all all 127.0.0.1/32 scram-sha-256', ''].join('\n'),
  );

  let lastError: unknown;
  for (let attempt = 0; attempt < 4; attempt++) {
    const port = await freePort();
    await fs.writeFile(
      path.join(dataDir, 'postgresql.auto.conf'),
      [
        `port = ${port}`,
        `listen_addresses = '127.0.0.1'`,
        `unix_socket_directories = '${socketDir}'`,
        `ssl = on`,
        `ssl_cert_file = '${ca.serverCertFile}'`,
        `ssl_key_file = '${ca.serverKeyFile}'`,
        `ssl_min_protocol_version = 'TLSv1.3'`,
        `password_encryption = 'scram-sha-256'`,
        `max_connections = 200`,
        `shared_buffers = '32MB'`,
        // Throwaway clusters: durability is not under test here, speed is welcome.
        `fsync = off`,
        `synchronous_commit = off`,
        `full_page_writes = off`,
        '',
      ].join('\n'),
    );
    if (account) await chownTree(dataDir, account);
    const logFile = path.join(baseDir, 'server.log');
    try {
      await execFile(tool('pg_ctl'), ['start', '-D', dataDir, '-l', logFile, '-w', '-t', '60'], {...ids, env});
    } catch (err) {
      lastError = new Error(`pg_ctl start failed: ${(err as Error).message}\n${await fs.readFile(logFile, 'utf8').catch(() => '')}`);
      continue;
    }
    const entry = {dataDir, baseDir, pgCtl: tool('pg_ctl'), account};
    running.add(entry);
    const cluster: PgCluster = {
      name,
      host: '127.0.0.1',
      port,
      baseDir,
      dataDir,
      superuser,
      superuserPassword,
      ca,
      majorVersion: bins.majorVersion,
      clientConfig(overrides = {}) {
        return {
          host: '127.0.0.1',
          port,
          user: superuser,
          password: superuserPassword,
          database: 'postgres',
          ssl: {ca: ca.caCertPem, servername: 'localhost', minVersion: 'TLSv1.3', rejectUnauthorized: true},
          ...overrides,
        };
      },
      libpqEnv(user = superuser, password = superuserPassword, database = 'postgres') {
        return {
          ...process.env,
          PGHOST: '127.0.0.1',
          PGPORT: String(port),
          PGUSER: user,
          PGPASSWORD: password,
          PGDATABASE: database,
          PGSSLMODE: 'verify-ca',
          PGSSLROOTCERT: ca.caCertFile,
          PGSSLMINPROTOCOLVERSION: 'TLSv1.3',
        };
      },
      async stop() {
        if (!running.delete(entry)) return;
        await execFile(tool('pg_ctl'), ['stop', '-D', dataDir, '-m', 'fast', '-w'], {...ids, env}).catch(() => undefined);
        await fs.rm(baseDir, {recursive: true, force: true});
      },
    };
    return cluster;
  }
  await fs.rm(baseDir, {recursive: true, force: true});
  throw lastError;
}

async function chownTree(dir: string, account: RunAs): Promise<void> {
  await fs.chown(dir, account.uid, account.gid);
  for (const entry of await fs.readdir(dir, {withFileTypes: true})) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) await chownTree(full, account);
    else await fs.chown(full, account.uid, account.gid);
  }
}

/** One query on a fresh connection, closed afterwards: for tests that check what a client may do. */
export async function queryOnce<T extends pg.QueryResultRow>(config: ClientConfig, sql: string): Promise<T[]> {
  const client = new pg.Client(config);
  await client.connect();
  try {
    return (await client.query<T>(sql)).rows;
  } finally {
    await client.end();
  }
}
