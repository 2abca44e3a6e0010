import {execFile as execFileCb} from 'node:child_process';
import {promisify} from 'node:util';

import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {findPgBinaries, queryOnce, startPgCluster, type PgCluster} from '../helpers/pg-cluster.js';
import {missingComponent} from '../helpers/requirements.js';

const execFile = promisify(execFileCb);
const available = findPgBinaries() !== undefined || missingComponent('PostgreSQL', 'no binaries under /usr/lib/postgresql (install the Debian package postgresql)');

describe.skipIf(!available)('throwaway PostgreSQL clusters (real binaries, TLS 1.3, scram)', () => {
  let eu: PgCluster;
  let us: PgCluster;
  beforeAll(async () => {
    [eu, us] = await Promise.all([startPgCluster('eu'), startPgCluster('us')]);
  });
  afterAll(async () => {
    await Promise.all([eu?.stop(), us?.stop()]);
  });

  it('runs two clusters at once on distinct ports', async () => {
    expect(eu.port).not.toBe(us.port);
    const [a] = await queryOnce<{port: string}>(eu.clientConfig(), 'SHOW port');
    const [b] = await queryOnce<{port: string}>(us.clientConfig(), 'SHOW port');
    expect(Number(a!.port)).toBe(eu.port);
    expect(Number(b!.port)).toBe(us.port);
  });

  it('negotiates TLS 1.3 with a verified chain and hostname, and stores scram verifiers', async () => {
    const rows = await queryOnce<{version: string; min: string; enc: string; rolpassword: string}>(
      eu.clientConfig(),
      `SELECT s.version, current_setting('ssl_min_protocol_version') AS min, current_setting('password_encryption') AS enc,
              (SELECT rolpassword FROM pg_authid WHERE rolname = current_user) AS rolpassword
         FROM pg_stat_ssl s WHERE s.pid = pg_backend_pid()`,
    );
    expect(rows[0]).toMatchObject({version: 'TLSv1.3', min: 'TLSv1.3', enc: 'scram-sha-256'});
    expect(rows[0]!.rolpassword).toMatch(/^SCRAM-SHA-256\$/);
  });

  it('refuses a client that offers at most TLS 1.2', async () => {
    const config = eu.clientConfig({ssl: {ca: eu.ca.caCertPem, servername: 'localhost', maxVersion: 'TLSv1.2'}});
    await expect(queryOnce(config, 'SELECT 1')).rejects.toThrow(/protocol version|handshake|alert/i);
  });

  it('refuses a connection without TLS', async () => {
    await expect(queryOnce(eu.clientConfig({ssl: false}), 'SELECT 1')).rejects.toThrow(/no pg_hba\.conf entry.*no encryption/);
  });

  it('refuses a certificate from another CA (no trust across clusters)', async () => {
    await expect(queryOnce(eu.clientConfig({ssl: {ca: us.ca.caCertPem, servername: 'localhost'}}), 'SELECT 1')).rejects.toThrow(/certificate/i);
  });

  it('refuses a wrong password', async () => {
    await expect(queryOnce(eu.clientConfig({password: 'wrong'}), 'SELECT 1')).rejects.toThrow(/password authentication failed/);
  });

  it('serves libpq tools with the password in the environment, not argv', async () => {
    const {stdout} = await execFile('psql', ['-XAtc', 'SELECT version()'], {env: eu.libpqEnv()});
    expect(stdout).toContain(`PostgreSQL ${eu.majorVersion}`);
  });

  it('tears down: stop() removes the data directory', async () => {
    const extra = await startPgCluster('short-lived');
    await extra.stop();
    await expect(queryOnce(extra.clientConfig(), 'SELECT 1')).rejects.toThrow(/ECONNREFUSED/);
    const {existsSync} = await import('node:fs');
    expect(existsSync(extra.baseDir)).toBe(false);
  });
});
