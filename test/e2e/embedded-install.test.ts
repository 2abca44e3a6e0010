import {promises as fs} from 'node:fs';
import path from 'node:path';

import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {runCli} from '../helpers/cli.js';
import {crashAtEveryStep} from '../helpers/crash-points.js';
import {quickstartInstall, type EmbeddedInstall} from '../helpers/embedded-install.js';
import {findPgBinaries} from '../helpers/pg-cluster.js';
import {missingComponent} from '../helpers/requirements.js';

const available = findPgBinaries() !== undefined || missingComponent('PostgreSQL', 'no binaries under /usr/lib/postgresql');

describe.skipIf(!available)('an embedded install driven through the CLI', () => {
  let install: EmbeddedInstall;
  beforeAll(async () => {
    install = await quickstartInstall();
  });
  afterAll(async () => {
    await install?.cleanup();
  });

  /** What the cluster and the registry hold for tenants whose slug starts with `prefix`. */
  async function observe(prefix: string): Promise<{registry: Map<string, string>; roles: string[]; databases: string[]; provisionerMemberOf: string[]}> {
    const plane = await install.plane();
    try {
      const registry = new Map((await plane.control.query<{slug: string; status: string}>('SELECT slug, status FROM tenants WHERE slug LIKE $1', [`${prefix}%`])).rows.map((r) => [r.slug, r.status]));
      const like = `tenant_${prefix.replaceAll('-', '_')}%`;
      const roles = (await plane.control.query<{rolname: string}>('SELECT rolname FROM pg_roles WHERE rolname LIKE $1 ORDER BY 1', [like])).rows.map((r) => r.rolname);
      const databases = (await plane.control.query<{datname: string}>('SELECT datname FROM pg_database WHERE datname LIKE $1 ORDER BY 1', [like])).rows.map((r) => r.datname);
      const provisionerMemberOf = (
        await plane.control.query<{role: string}>("SELECT r.rolname AS role FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = 'dforge_provisioner' ORDER BY 1")
      ).rows.map((r) => r.role);
      return {registry, roles, databases, provisionerMemberOf};
    } finally {
      await plane.close();
    }
  }

  it('quickstart is idempotent: a second run keeps the CA, the keys and the tenants', async () => {
    const before = JSON.parse((await install.cli(['certs', 'status', '--json'])).stdout);
    const again = await install.cli(['quickstart', '--port', String(install.port), '--json']);
    expect(again.code, again.stderr).toBe(0);
    const result = JSON.parse(again.stdout);
    expect(result.tenants).toEqual([expect.objectContaining({slug: 'acme', created: false, status: 'active'}), expect.objectContaining({slug: 'globex', created: false, status: 'active'})]);
    expect(result.clusters[0]).toMatchObject({initialised: false});
    const after = JSON.parse((await install.cli(['certs', 'status', '--json'])).stdout);
    expect(after.certificates.map((c: {report: {sha256Fingerprint: string}}) => c.report.sha256Fingerprint)).toEqual(before.certificates.map((c: {report: {sha256Fingerprint: string}}) => c.report.sha256Fingerprint));
  });

  it('tenant commands: list, show, suspend, resume, rotate-credentials, delete; each audited', async () => {
    expect((await install.cli(['tenant', 'create', 'initech', '--json'])).code).toBe(0);
    const list = (JSON.parse((await install.cli(['tenant', 'list', '--json'])).stdout) as {tenants: Array<{slug: string}>}).tenants;
    expect(list.map((t) => t.slug)).toEqual(['acme', 'globex', 'initech']);
    const show = JSON.parse((await install.cli(['tenant', 'show', 'initech', '--json'])).stdout);
    expect(show).toMatchObject({status: 'active', publicCanConnect: false, roleCanLogin: true, activeDataKeyVersion: 1});
    for (const verb of ['suspend', 'resume', 'rotate-credentials']) expect((await install.cli(['tenant', verb, 'initech'])).code).toBe(0);
    const refused = await install.cli(['tenant', 'delete', 'initech']);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain('needs --confirm initech');
    expect((await install.cli(['tenant', 'delete', 'initech', '--confirm', 'initech'])).code).toBe(0);
    const plane = await install.plane();
    try {
      const actions = (await plane.control.query<{action: string}>("SELECT action FROM ops_log WHERE target = 'tenant:initech' ORDER BY seq")).rows.map((r) => r.action);
      expect(actions).toEqual(['tenant.create', 'tenant.suspend', 'tenant.resume', 'tenant.rotate-credentials', 'tenant.delete']);
    } finally {
      await plane.close();
    }
  });

  it('a hostile slug on the command line is refused with exit 1 and leaves nothing behind', async () => {
    const before = await observe('');
    for (const slug of ["x'; DROP TABLE tenants; --", 'ÀCME', 'a'.repeat(41), 'template1']) {
      const r = await install.cli(['tenant', 'create', slug]);
      expect(r.code, slug).toBe(1);
      expect(r.stderr).toMatch(/What to do:/);
    }
    expect(await observe('')).toEqual(before);
  });

  it('tenant create killed at every crash point: a rerun leaves a complete tenant and no orphan', async () => {
    let slug = '';
    let trial = 0;
    const {steps, killedAt} = await crashAtEveryStep({
      name: 'tenant create (orphans)',
      prepare: async () => {
        slug = `kill-${++trial}`;
      },
      run: (env) => runCli(['tenant', 'create', slug, '--dir', install.dir.root], {env}),
      recover: async (step) => {
        const mid = await observe(slug);
        // Whatever was left is recorded: nothing on the cluster without a registry entry.
        if (mid.registry.size === 0) expect({roles: mid.roles, databases: mid.databases}, `killed after ${step}`).toEqual({roles: [], databases: []});
        const rerun = await install.cli(['tenant', 'create', slug]);
        expect([0, 1]).toContain(rerun.code);
        if (rerun.code === 1) expect(rerun.stderr).toContain(`tenant ${slug} already exists (active)`);
        const after = await observe(slug);
        const name = `tenant_${slug.replaceAll('-', '_')}`;
        expect(after, `killed after ${step}`).toEqual({registry: new Map([[slug, 'active']]), roles: [name, `${name}__owner`], databases: [name], provisionerMemberOf: []});
        const show = JSON.parse((await install.cli(['tenant', 'show', slug, '--json'])).stdout);
        expect(show).toMatchObject({publicCanConnect: false, roleCanLogin: true, activeDataKeyVersion: 1, dataKeyVersions: [1]});
        // The killed run's tenant works: its own role can log in and sees its schemas.
        const schemas = await install.asTenant(slug, (c) => c.query<{n: string}>("SELECT count(*) AS n FROM pg_namespace WHERE nspname IN ('crm','hr','fin','wms','audit')"));
        expect(Number(schemas.rows[0]!.n)).toBe(5);
      },
    });
    expect(new Set(killedAt)).toEqual(new Set(steps));
  });

  it('audit tail shows who did what; audit verify exits 6 once an entry is altered', async () => {
    const tail = (JSON.parse((await install.cli(['audit', 'tail', '--ops', '--tenant', 'initech', '--json'])).stdout) as {entries: Array<{actor: string; action: string; outcome: string}>}).entries;
    expect(tail.map((e) => e.action)).toContain('tenant.delete');
    expect(tail[0]!.actor).toMatch(/^\S+@\S+$/);
    expect((await install.cli(['audit', 'verify'])).code).toBe(0);
    const plane = await install.plane();
    try {
      await plane.control.query("UPDATE ops_log SET actor = 'someone-else' WHERE seq = 3");
      const broken = await install.cli(['audit', 'verify', '--json']);
      expect(broken.code).toBe(6);
      expect(JSON.parse(broken.stdout).error).toMatchObject({kind: 'verification', data: {brokenAt: 3}});
    } finally {
      await plane.close();
    }
  });

  it('no CLI output so far contained a tenant, provisioner or superuser password', async () => {
    const plane = await install.plane();
    const secrets: string[] = [];
    try {
      for (const {slug} of await plane.tenants.list()) secrets.push(await install.tenantPassword(plane, slug));
      for (const name of await plane.keys.sealed.list()) if (name.startsWith('postgres/')) secrets.push((await plane.keys.sealed.get(name)).toString());
    } finally {
      await plane.close();
    }
    expect(secrets.length).toBeGreaterThan(10);
    const all = install.outputs.join('\n');
    for (const s of secrets) expect(all.includes(s), 'a password appeared in command output').toBe(false);
  });

  it('keys rotate --master re-wraps the tenant keys and passwords in dforge_control too; tenants keep working', async () => {
    const r = await install.cli(['keys', 'rotate', '--master', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const {master} = JSON.parse(r.stdout) as {master: {from: number; to: number; rewrapped: Record<string, number>}};
    expect(master.rewrapped.control).toBeGreaterThan(10);
    const status = JSON.parse((await install.cli(['keys', 'status', '--json'])).stdout) as {master: {versions: Array<{version: number; protects: Record<string, number>}>}};
    const old = status.master.versions.find((v) => v.version === master.from)!;
    expect(Object.values(old.protects).every((n) => n === 0)).toBe(true);
    expect((await install.cli(['tenant', 'rotate-credentials', 'acme'])).code).toBe(0);
    expect(await install.asTenant('acme', async (c) => (await c.query<{u: string}>('SELECT current_user AS u')).rows[0]!.u)).toBe('tenant_acme');
  });

  it('db status/stop/start and the systemd unit', async () => {
    const status = JSON.parse((await install.cli(['db', 'status', '--json'])).stdout);
    expect(status.clusters[0]).toMatchObject({running: true, port: install.port});
    expect((await install.cli(['db', 'stop'])).code).toBe(0);
    expect(JSON.parse((await install.cli(['db', 'status', '--json'])).stdout).clusters[0]).toMatchObject({running: false, initialised: true});
    const down = await install.cli(['tenant', 'list']);
    expect(down.code).toBe(1);
    expect(down.stderr).toMatch(/cannot reach cluster local-1 .*ECONNREFUSED/);
    expect(down.stderr).toContain('dforge db status');
    expect((await install.cli(['db', 'start'])).code).toBe(0);
    expect((await install.cli(['tenant', 'list'])).code).toBe(0);
    // systemd's PrivateTmp hides /tmp from the unit, so an install there gets a clear refusal.
    const refused = await install.cli(['db', 'unit']);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/\/tmp/);
  });

  it('db unit renders a hardened systemd unit for an install outside /tmp', async () => {
    const root = await fs.mkdtemp('/var/lib/dforge-unit-test-');
    try {
      const dir = path.join(root, 'install');
      expect((await runCli(['config', 'init', '--dir', dir, '--domain', 'erp.example.test'])).code).toBe(0);
      const unit = await runCli(['db', 'unit', '--dir', dir]);
      expect(unit.code, unit.stderr).toBe(0);
      expect(unit.stdout).toMatch(/^User=\S+$/m);
      expect(unit.stdout).toMatch(new RegExp(`^ExecStart=.*postgres -D ${dir}/data/postgres/main-1`, 'm'));
      expect(unit.stdout).toMatch(/^NoNewPrivileges=true$/m);
      expect(unit.stdout).toMatch(/^ProtectSystem=strict$/m);
    } finally {
      await fs.rm(root, {recursive: true, force: true});
    }
  });
});
