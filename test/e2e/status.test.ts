import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import type {CheckResult} from '../../src/posture/check.js';
import {openPostureContext} from '../../src/posture/context.js';
import {runtimeProbe} from '../../src/posture/probes/runtime.js';
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

  beforeAll(async () => {
    install = await quickstartInstall();
    const {loadConfigFile} = await import('../../src/config/load.js');
    cluster = (await loadConfigFile(install.dir.configFile)).regions.local!.clusters[0]!.name;
  });
  afterAll(async () => {
    await install?.cleanup();
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
