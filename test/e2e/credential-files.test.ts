import {spawn, type ChildProcess} from 'node:child_process';
import {promises as fs, readdirSync, readFileSync} from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import pg from 'pg';
import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {cliEntry} from '../helpers/cli.js';
import {quickstartInstall, type EmbeddedInstall} from '../helpers/embedded-install.js';
import {findPgBinaries} from '../helpers/pg-cluster.js';
import {missingComponent} from '../helpers/requirements.js';

const available = findPgBinaries() !== undefined || missingComponent('PostgreSQL', 'no binaries under /usr/lib/postgresql');

/**
 * A little data, plus a gate: copying crm.gated into a database (what pg_restore does) waits for
 * as long as a session named dforge-test-hold is connected. A backup is held the same way by a
 * lock on crm.accounts. The tests kill dforge while its tool is provably connected and waiting,
 * instead of at a random moment that may fall before the tool starts or after it ends.
 */
const SEED_SQL = `
CREATE TABLE crm.accounts (aid int PRIMARY KEY, filler text NOT NULL);
INSERT INTO crm.accounts SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
CREATE TABLE hr.employees (id serial PRIMARY KEY, name text NOT NULL);
INSERT INTO hr.employees (name) VALUES ('Zoë Ångström'), ('Ωmega Ψ');
CREATE FUNCTION crm.gate() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  LOOP
    -- pg_stat_activity is read once per transaction unless the snapshot is dropped.
    PERFORM pg_catalog.pg_stat_clear_snapshot();
    EXIT WHEN NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity WHERE application_name = 'dforge-test-hold');
    PERFORM pg_catalog.pg_sleep(0.02);
  END LOOP;
  RETURN true;
END $$;
CREATE TABLE crm.gated (id int PRIMARY KEY CHECK (crm.gate()));
INSERT INTO crm.gated VALUES (1);
`;

const CHECKSUM_SQL = `
SELECT 'crm.accounts' AS t, md5(string_agg(a::text, '|' ORDER BY aid)) AS sum, count(*) AS n FROM crm.accounts a
UNION ALL SELECT 'hr.employees', md5(string_agg(e::text, '|' ORDER BY id)), count(*) FROM hr.employees e
UNION ALL SELECT 'crm.gated', md5(string_agg(g::text, '|' ORDER BY id)), count(*) FROM crm.gated g
ORDER BY 1`;

interface Run {
  readonly child: ChildProcess;
  readonly exited: Promise<{code: number | null; signal: NodeJS.Signals | null; stderr: string}>;
}

interface HeldTool {
  readonly pid: number;
  /** PGPASSFILE and PGSSLROOTCERT from the tool's own environment: the files it really reads. */
  readonly passfile: string;
  readonly caFile: string;
}

function startCli(install: EmbeddedInstall, args: string[]): Run {
  const child = spawn(process.execPath, [cliEntry, ...args, '--dir', install.dir.root], {stdio: ['ignore', 'ignore', 'pipe'], env: {...process.env, NO_COLOR: '1'}});
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  const exited = new Promise<{code: number | null; signal: NodeJS.Signals | null; stderr: string}>((resolve) => child.on('close', (code, signal) => resolve({code, signal, stderr})));
  return {child, exited};
}

/** Fields of /proc/<pid>/stat after the command name; undefined once the process is gone. */
function procStat(pid: number): {comm: string; state: string; ppid: number} | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return {comm: stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')')), state: fields[0]!, ppid: Number(fields[1])};
  } catch {
    return undefined;
  }
}

const isRunning = (pid: number): boolean => {
  const st = procStat(pid);
  return st !== undefined && st.state !== 'Z';
};

/** Children of `parent` running `comm`. */
function childrenNamed(parent: number, comm: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const st = procStat(Number(entry));
    if (st?.ppid === parent && st.comm === comm) pids.push(Number(entry));
  }
  return pids;
}

function environOf(pid: number): Map<string, string> {
  const env = new Map<string, string>();
  let text = '';
  try {
    text = readFileSync(`/proc/${pid}/environ`, 'utf8');
  } catch {
    // gone already
  }
  for (const pair of text.split('\0')) {
    const eq = pair.indexOf('=');
    if (eq > 0) env.set(pair.slice(0, eq), pair.slice(eq + 1));
  }
  return env;
}

/** A client whose session the server may end (a restore's swap, the cluster's stop) without crashing the test run. */
function connectable(config: pg.ClientConfig): pg.Client {
  const client = new pg.Client(config);
  client.on('error', () => undefined);
  return client;
}

