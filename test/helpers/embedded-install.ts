import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import pg from 'pg';

import {tenantPasswordContext} from '../../src/control/keys-store.js';
import {caCertFile} from '../../src/certs/pki-paths.js';
import {openControlPlane, type ControlPlane} from '../../src/control/plane.js';
import {InstallDir} from '../../src/state/install-dir.js';
import {runCli, type CliResult} from './cli.js';
import {freePort} from './pg-cluster.js';

/**
 * A real evaluation install made by `dforge quickstart` in a temp directory: embedded PostgreSQL
 * from the host binaries, with the product's own pg_hba, TLS and bootstrap.
 */
export interface EmbeddedInstall {
  readonly dir: InstallDir;
  readonly port: number;
  readonly caPem: string;
  /** stdout and stderr of every CLI run so far, for leak scans. */
  readonly outputs: string[];
  cli(args: string[]): Promise<CliResult>;
  plane(): Promise<ControlPlane>;
  tenantPassword(plane: ControlPlane, slug: string): Promise<string>;
  /** Every database of the cluster, sorted: what a restore, undo or prune left behind. */
  databases(): Promise<string[]>;
  /** Runs `fn` connected as a tenant's own role to its own database (what the app would do). */
  asTenant<T>(slug: string, fn: (client: pg.Client) => Promise<T>): Promise<T>;
  /** A client config for `user` on `database` over verified TLS 1.3. */
  clientConfig(user: string, password: string, database: string, overrides?: Partial<pg.ClientConfig>): pg.ClientConfig;
  cleanup(): Promise<void>;
}

export async function quickstartInstall(options: {region?: string} = {}): Promise<EmbeddedInstall> {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-qs-'));
  // The server account must traverse the install directory.
  await fs.chmod(root, 0o755);
  const dir = new InstallDir(path.join(root, 'install'));
  const port = await freePort();
  const outputs: string[] = [];
  const cli = async (args: string[]): Promise<CliResult> => {
    const r = await runCli([...args, '--dir', dir.root]);
    outputs.push(r.stdout, r.stderr);
    return r;
  };
  const result = await cli(['quickstart', '--port', String(port), ...(options.region ? ['--region', options.region] : []), '--json']);
  if (result.code !== 0) throw new Error(`quickstart failed (${result.code}): ${result.stderr}`);
  const caPem = await fs.readFile(caCertFile(dir), 'utf8');
  const install: EmbeddedInstall = {
    dir,
    port,
    caPem,
    outputs,
    cli,
    plane: () => openControlPlane(dir),
    async tenantPassword(plane, slug) {
      const row = await plane.control.query<{sealed_password: Buffer}>('SELECT sealed_password FROM tenant_credentials WHERE slug = $1', [slug]);
      return (await plane.keys.keyring.unwrap(row.rows[0]!.sealed_password, tenantPasswordContext(slug), 'test')).toString();
    },
    async databases() {
      const plane = await openControlPlane(dir);
      try {
        return (await plane.control.query<{datname: string}>('SELECT datname FROM pg_database ORDER BY 1')).rows.map((r) => r.datname);
      } finally {
        await plane.close();
      }
    },
    async asTenant(slug, fn) {
      const plane = await openControlPlane(dir);
      try {
        const db = `tenant_${slug.replaceAll('-', '_')}`;
        const client = new pg.Client(install.clientConfig(db, await install.tenantPassword(plane, slug), db));
        await client.connect();
        try {
          return await fn(client);
        } finally {
          await client.end();
        }
      } finally {
        await plane.close();
      }
    },
    clientConfig(user, password, database, overrides = {}) {
      return {host: '127.0.0.1', port, user, password, database, ssl: {ca: caPem, servername: 'localhost', minVersion: 'TLSv1.3'}, ...overrides};
    },
    async cleanup() {
      await cli(['db', 'stop', '--immediate']);
      await fs.rm(root, {recursive: true, force: true});
    },
  };
  return install;
}
