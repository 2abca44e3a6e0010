import {promises as fs} from 'node:fs';
import path from 'node:path';

import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import type {CheckResult} from '../../src/posture/check.js';
import {openPostureContext} from '../../src/posture/context.js';
import {runtimeProbe, runtimeProbeWith} from '../../src/posture/probes/runtime.js';
import {quickstartInstall, type EmbeddedInstall} from '../helpers/embedded-install.js';
import {findPgBinaries} from '../helpers/pg-cluster.js';
import {missingComponent} from '../helpers/requirements.js';

const available = findPgBinaries() !== undefined || missingComponent('PostgreSQL', 'no binaries under /usr/lib/postgresql');

interface Report {
  clusters: Array<{cluster: string; port: number; dataDir: string; running: boolean; serverVersion: string | null; version?: string}>;
  tenants: Array<{slug: string}>;
  problems: string[];
}

/**
 * `dforge status` on an embedded install tells the truth: a stopped cluster is a problem and exit
 * 3, with the full report still under --json; and the runtime posture probe never says PASS for a
 * server that is not there.
 */
describe.skipIf(!available)('status and the runtime probe on an embedded install', () => {
  let install: EmbeddedInstall;
  let cluster: string;
  // `dforge db unit` refuses data directories under /tmp (PrivateTmp would hide them): this install lives elsewhere.
  let parent: string;
  const savedTmp = process.env.TMPDIR;

  beforeAll(async () => {
    parent = await fs.mkdtemp('/var/lib/dforge-status-test-');
    await fs.chmod(parent, 0o755);
    process.env.TMPDIR = parent;
    try {
      install = await quickstartInstall();
    } finally {
      if (savedTmp === undefined) delete process.env.TMPDIR;
      else process.env.TMPDIR = savedTmp;
    }
    const {loadConfigFile} = await import('../../src/config/load.js');
    cluster = (await loadConfigFile(install.dir.configFile)).regions.local!.clusters[0]!.name;
  });
  afterAll(async () => {
    await install?.cleanup();
    if (parent) await fs.rm(parent, {recursive: true, force: true});
  });

  async function probe(): Promise<CheckResult[]> {
    const ctx = await openPostureContext(install.dir);
    try {
      return await runtimeProbe(ctx);
    } finally {
      await ctx.plane?.close();
    }
  }
  const byId = (results: CheckResult[], scope: string): Record<string, string> => Object.fromEntries(results.filter((r) => r.scope === scope).map((r) => [r.id, r.status]));

  it('a running install: exit 0, the cluster with its port, data directory and live server version', async () => {
    const json = await install.cli(['status', '--json']);
    expect(json.code, json.stdout + json.stderr).toBe(0);
    const report = JSON.parse(json.stdout) as Report;
    expect(report.problems).toEqual([]);
    expect(report.clusters).toEqual([expect.objectContaining({cluster, port: install.port, running: true, dataDir: `${install.dir.root}/data/postgres/${cluster}`, serverVersion: expect.stringMatching(/^\d+\.\d+/)})]);
    expect(report.tenants.map((t) => t.slug)).toEqual(['acme', 'globex']);
    const text = await install.cli(['status']);
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toMatch(new RegExp(`${cluster}\\s+${install.port}\\s+\\S+\\s+running\\s+\\d+\\.\\d+`));
  }, 120_000);

  it('the runtime probe on a running install: the server checks pass, container checks are skipped', async () => {
    const results = await probe();
    expect(byId(results, `cluster:${cluster}`)).toEqual({'runtime.embedded.server-running': 'PASS', 'runtime.embedded.server-account': 'PASS', 'runtime.embedded.systemd-unit': 'SKIP'});
    const account = results.find((r) => r.id === 'runtime.embedded.server-account')!;
    expect(account.observed).toMatch(/^postmaster pid \d+ uids (\d+)\/\1\/\1\/\1, data directory owner uid \1$/);
    expect(account.observed).not.toMatch(/uids 0/);
    const containers = results.filter((r) => r.id.startsWith('runtime.container.'));
    expect(containers).toHaveLength(7);
    for (const r of containers) expect(r, r.id).toMatchObject({scope: 'install', status: 'SKIP', reason: 'embedded install: no containers'});
  }, 60_000);

  it('an installed systemd unit passes as rendered, and fails when a drop-in or an edit weakens it', async () => {
    const unitDir = await fs.mkdtemp(path.join(parent, 'systemd-'));
    const unitFile = path.join(unitDir, `dforge-postgres-${cluster}.service`);
    const unitCheck = async (): Promise<CheckResult> => {
      const ctx = await openPostureContext(install.dir);
      try {
        return (await runtimeProbeWith({systemdUnitDir: unitDir})(ctx)).find((r) => r.id === 'runtime.embedded.systemd-unit')!;
      } finally {
        await ctx.plane?.close();
      }
    };
    expect(await unitCheck()).toMatchObject({status: 'SKIP', observed: 'not installed'});
    const rendered = await install.cli(['db', 'unit', '--cluster', cluster]);
    expect(rendered.code, rendered.stderr).toBe(0);
    await fs.writeFile(unitFile, rendered.stdout);
    expect(await unitCheck()).toMatchObject({status: 'PASS', observed: expect.stringMatching(/: all \d+ hardening directives as rendered$/)});

    // A careless (or hostile) drop-in: later lines override the unit, and an empty SystemCallFilter= clears the list.
    await fs.mkdir(`${unitFile}.d`);
    await fs.writeFile(path.join(`${unitFile}.d`, 'override.conf'), '[Service]\nNoNewPrivileges=false\nCapabilityBoundingSet=CAP_SYS_ADMIN\nSystemCallFilter=\n');
    const weakened = await unitCheck();
    expect(weakened.status).toBe('FAIL');
    expect(weakened.observed).toMatch(/^3 of \d+ hardening directives differ: NoNewPrivileges, CapabilityBoundingSet, SystemCallFilter$/);
    await fs.rm(`${unitFile}.d`, {recursive: true});
    expect((await unitCheck()).status).toBe('PASS');

    await fs.writeFile(unitFile, rendered.stdout.replace(/^User=.*$/m, 'User=root'));
    expect(await unitCheck()).toMatchObject({status: 'FAIL', observed: expect.stringContaining('differ: User')});
    // The unit name is per host: one running another install's data directory is not this cluster's.
    await fs.writeFile(unitFile, rendered.stdout.replace(/ -D \S+/, ' -D /srv/other/data'));
    expect(await unitCheck()).toMatchObject({status: 'SKIP', observed: 'unit of another install'});
  }, 60_000);

  it('a stopped cluster: status exits 3 naming it, --json still holds the whole report; the probe never passes', async () => {
    expect((await install.cli(['db', 'stop'])).code).toBe(0);
    try {
      const text = await install.cli(['status']);
      expect(text.code).toBe(3);
      expect(text.stdout).toMatch(new RegExp(`${cluster}\\s+${install.port}\\s+\\S+\\s+stopped`));
      expect(text.stderr).toContain(`PostgreSQL cluster ${cluster} is not running`);

      const json = await install.cli(['status', '--json']);
      expect(json.code).toBe(3);
      const out = JSON.parse(json.stdout) as {error: {kind: string; exitCode: number; data: Report}};
      expect(out.error).toMatchObject({kind: 'check', exitCode: 3});
      expect(out.error.data.problems).toContain(`PostgreSQL cluster ${cluster} is not running (start it with: dforge db start --cluster ${cluster})`);
      // dforge_control lives on that cluster: the tenants could not be read, and that is said too.
      expect(out.error.data.problems.some((p) => p.startsWith('could not read tenants: '))).toBe(true);
      expect(out.error.data.clusters).toEqual([expect.objectContaining({cluster, running: false, serverVersion: null})]);

      const results = await probe();
      const server = byId(results, `cluster:${cluster}`);
      expect(server['runtime.embedded.server-running']).toBe('FAIL');
      expect(server['runtime.embedded.server-account']).toBe('ERROR');
      for (const r of results.filter((x) => x.id.startsWith('runtime.embedded.') && x.id !== 'runtime.embedded.systemd-unit')) expect(r.status, r.id).not.toBe('PASS');
    } finally {
      expect((await install.cli(['db', 'start'])).code).toBe(0);
    }
    const again = await install.cli(['status', '--json']);
    expect(again.code, again.stderr).toBe(0);
    expect((JSON.parse(again.stdout) as Report).problems).toEqual([]);
    expect(byId(await probe(), `cluster:${cluster}`)['runtime.embedded.server-running']).toBe('PASS');
  }, 180_000);
});