async function waitFor<T>(what: string, probe: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe.skipIf(!available)('credential files of pg_dump and pg_restore', () => {
  let install: EmbeddedInstall;
  let original: unknown[];
  let backupId: string;
  let provisionerConfig: pg.ClientConfig;
  let superuserConfig: pg.ClientConfig;
  let tenantConfig: pg.ClientConfig;
  const monitors = new Map<pg.ClientConfig, pg.Client>();

  /**
   * A query on a monitoring session, reconnected when the server ended the last one (a restore
   * ends every session of the tenant database when it swaps the restored one in).
   */
  async function monitorQuery(config: pg.ClientConfig, sql: string, retry = true): Promise<pg.QueryResult> {
    let client = monitors.get(config);
    if (!client) {
      client = connectable(config);
      monitors.set(config, client);
      await client.connect();
    }
    try {
      return await client.query(sql);
    } catch (err) {
      monitors.delete(config);
      await client.end().catch(() => undefined);
      if (!retry) throw err;
      return monitorQuery(config, sql, false);
    }
  }

  const libpqArea = (): string => path.join(install.dir.root, 'run', 'libpq');
  const checksums = (): Promise<unknown[]> => install.asTenant('acme', async (c) => (await c.query(CHECKSUM_SQL)).rows);

  /**
   * Every credential directory of this install that still exists: anything in the install's libpq
   * area, and any dforge-libpq-* in the system temp directory whose passfile names this install's
   * port (other installs on this host may be running their own tests).
   */
  async function leftovers(): Promise<string[]> {
    const found: string[] = [];
    for (const name of await fs.readdir(libpqArea()).catch(() => [] as string[])) found.push(path.join(libpqArea(), name));
    for (const name of await fs.readdir(os.tmpdir())) {
      if (!name.startsWith('dforge-libpq-')) continue;
      const pgpass = await fs.readFile(path.join(os.tmpdir(), name, 'pgpass'), 'utf8').catch(() => '');
      if (pgpass.includes(`:${install.port}:`)) found.push(path.join(os.tmpdir(), name));
    }
    return found;
  }

  /** Holds pg_dump: a tenant transaction keeps crm.accounts locked until release(). */
  async function holdBackups(): Promise<{release(): Promise<void>}> {
    const plane = await install.plane();
    const password = await install.tenantPassword(plane, 'acme');
    await plane.close();
    const c = connectable(install.clientConfig('tenant_acme', password, 'tenant_acme', {application_name: 'dforge-test-lock'}));
    await c.connect();
    await c.query('BEGIN');
    await c.query('LOCK TABLE crm.accounts IN ACCESS EXCLUSIVE MODE');
    return {release: () => c.end()};
  }

  /** Holds pg_restore: while this session is connected, copying crm.gated waits (see crm.gate()). */
  async function holdRestores(): Promise<{release(): Promise<void>}> {
    const plane = await install.plane();
    const password = await install.tenantPassword(plane, 'acme');
    await plane.close();
    const c = connectable(install.clientConfig('tenant_acme', password, 'tenant_acme', {application_name: 'dforge-test-hold'}));
    await c.connect();
    return {release: () => c.end()};
  }

  /** Waits until `run` has started `tool`, the tool is connected, and it is waiting on the hold. */
  async function heldTool(run: Run, tool: 'pg_dump' | 'pg_restore'): Promise<HeldTool> {
    // The one that connects somewhere: restore also runs pg_restore --list, which has no passfile.
    const [pid, env] = await waitFor(`${tool} to start`, () => {
      if (run.child.exitCode !== null || run.child.signalCode !== null) throw new Error(`dforge exited before ${tool} started`);
      for (const pid of childrenNamed(run.child.pid!, tool)) {
        const env = environOf(pid);
        if (env.has('PGPASSFILE')) return [pid, env] as const;
      }
      return undefined;
    });
    const passfile = env.get('PGPASSFILE')!;
    const caFile = env.get('PGSSLROOTCERT');
    if (!caFile) throw new Error(`${tool} runs without PGSSLROOTCERT`);
    // Its temporary files (restore's -L list) go to the same private directory, never to /tmp.
    expect(env.get('TMPDIR'), `${tool}'s TMPDIR`).toBe(path.dirname(passfile));
    if (tool === 'pg_dump') {
      // pg_dump runs as the tenant role: the tenant sees its own sessions' wait events.
      await waitFor('pg_dump to wait for the lock', async () => (await monitorQuery(tenantConfig, "SELECT 1 FROM pg_stat_activity WHERE application_name LIKE 'dforge-%' AND application_name <> 'dforge-test-lock' AND wait_event_type = 'Lock'")).rowCount === 1);
    } else {
      // pg_restore runs as the short-lived restore role, copying into the scratch database, inside
      // crm.gate(). Only the superuser sees that session's query text.
      await waitFor('pg_restore to wait in the gate', async () => (await monitorQuery(superuserConfig, "SELECT 1 FROM pg_stat_activity WHERE datname = 'tenant_acme__restore' AND application_name LIKE 'dforge-%' AND query LIKE 'COPY crm.gated%'")).rowCount === 1);
    }
    return {pid, passfile, caFile};
  }

  /** No dforge tool session is left on the cluster (a killed run's orphan has gone). */
  async function toolSessionsGone(): Promise<void> {
    await waitFor('the killed run\'s tool sessions to end', async () => (await monitorQuery(provisionerConfig, "SELECT 1 FROM pg_stat_activity WHERE datname LIKE 'tenant_acme%' AND application_name LIKE 'dforge-%' AND application_name NOT LIKE 'dforge-test-%'")).rowCount === 0);
  }

  beforeAll(async () => {
    install = await quickstartInstall();
    await install.asTenant('acme', (c) => c.query(SEED_SQL));
    original = await checksums();
    const r = await install.cli(['backup', '--tenant', 'acme', '--json']);
    expect(r.code, r.stderr).toBe(0);
    backupId = (JSON.parse(r.stdout) as {id: string}).id;
    const plane = await install.plane();
    const provisionerPassword = (await plane.keys.sealed.get('postgres/local-1/provisioner')).toString();
    const superuserPassword = (await plane.keys.sealed.get('postgres/local-1/superuser')).toString();
    const tenantPassword = await install.tenantPassword(plane, 'acme');
    await plane.close();
    provisionerConfig = install.clientConfig('dforge_provisioner', provisionerPassword, 'postgres', {application_name: 'dforge-test-monitor'});
    // The superuser's only way in: the unix socket (pg_hba rejects it over TCP).
    superuserConfig = {host: path.join(install.dir.root, 'run', 'postgres', 'local-1'), port: install.port, user: 'dforge_admin', password: superuserPassword, database: 'postgres', application_name: 'dforge-test-monitor'};
    tenantConfig = install.clientConfig('tenant_acme', tenantPassword, 'tenant_acme', {application_name: 'dforge-test-monitor'});
  });
  afterAll(async () => {
    for (const client of monitors.values()) await client.end().catch(() => undefined);
    await install?.cleanup();
  });

  it('while pg_dump runs, its passfile is a 0600 file in a 0700 directory of the install, never in the system temp directory', async () => {
    const hold = await holdBackups();
    const run = startCli(install, ['backup', '--tenant', 'acme']);
    try {
      const tool = await heldTool(run, 'pg_dump');
      const area = libpqArea();
      expect(path.dirname(path.dirname(tool.passfile))).toBe(area);
      expect(path.dirname(tool.caFile)).toBe(path.dirname(tool.passfile));
      const uid = process.geteuid!();
      for (const [file, mode] of [
        [area, 0o700],
        [path.dirname(tool.passfile), 0o700],
        [tool.passfile, 0o600],
        [tool.caFile, 0o600],
      ] as const) {
        const st = await fs.lstat(file);
        expect((st.mode & 0o777).toString(8), file).toBe(mode.toString(8));
        expect(st.uid, file).toBe(uid);
        expect(st.isSymbolicLink(), file).toBe(false);
      }
      // Nothing else in the temp directory names this install's cluster.
      expect((await leftovers()).filter((f) => !f.startsWith(`${area}/`))).toEqual([]);
    } finally {
      await hold.release();
    }
    const done = await run.exited;
    expect(done.code, done.stderr).toBe(0);
    expect(await leftovers()).toEqual([]);
  });

  for (const command of ['backup', 'restore'] as const) {
    it(`SIGTERM during ${command}: the passfile is removed, the tool is stopped, the exit is non-zero`, async () => {
      const hold = command === 'backup' ? await holdBackups() : await holdRestores();
      const args = command === 'backup' ? ['backup', '--tenant', 'acme'] : ['restore', '--tenant', 'acme', '--from', backupId, '--confirm', 'acme'];
      const run = startCli(install, args);
      try {
        const tool = await heldTool(run, command === 'backup' ? 'pg_dump' : 'pg_restore');
        await fs.access(tool.passfile);
        run.child.kill('SIGTERM');
        const done = await run.exited;
        expect(done.code, done.stderr).not.toBe(0);
        expect(done.signal === 'SIGTERM' || done.code === 128 + os.constants.signals.SIGTERM, `exit ${done.code} ${done.signal}`).toBe(true);
        await expect(fs.access(tool.passfile)).rejects.toThrow(/ENOENT/);
        expect(await leftovers()).toEqual([]);
        // The tool was stopped with dforge, while the hold still stands: it did not linger as an orphan.
        await waitFor(`${command}'s tool to stop`, () => !isRunning(tool.pid), 10_000);
      } finally {
        await hold.release();
      }
      await toolSessionsGone();
      expect(await checksums()).toEqual(original);
    });
  }

  it('SIGKILL during backup (3 trials): a leftover may stay, the next backup sweeps it, the data is intact', async () => {
    for (let trial = 0; trial < 3; trial++) {
      const hold = await holdBackups();
      const run = startCli(install, ['backup', '--tenant', 'acme']);
      let tool: HeldTool;
      try {
        tool = await heldTool(run, 'pg_dump');
        run.child.kill('SIGKILL');
        expect((await run.exited).signal).toBe('SIGKILL');
        // Nothing can run on SIGKILL: the passfile stays until the next run.
        expect(await leftovers(), `trial ${trial}`).toEqual([path.dirname(tool.passfile)]);
      } finally {
        await hold.release();
      }
      // The orphaned pg_dump ends on its broken pipe once the lock is gone.
      await waitFor('the orphaned pg_dump to end', () => !isRunning(tool.pid));
      await toolSessionsGone();
      const next = await install.cli(['backup', '--tenant', 'acme', '--json']);
      expect(next.code, next.stderr).toBe(0);
      expect(await leftovers(), `trial ${trial}`).toEqual([]);
      const verify = await install.cli(['backup', 'verify', (JSON.parse(next.stdout) as {id: string}).id, '--deep']);
      expect(verify.code, verify.stderr).toBe(0);
    }
    expect(await checksums()).toEqual(original);
  }, 300_000);

  it('SIGKILL during restore (3 trials): each run sweeps the leftover of the one before, the next backup the last; the live data is intact and restorable', async () => {
    for (let trial = 0; trial < 3; trial++) {
      const hold = await holdRestores();
      const run = startCli(install, ['restore', '--tenant', 'acme', '--from', backupId, '--confirm', 'acme']);
      let tool: HeldTool;
      try {
        tool = await heldTool(run, 'pg_restore');
        run.child.kill('SIGKILL');
        expect((await run.exited).signal).toBe('SIGKILL');
        // Only this run's: its own session swept the one the previous trial left.
        expect(await leftovers(), `trial ${trial}`).toEqual([path.dirname(tool.passfile)]);
      } finally {
        await hold.release();
      }
      // The orphaned pg_restore ends at the end of its input, which died with dforge.
      await waitFor('the orphaned pg_restore to end', () => !isRunning(tool.pid));
      await toolSessionsGone();
      expect(await checksums(), `trial ${trial}`).toEqual(original);
    }
    const next = await install.cli(['backup', '--tenant', 'acme']);
    expect(next.code, next.stderr).toBe(0);
    expect(await leftovers()).toEqual([]);
    const restore = await install.cli(['restore', '--tenant', 'acme', '--from', backupId, '--drop-previous', '--confirm', 'acme']);
    expect(restore.code, restore.stderr).toBe(0);
    expect(await leftovers()).toEqual([]);
    expect(await checksums()).toEqual(original);
  }, 300_000);

  it("a run's sweep never removes the directory of a run that is still alive", async () => {
    const hold = await holdBackups();
    const run = startCli(install, ['backup', '--tenant', 'acme']);
    try {
      const tool = await heldTool(run, 'pg_dump');
      const other = await install.cli(['backup', '--tenant', 'globex']);
      expect(other.code, other.stderr).toBe(0);
      await fs.access(tool.passfile);
      expect(await leftovers()).toEqual([path.dirname(tool.passfile)]);
    } finally {
      await hold.release();
    }
    const done = await run.exited;
    expect(done.code, done.stderr).toBe(0);
    expect(await leftovers()).toEqual([]);
  });
});
