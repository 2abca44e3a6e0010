import {spawn, spawnSync} from 'node:child_process';
import {promises as fs, readdirSync, readFileSync} from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import pg from 'pg';
import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {caCertFile} from '../../src/certs/pki-paths.js';
import {publishTenantCatalog} from '../../src/runtime/tenant-catalog.js';
import {cliEntry, runCli, type CliResult} from '../helpers/cli.js';
import {quickstartInstall, type EmbeddedInstall} from '../helpers/embedded-install.js';
import {findPgBinaries} from '../helpers/pg-cluster.js';
import {startPty} from '../helpers/pty.js';
import {missingComponent} from '../helpers/requirements.js';

const available = findPgBinaries() !== undefined || missingComponent('PostgreSQL', 'no binaries under /usr/lib/postgresql');

describe.skipIf(!available)("getting to a tenant's data: tenant credentials, db psql, the embedded catalog", () => {
  let install: EmbeddedInstall;
  let acmePassword: string;
  let scratch: string;

  /** `db psql`: its own flags (and --dir) before `--`, psql's after. */
  const dbPsql = (flags: string[], psqlArgs: string[]): Promise<CliResult> => runCli(['db', 'psql', ...flags, '--dir', install.dir.root, '--', ...psqlArgs]);

  const reveals = async (): Promise<Array<{action: string; target: string; details: Record<string, unknown>}>> => {
    const plane = await install.plane();
    try {
      return (await plane.control.query("SELECT action, target, details FROM ops_log WHERE action IN ('tenant.credentials', 'tenant.psql', 'db.psql') ORDER BY seq")).rows;
    } finally {
      await plane.close();
    }
  };

  beforeAll(async () => {
    install = await quickstartInstall();
    const plane = await install.plane();
    try {
      acmePassword = await install.tenantPassword(plane, 'acme');
    } finally {
      await plane.close();
    }
    scratch = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-cred-'));
  });

  afterAll(async () => {
    await install?.cleanup();
    if (scratch) await fs.rm(scratch, {recursive: true, force: true});
  });

  it('shows the connection without the password by default, on a pipe, in --json and on a terminal, and logs no reveal', async () => {
    const human = await install.cli(['tenant', 'credentials', 'acme']);
    expect(human.code).toBe(0);
    expect(human.stdout).toContain(`127.0.0.1`);
    expect(human.stdout).toContain(String(install.port));
    expect(human.stdout).toContain('tenant_acme');
    expect(human.stdout).toContain('verify-full');
    expect(human.stdout).toContain(caCertFile(install.dir));
    expect(human.stdout).toMatch(/password\s+not shown: --uri, --env or --pgpass FILE/);

    const json = await install.cli(['tenant', 'credentials', 'acme', '--json']);
    expect(json.code).toBe(0);
    const data = JSON.parse(json.stdout) as Record<string, unknown>;
    expect(data).toMatchObject({slug: 'acme', host: '127.0.0.1', port: install.port, database: 'tenant_acme', role: 'tenant_acme', sslmode: 'verify-full', sslrootcert: caCertFile(install.dir)});
    expect(data).not.toHaveProperty('password');

    const pty = startPty(`${process.execPath} ${cliEntry} tenant credentials acme --dir ${install.dir.root}`);
    const {code, output} = await pty.exit;
    expect(code).toBe(0);
    expect(output).toContain('tenant_acme');

    for (const text of [human.stdout, human.stderr, json.stdout, json.stderr, output]) expect(text).not.toContain(acmePassword);
    expect(await reveals()).toEqual([]);
  });

  it('--uri gives a URI that psql and pg connect with, to the tenant database only, and records the reveal', async () => {
    const r = await install.cli(['tenant', 'credentials', 'acme', '--uri']);
    expect(r.code).toBe(0);
    const uri = r.stdout.trim();
    expect(uri).toMatch(/^postgresql:\/\/tenant_acme:[^@]+@127\.0\.0\.1:\d+\/tenant_acme\?sslmode=verify-full&sslrootcert=/);
    expect(decodeURIComponent(new URL(uri).password)).toBe(acmePassword);

    const psql = path.join(findPgBinaries()!.binDir, 'psql');
    const env = {PATH: process.env.PATH ?? '/usr/bin:/bin'};
    const who = spawnSync(psql, [uri, '-Atc', 'select current_user, current_database()'], {encoding: 'utf8', env});
    expect(who.stderr).toBe('');
    expect(who.stdout.trim()).toBe('tenant_acme|tenant_acme');
    // The same credentials do not open another tenant's database.
    const other = spawnSync(psql, [uri.replace('/tenant_acme?', '/tenant_globex?'), '-Atc', 'select 1'], {encoding: 'utf8', env});
    expect(other.status).not.toBe(0);
    expect(other.stderr).toMatch(/tenant_globex|pg_hba|permission denied/);

    const client = new pg.Client({connectionString: uri});
    await client.connect();
    try {
      expect((await client.query<{u: string}>('select current_user as u')).rows[0]!.u).toBe('tenant_acme');
    } finally {
      await client.end();
    }

    const json = await install.cli(['tenant', 'credentials', 'acme', '--uri', '--json']);
    expect(JSON.parse(json.stdout)).toMatchObject({form: 'uri', password: acmePassword, uri});
    expect((await reveals()).map((e) => [e.action, e.target, e.details.form])).toEqual([
      ['tenant.credentials', 'tenant:acme', 'uri'],
      ['tenant.credentials', 'tenant:acme', 'uri'],
    ]);
    expect(JSON.stringify(await reveals())).not.toContain(acmePassword);
  });

  it('--env prints shell-quoted export lines that a shell can eval to connect', async () => {
    const r = await install.cli(['tenant', 'credentials', 'acme', '--env']);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("export PGUSER='tenant_acme'\n");
    expect(r.stdout).toContain(`export PGSSLROOTCERT='${caCertFile(install.dir)}'\n`);
    const psql = path.join(findPgBinaries()!.binDir, 'psql');
    const sh = spawnSync('sh', ['-c', `eval "$1"; exec "$2" -Atc 'select current_user'`, 'sh', r.stdout, psql], {encoding: 'utf8', env: {PATH: process.env.PATH ?? '/usr/bin:/bin'}});
    expect(sh.stdout.trim()).toBe('tenant_acme');
    expect((await reveals()).at(-1)).toMatchObject({action: 'tenant.credentials', details: {form: 'env'}});
  });

  it('--pgpass writes a 0600 line without printing the password, updates it in place, and refuses a loose file untouched', async () => {
    const file = path.join(scratch, 'pgpass');
    await fs.writeFile(file, 'otherhost:5432:*:someone:keepme\n', {mode: 0o600});
    const first = await install.cli(['tenant', 'credentials', 'acme', '--pgpass', file]);
    expect(first.code).toBe(0);
    const again = await install.cli(['tenant', 'credentials', 'acme', '--pgpass', file, '--json']);
    expect(again.code).toBe(0);
    expect(JSON.parse(again.stdout)).toMatchObject({form: 'pgpass', pgpass: {file, replaced: true}});
    for (const text of [first.stdout, first.stderr, again.stdout, again.stderr]) expect(text).not.toContain(acmePassword);
    expect((await fs.stat(file)).mode & 0o777).toBe(0o600);
    const lines = (await fs.readFile(file, 'utf8')).trimEnd().split('\n');
    expect(lines).toEqual(['otherhost:5432:*:someone:keepme', `127.0.0.1:${install.port}:tenant_acme:tenant_acme:${acmePassword.replaceAll('\\', '\\\\').replaceAll(':', '\\:')}`]);
    const psql = spawnSync(path.join(findPgBinaries()!.binDir, 'psql'), ['-Atc', 'select current_user'], {
      encoding: 'utf8',
      env: {PATH: '/usr/bin:/bin', PGPASSFILE: file, PGHOST: '127.0.0.1', PGPORT: String(install.port), PGUSER: 'tenant_acme', PGDATABASE: 'tenant_acme', PGSSLMODE: 'verify-full', PGSSLROOTCERT: caCertFile(install.dir)},
    });
    expect(psql.stdout.trim()).toBe('tenant_acme');

    const loose = path.join(scratch, 'loose-pgpass');
    await fs.writeFile(loose, 'x:1:*:y:z\n');
    await fs.chmod(loose, 0o644);
    const refused = await install.cli(['tenant', 'credentials', 'acme', '--pgpass', loose]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain(`chmod 600 ${loose}`);
    expect(await fs.readFile(loose, 'utf8')).toBe('x:1:*:y:z\n');
    expect((await fs.stat(loose)).mode & 0o777).toBe(0o644);
  });

  it('refuses an unknown or suspended tenant with what to do', async () => {
    const unknown = await install.cli(['tenant', 'credentials', 'nosuch', '--uri']);
    expect(unknown.code).toBe(1);
    expect(unknown.stdout).toBe('');
    expect(unknown.stderr).toContain('no tenant nosuch');
    expect(unknown.stderr).toContain('dforge tenant list');

    expect((await install.cli(['tenant', 'suspend', 'globex'])).code).toBe(0);
    try {
      const before = (await reveals()).length;
      const suspended = await install.cli(['tenant', 'credentials', 'globex', '--uri']);
      expect(suspended.code).toBe(1);
      expect(suspended.stdout).toBe('');
      expect(suspended.stderr).toContain('tenant globex is suspended');
      expect(suspended.stderr).toContain('dforge tenant resume globex');
      expect((await reveals()).length).toBe(before);
    } finally {
      expect((await install.cli(['tenant', 'resume', 'globex'])).code).toBe(0);
    }
  });

  it('db psql --tenant connects as the tenant over verified TLS, with no password in argv or the environment', async () => {
    const r = await dbPsql(['--tenant', 'acme'], ['-Atc', "select current_user || ' ' || (select ssl from pg_stat_ssl where pid = pg_backend_pid())"]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe('tenant_acme true');
    expect((await reveals()).at(-1)).toMatchObject({action: 'tenant.psql', target: 'tenant:acme', details: {form: 'psql'}});

    // psql's exit code is dforge's.
    const failing = await dbPsql(['--tenant', 'acme'], ['-c', 'select nonsense_column']);
    expect(failing.code).toBe(1);
    expect(failing.stderr).toContain('nonsense_column');

    // Look at the running psql itself: its argv and environment hold no password.
    const child = spawn(process.execPath, [cliEntry, 'db', 'psql', '--tenant', 'acme', '--dir', install.dir.root, '--', '-c', 'select pg_sleep(3)'], {stdio: 'ignore', env: {...process.env, DFORGE_CANARY_SECRET: 'canary-3f1e'}});
    let seen: {cmdline: string; environ: string} | undefined;
    const deadline = Date.now() + 20_000;
    while (!seen && Date.now() < deadline) {
      for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
        try {
          const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
          if (cmdline.split('\0')[0]!.endsWith('/psql') && cmdline.includes('pg_sleep(3)')) seen = {cmdline, environ: readFileSync(`/proc/${pid}/environ`, 'utf8')};
        } catch {
          // The process ended while it was read.
        }
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    await new Promise((resolve) => child.once('close', resolve));
    expect(seen).toBeDefined();
    expect(seen!.cmdline).not.toContain(acmePassword);
    expect(seen!.environ).not.toContain(acmePassword);
    expect(seen!.environ).toContain('PGSSLMODE=verify-full');
    expect(seen!.environ).not.toContain('PGPASSWORD');
    // dforge's own variables (the master key or its passphrase may be among them) stay with dforge.
    expect(seen!.environ).not.toContain('canary-3f1e');
    // The passfile went with the session.
    expect(readdirSync(install.dir.libpqSessionsDir)).toEqual([]);
  });

  it('db psql without --tenant is the provisioner on dforge_control', async () => {
    const r = await dbPsql([], ['-Atc', 'select current_user, current_database()']);
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe('dforge_provisioner|dforge_control');
    expect((await reveals()).at(-1)).toMatchObject({action: 'db.psql'});
  });

  it('an embedded install has the runtime/tenants catalog, private, and it follows tenant create and delete', async () => {
    const dir = path.join(install.dir.runtimeDir, 'tenants');
    const catalog = async (): Promise<{tenants: Array<Record<string, unknown>>}> => JSON.parse(await fs.readFile(path.join(dir, 'catalog.json'), 'utf8')) as {tenants: Array<Record<string, unknown>>};
    expect((await fs.stat(dir)).mode & 0o777).toBe(0o700);
    expect((await fs.stat(path.join(dir, 'catalog.json'))).mode & 0o777).toBe(0o400);
    const acme = (await catalog()).tenants.find((t) => t.slug === 'acme');
    expect(acme).toEqual({
      slug: 'acme',
      database: 'tenant_acme',
      role: 'tenant_acme',
      host: '127.0.0.1',
      port: install.port,
      sslmode: 'verify-full',
      passwordFile: path.join(dir, 'acme.password'),
      sslrootcert: caCertFile(install.dir),
      status: 'active',
    });
    expect(await fs.readFile(path.join(dir, 'acme.password'), 'utf8')).toBe(acmePassword);
    expect((await fs.stat(path.join(dir, 'acme.password'))).mode & 0o777).toBe(0o400);

    expect((await install.cli(['tenant', 'create', 'initech'])).code).toBe(0);
    expect((await catalog()).tenants.map((t) => t.slug)).toEqual(['acme', 'globex', 'initech']);
    expect(readdirSync(dir)).toContain('initech.password');
    expect((await install.cli(['tenant', 'delete', 'initech', '--confirm', 'initech'])).code).toBe(0);
    expect((await catalog()).tenants.map((t) => t.slug)).toEqual(['acme', 'globex']);
    expect(readdirSync(dir)).not.toContain('initech.password');
  });

  it("a tenant change checks its own tenant's file and that every other file is there; a full reconcile checks them all", async () => {
    const dir = path.join(install.dir.runtimeDir, 'tenants');
    const acme = path.join(dir, 'acme.password');
    const globex = path.join(dir, 'globex.password');
    const acmeLength = (await fs.readFile(acme)).length;
    // A run killed before it published left globex without its file.
    await fs.rm(globex);
    // Someone overwrites acme's file (same size, so only its content stamp tells).
    await fs.chmod(acme, 0o600);
    await fs.writeFile(acme, 'x'.repeat(acmeLength));
    const handWritten = (await fs.stat(acme, {bigint: true})).mtimeNs;

    expect((await install.cli(['tenant', 'create', 'hooli'])).code).toBe(0);
    const plane = await install.plane();
    try {
      expect(await fs.readFile(path.join(dir, 'hooli.password'), 'utf8')).toBe(await install.tenantPassword(plane, 'hooli'));
      // The missing file is written again, from its sealed password.
      expect(await fs.readFile(globex, 'utf8')).toBe(await install.tenantPassword(plane, 'globex'));
      expect((await fs.stat(globex)).mode & 0o777).toBe(0o400);
      // Another tenant's file is not re-read on hooli's create: that is what keeps a create flat.
      expect((await fs.stat(acme, {bigint: true})).mtimeNs).toBe(handWritten);

      // acme's own next change puts it right.
      expect((await install.cli(['tenant', 'suspend', 'acme'])).code).toBe(0);
      expect(readdirSync(dir)).not.toContain('acme.password');
      expect((await install.cli(['tenant', 'resume', 'acme'])).code).toBe(0);
      expect(await fs.readFile(acme, 'utf8')).toBe(acmePassword);

      // A full reconcile (install, a quickstart re-run) checks every file's content stamp.
      await fs.chmod(acme, 0o600);
      await fs.writeFile(acme, 'y'.repeat(acmeLength));
      const untouched = (await fs.stat(globex, {bigint: true})).mtimeNs;
      expect((await publishTenantCatalog(plane)).changed).toBe(true);
      expect(await fs.readFile(acme, 'utf8')).toBe(acmePassword);
      expect((await fs.stat(acme)).mode & 0o777).toBe(0o400);
      // Nothing changed for globex: its file was not rewritten.
      expect((await fs.stat(globex, {bigint: true})).mtimeNs).toBe(untouched);
      expect((await publishTenantCatalog(plane)).changed).toBe(false);

      // A rotation changes the sealed password: the publication that follows writes the new one.
      const trace = path.join(scratch, 'rotate.trace');
      const rotate = (env: NodeJS.ProcessEnv = {}): Promise<CliResult> => runCli(['tenant', 'rotate-credentials', 'globex', '--dir', install.dir.root], {env: {...process.env, ...env}});
      expect((await rotate({DFORGE_CRASH_TRACE: trace})).code).toBe(0);
      expect(await fs.readFile(globex, 'utf8')).toBe(await install.tenantPassword(plane, 'globex'));

      // A rotation killed once it is committed, before it publishes: globex's file is there but
      // stale, and the role no longer takes that password. The next change of another tenant
      // finds it through the digest of the unnamed tenants' sealed passwords.
      const committed = readFileSync(trace, 'utf8').split('\n').find((line) => line.endsWith('\tops-log.entry-committed'))!.split('\t')[0];
      const stale = await fs.readFile(globex, 'utf8');
      expect((await rotate({DFORGE_CRASH_AT: committed})).code).not.toBe(0);
      expect(await fs.readFile(globex, 'utf8')).toBe(stale);
      expect(await install.tenantPassword(plane, 'globex')).not.toBe(stale);
      expect((await install.cli(['tenant', 'suspend', 'hooli'])).code).toBe(0);
      expect(await fs.readFile(globex, 'utf8')).toBe(await install.tenantPassword(plane, 'globex'));
      expect((await fs.stat(globex)).mode & 0o777).toBe(0o400);
    } finally {
      await plane.close();
    }
    expect((await install.cli(['tenant', 'delete', 'hooli', '--confirm', 'hooli'])).code).toBe(0);
    expect(readdirSync(dir)).not.toContain('hooli.password');
  });
});
