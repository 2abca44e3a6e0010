import {execFile as execFileCb, spawn, type ChildProcess} from 'node:child_process';
import {randomBytes} from 'node:crypto';
import {promises as fs} from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import {setTimeout as sleep} from 'node:timers/promises';
import {promisify} from 'node:util';

import {freePort} from './pg-cluster.js';
import {createTestCa} from './test-ca.js';

const execFile = promisify(execFileCb);

const REGISTRY_BIN = '/usr/bin/docker-registry';

/**
 * A real registry (Debian's distribution 2.8.2) on a free localhost port: filesystem storage in a
 * temp dir, TLS with a certificate from a throwaway test CA, htpasswd basic auth.
 */
export interface TestRegistry {
  readonly host: string;
  readonly caPem: string;
  readonly username: string;
  readonly password: string;
  readonly storageDir: string;
  /** SIGKILL the registry (a crash, mid-request), leaving its storage. */
  kill(): Promise<void>;
  /** Start it again on the same port, config and storage, and wait until it answers. */
  start(): Promise<void>;
  stop(): Promise<void>;
}

/**
 * The registry accepts only bcrypt in htpasswd. Python's crypt module makes $2b$ hashes with the
 * system libcrypt (no new package); cost 4 because the registry checks the hash on every request.
 */
async function bcryptHash(password: string): Promise<string> {
  const child = execFile('python3', ['-W', 'ignore', '-c', 'import crypt,sys; print(crypt.crypt(sys.stdin.read(), crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)))']);
  child.child.stdin?.end(password);
  const {stdout} = await child;
  const hash = stdout.trim();
  if (!hash.startsWith('$2b$')) throw new Error(`python3 crypt gave no bcrypt hash: ${hash.slice(0, 4)}`);
  return hash;
}

export async function startTestRegistry(): Promise<TestRegistry> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-registry-'));
  const storageDir = path.join(dir, 'storage');
  await fs.mkdir(storageDir);
  const ca = await createTestCa(path.join(dir, 'ca'), {serverNames: ['localhost'], serverIps: ['127.0.0.1']});
  const username = 'pusher';
  const password = randomBytes(18).toString('base64url');
  const htpasswd = path.join(dir, 'htpasswd');
  await fs.writeFile(htpasswd, `${username}:${await bcryptHash(password)}\n`, {mode: 0o600});
  const port = await freePort();
  const config = path.join(dir, 'config.yml');
  await fs.writeFile(
    config,
    [
      'version: 0.1',
      'log:',
      '  level: warn',
      '  accesslog:',
      '    disabled: true',
      'storage:',
      '  filesystem:',
      `    rootdirectory: ${storageDir}`,
      '  delete:',
      '    enabled: true',
      'http:',
      `  addr: 127.0.0.1:${port}`,
      '  tls:',
      `    certificate: ${ca.serverCertFile}`,
      `    key: ${ca.serverKeyFile}`,
      'auth:',
      '  htpasswd:',
      '    realm: dforge-test',
      `    path: ${htpasswd}`,
      '',
    ].join('\n'),
  );
  const host = `localhost:${port}`;
  let child: ChildProcess | undefined;
  let log = '';

  const answers = (): Promise<boolean> =>
    new Promise((resolve) => {
      const req = https.get({host: '127.0.0.1', port, path: '/v2/', ca: ca.caCertPem, servername: 'localhost', timeout: 1000}, (res) => {
        res.resume();
        resolve(res.statusCode === 401);
      });
      req.on('error', () => resolve(false));
      req.on('timeout', () => req.destroy());
    });

  const start = async (): Promise<void> => {
    const proc = spawn(REGISTRY_BIN, ['serve', config], {stdio: ['ignore', 'ignore', 'pipe']});
    child = proc;
    proc.stderr?.on('data', (chunk: Buffer) => {
      log = (log + chunk.toString('utf8')).slice(-4000);
    });
    const deadline = Date.now() + 20_000;
    while (Date.now() < deadline) {
      if (proc.exitCode !== null) throw new Error(`docker-registry exited with ${proc.exitCode}: ${log}`);
      if (await answers()) return;
      await sleep(100);
    }
    throw new Error(`docker-registry did not answer on ${host} within 20s: ${log}`);
  };

  const kill = async (): Promise<void> => {
    const proc = child;
    child = undefined;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise((resolve) => proc.once('exit', resolve));
    proc.kill('SIGKILL');
    await exited;
  };

  await start();
  return {
    host,
    caPem: ca.caCertPem,
    username,
    password,
    storageDir,
    kill,
    start,
    stop: async () => {
      await kill();
      await fs.rm(dir, {recursive: true, force: true});
    },
  };
}
