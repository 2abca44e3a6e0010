import {promises as fs} from 'node:fs';
import path from 'node:path';

import {Ajv2020} from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';
import {parse as parseJunit} from 'junit2json';
import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {repoRoot} from '../helpers/cli.js';
import {quickstartInstall, type EmbeddedInstall} from '../helpers/embedded-install.js';
import {clusterAccess, type ClusterAccess} from '../helpers/hostile-tenant.js';
import {findPgBinaries} from '../helpers/pg-cluster.js';
import {missingComponent} from '../helpers/requirements.js';
import type {PostureReport} from '../../src/posture/service.js';

const available = findPgBinaries() !== undefined || missingComponent('PostgreSQL', 'no binaries under /usr/lib/postgresql');

/**
 * `dforge posture` as an operator and a CI job run it: the whole process, on a real quickstart
 * install. The probes' own hostile cases are in test/integration/posture-*.test.ts; here: the
 * report contract (schema, JUnit, exit codes), waivers, recorded history, and that a stopped
 * cluster is never reported as fine.
 */
describe.skipIf(!available)('dforge posture on a quickstart install', () => {
  let install: EmbeddedInstall;
  let access: ClusterAccess;
  let validate: (data: unknown) => boolean;
  let validationErrors: () => string;
  let work: string;

  beforeAll(async () => {
    install = await quickstartInstall();
    access = await clusterAccess(install);
    const backup = await install.cli(['backup', '--all', '--json']);
    expect(backup.code, backup.stderr).toBe(0);
    const ajv = new Ajv2020({strict: true, allErrors: true});
    addFormats.default(ajv);
    const schema = JSON.parse(await fs.readFile(path.join(repoRoot, 'docs/schemas/posture.json'), 'utf8')) as object;
    const v = ajv.compile(schema);
    validate = (data) => v(data);
    validationErrors = () => ajv.errorsText(v.errors);
    work = path.join(path.dirname(install.dir.root), 'posture-work');
    await fs.mkdir(work, {recursive: true});
  });
  afterAll(async () => {
    await install?.cleanup();
  });

  async function posture(...args: string[]): Promise<{code: number | null; report: PostureReport; stderr: string}> {
    const r = await install.cli(['posture', '--json', ...args]);
    let report: PostureReport;
    try {
      report = JSON.parse(r.stdout) as PostureReport;
    } catch {
      throw new Error(`posture printed no JSON (exit ${r.code}): ${r.stdout}\n${r.stderr}`);
    }
    return {code: r.code, report, stderr: r.stderr};
  }

  const notFine = (report: PostureReport) => report.checks.filter((c) => c.status === 'FAIL' || c.status === 'ERROR');

  it('a healthy install: nothing FAIL or ERROR, the report validates against docs/schemas/posture.json, exit 0', async () => {
    const {code, report} = await posture();
    expect(validate(report), validationErrors()).toBe(true);
    expect(notFine(report).map((c) => `${c.id} [${c.scope}] ${c.status}: ${c.observed} ${c.reason ?? ''}`)).toEqual([]);
    expect(code).toBe(0);
    // Every WARN says why (dm-crypt on a test machine, for instance).
    for (const c of report.checks.filter((x) => x.status === 'WARN' || x.status === 'SKIP' || x.status === 'MANUAL')) expect(c.reason ?? c.observed, c.id).not.toBe('');
    expect(report.panel.map((l) => l.label).slice(0, 6)).toEqual(['tenant isolation', 'data at rest encrypted', 'data in transit', 'audit trail', 'self-host', 'data residency']);
    expect(report.panel.find((l) => l.area === 'isolation')).toMatchObject({value: 'db-level'});
    expect(report.panel.find((l) => l.area === 'isolation')!.evidence).toContain('2/2 tenants');
    expect(report.panel.find((l) => l.area === 'audit')!.value).toBe('100%');
    expect(report.panel.find((l) => l.area === 'in-transit')!.value).toBe('tls 1.3');
    for (const area of ['isolation', 'at-rest', 'in-transit', 'audit', 'backups', 'keys', 'runtime', 'residency']) {
      expect(report.checks.some((c) => c.area === area), `checks in ${area}`).toBe(true);
    }
    expect(report.coverage).toBeGreaterThan(90);
    expect(report.score).toBeGreaterThan(80);
    // Every check carries its contract.
    for (const c of report.checks) {
      expect(c.id).toMatch(/^[a-z][a-z0-9-]*(\.[a-z0-9-]+)+$/);
      expect(c.method.length, c.id).toBeGreaterThan(10);
      expect(c.fix, c.id).toMatch(/\bdforge [a-z]|docs\//);
      expect(c.expected.length, c.id).toBeGreaterThan(0);
    }
    expect(report.checks.some((c) => c.controls.some((x) => x.startsWith('CIS PostgreSQL')))).toBe(true);
    expect(report.checks.some((c) => c.controls.includes('GDPR Art. 32'))).toBe(true);
    // --fail-on warn turns any WARN into exit 3.
    const strict = await posture('--fail-on', 'warn');
    expect(strict.code).toBe(strict.report.counts.WARN > 0 ? 3 : 0);
  });

  it('--junit is read by a JUnit parser: one testcase per check, FAILs as failures', async () => {
    await access.superuser('postgres').then(async (su) => {
      await su.query('GRANT CONNECT ON DATABASE tenant_acme TO PUBLIC');
      await su.end();
    });
    try {
      const file = path.join(work, 'posture.xml');
      const {code, report} = await posture('--junit', file);
      expect(code).toBe(3);
      const parsed = (await parseJunit(await fs.readFile(file, 'utf8'))) as {tests?: number; failures?: number; testsuite?: Array<{name: string; testcase?: Array<{name: string; failure?: Array<{message?: string}>}>}>};
      expect(parsed.tests).toBe(report.checks.length);
      expect(parsed.failures).toBe(report.counts.FAIL);
      const failed = (parsed.testsuite ?? []).flatMap((s) => (s.testcase ?? []).filter((t) => t.failure).map((t) => t.name));
      expect(failed.some((n) => n.includes('[tenant:acme]'))).toBe(true);
      expect(failed.some((n) => n.includes('[tenant:globex]'))).toBe(false);
    } finally {
      await access.superuser('postgres').then(async (su) => {
        await su.query('REVOKE CONNECT ON DATABASE tenant_acme FROM PUBLIC');
        await su.end();
      });
    }
    expect((await posture()).code).toBe(0);
  });

  it('each breakage, done as the operator or tenant would, turns its check FAIL and the exit 3; undoing it turns both back', async () => {
    const su = async (sql: string, database = 'postgres'): Promise<void> => {
      const c = await access.superuser(database);
      try {
        await c.query(sql);
      } finally {
        await c.end();
      }
    };
    const hbaFile = path.join(access.dataDir, 'pg_hba.conf');
    const hba = await fs.readFile(hbaFile, 'utf8');
    const cases: Array<{what: string; check: string; scope: string; breakIt: () => Promise<void>; undo: () => Promise<void>}> = [
      {
        what: 'a trust line in pg_hba plus a reload',
        check: 'isolation.hba',
        scope: `cluster:${access.cluster}`,
        breakIt: async () => {
          await fs.writeFile(hbaFile, `${hba}host all all 0.0.0.0/0 trust\n`);
          await su('SELECT pg_reload_conf()');
        },
        undo: async () => {
          await fs.writeFile(hbaFile, hba);
          await su('SELECT pg_reload_conf()');
        },
      },
      {
        what: "ssl_min_protocol_version = 'TLSv1.2' plus a reload",
        check: 'in-transit.tls12-refused',
        scope: `cluster:${access.cluster}`,
        breakIt: () => su("ALTER SYSTEM SET ssl_min_protocol_version = 'TLSv1.2'").then(() => su('SELECT pg_reload_conf()')),
        undo: () => su('ALTER SYSTEM RESET ssl_min_protocol_version').then(() => su('SELECT pg_reload_conf()')),
      },
      {
        what: 'a module table without its trigger',
        check: 'audit.change-log-coverage',
        scope: 'tenant:globex',
        // The guard stops the tenant; only the superuser, with the guard switched off, gets here.
        breakIt: async () => {
          await su('ALTER EVENT TRIGGER dforge_keep_change_log DISABLE', 'tenant_globex');
          await su('CREATE TABLE crm.unaudited (id int); ALTER TABLE crm.unaudited OWNER TO tenant_globex', 'tenant_globex');
          await su('ALTER EVENT TRIGGER dforge_keep_change_log ENABLE', 'tenant_globex');
        },
        undo: () => su('DROP TABLE crm.unaudited', 'tenant_globex'),
      },
      {
        what: 'a trust line reloaded, then the file put back (the server still runs it)',
        check: 'isolation.hba',
        scope: `cluster:${access.cluster}`,
        breakIt: async () => {
          await fs.writeFile(hbaFile, `${hba}host all all 0.0.0.0/0 trust\n`);
          await su('SELECT pg_reload_conf()');
          await new Promise((resolve) => setTimeout(resolve, 50));
          await fs.writeFile(hbaFile, hba);
        },
        undo: () => su('SELECT pg_reload_conf()'),
      },
      {
        what: 'a trigger on audit.change_log that could swallow every row',
        check: 'audit.change-log-tamper',
        scope: 'tenant:acme',
        breakIt: () =>
          su(
            "CREATE FUNCTION audit.swallow() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NULL; END$$; CREATE TRIGGER swallow BEFORE INSERT ON audit.change_log FOR EACH ROW EXECUTE FUNCTION audit.swallow()",
            'tenant_acme',
          ),
        undo: () => su('DROP TRIGGER swallow ON audit.change_log; DROP FUNCTION audit.swallow()', 'tenant_acme'),
      },
      {
        what: 'the provisioner granted pg_read_server_files',
        check: 'isolation.provisioner-memberships',
        scope: `cluster:${access.cluster}`,
        breakIt: () => su('GRANT pg_read_server_files TO dforge_provisioner'),
        undo: () => su('REVOKE pg_read_server_files FROM dforge_provisioner'),
      },
    ];
    for (const c of cases) {
      await c.breakIt();
      try {
        const {code, report} = await posture();
        const hit = report.checks.find((x) => x.id === c.check && x.scope === c.scope);
        expect(hit?.status, `${c.what}: ${hit?.observed}`).toBe('FAIL');
        expect(code, c.what).toBe(3);
        expect(report.overall).toBe('red');
      } finally {
        await c.undo();
      }
      const back = await posture();
      expect(back.report.checks.find((x) => x.id === c.check && x.scope === c.scope)?.status, `${c.what} undone`).toBe('PASS');
      expect(back.code, `${c.what} undone`).toBe(0);
    }
  });

  it('waivers: a valid one waives (exit 0, shown, in the ops log), an expired one is FAIL, a broken file is exit 2', async () => {
    await access.superuser('postgres').then(async (su) => {
      await su.query('GRANT CONNECT ON DATABASE tenant_acme TO PUBLIC');
      await su.end();
    });
    try {
      const failing = notFine((await posture()).report).filter((c) => c.scope === 'tenant:acme');
      expect(failing.length).toBeGreaterThan(0);
      const waiverFile = (expires: string): string =>
        `waivers:\n${failing.map((c, i) => `  - id: W-${i}\n    check: ${c.id}\n    scope: tenant:acme\n    reason: migration window agreed with the tenant\n    approver: ciso@example.com\n    expires: ${expires}\n`).join('')}`;
      const valid = path.join(work, 'valid.yaml');
      await fs.writeFile(valid, waiverFile('2099-12-31'));
      const waived = await posture('--waivers', valid);
      expect(validate(waived.report), validationErrors()).toBe(true);
      expect(waived.code).toBe(0);
      expect(waived.report.counts.waived).toBe(failing.length);
      expect(waived.report.checks.filter((c) => c.waiver).every((c) => c.status === 'FAIL' && c.waiver!.approver === 'ciso@example.com')).toBe(true);
      const log = await install.cli(['audit', 'tail', '--limit', '50', '--json']);
      const entries = (JSON.parse(log.stdout) as {entries: Array<{action: string; outcome: string; details: Record<string, unknown>}>}).entries;
      expect(entries.filter((e) => e.action === 'posture.waiver' && e.outcome === 'waived' && e.details.waiver === 'W-0').length).toBeGreaterThan(0);

      const expired = path.join(work, 'expired.yaml');
      await fs.writeFile(expired, waiverFile('2020-01-31'));
      const lapsed = await posture('--waivers', expired);
      expect(lapsed.code).toBe(3);
      expect(lapsed.report.checks.filter((c) => c.waiver?.expired).every((c) => c.status === 'FAIL' && c.reason?.includes('expired'))).toBe(true);

      const broken = path.join(work, 'broken.yaml');
      await fs.writeFile(broken, 'waivers:\n  - id: W-1\n    check: [unclosed\n');
      const bad = await install.cli(['posture', '--waivers', broken]);
      expect(bad.code).toBe(2);
      expect(bad.stderr).toMatch(/broken\.yaml:\d+:\d+/);
      const unknown = path.join(work, 'unknown.yaml');
      await fs.writeFile(unknown, 'waivers:\n  - id: W-1\n    check: isolation.no-such-check\n    reason: a typo must not waive silently\n    approver: ciso@example.com\n    expires: 2099-01-01\n');
      const typo = await install.cli(['posture', '--waivers', unknown]);
      expect(typo.code).toBe(2);
      expect(typo.stderr).toContain('isolation.no-such-check');
    } finally {
      await access.superuser('postgres').then(async (su) => {
        await su.query('REVOKE CONNECT ON DATABASE tenant_acme FROM PUBLIC');
        await su.end();
      });
    }
  });

  it('--record and posture diff: what changed between runs; an edited record is exit 6', async () => {
    const first = await posture('--record');
    expect(first.report.record?.id).toMatch(/^\d{8}T\d{6}Z-[0-9a-f]{8}$/);
    await access.superuser('postgres').then(async (su) => {
      await su.query('GRANT CONNECT ON DATABASE tenant_globex TO PUBLIC');
      await su.end();
    });
    let second: PostureReport;
    try {
      second = (await posture('--record')).report;
    } finally {
      await access.superuser('postgres').then(async (su) => {
        await su.query('REVOKE CONNECT ON DATABASE tenant_globex FROM PUBLIC');
        await su.end();
      });
    }
    const diff = await install.cli(['posture', 'diff', '--json']);
    expect(diff.code, diff.stderr).toBe(0);
    const changes = (JSON.parse(diff.stdout) as {changes: Array<{scope: string; from: string; to: string}>}).changes;
    expect(changes.some((c) => c.scope === 'tenant:globex' && c.from === 'PASS' && c.to === 'FAIL')).toBe(true);
    expect(changes.every((c) => c.scope !== 'tenant:acme')).toBe(true);

    // Someone passes the good run off as the later one.
    const file = second!.record!.file;
    const original = await fs.readFile(file);
    await fs.copyFile(first.report.record!.file, file);
    const replayed = await install.cli(['posture', 'diff', first.report.record!.id, second!.record!.id]);
    expect(replayed.code).toBe(6);
    expect(replayed.stderr).toContain('not the run its name says');
    await fs.writeFile(file, original);

    // Someone makes the bad run look good.
    const text = await fs.readFile(file, 'utf8');
    await fs.writeFile(file, text.replaceAll('"FAIL"', '"PASS"'));
    const tampered = await install.cli(['posture', 'diff', first.report.record!.id, second!.record!.id]);
    expect(tampered.code).toBe(6);
    expect(tampered.stderr).toContain('altered');
  });

  it('--tenant narrows the tenant checks; an unknown tenant is an error, not an empty pass', async () => {
    const {code, report} = await posture('--tenant', 'acme');
    expect(code).toBe(0);
    expect(report.tenant).toBe('acme');
    expect(report.checks.some((c) => c.scope === 'tenant:acme')).toBe(true);
    expect(report.checks.some((c) => c.scope === 'tenant:globex')).toBe(false);
    const none = await install.cli(['posture', '--tenant', 'nosuch']);
    expect(none.code).toBe(1);
    expect(none.stderr).toContain('no tenant nosuch');
  });

  it('a stopped cluster is never PASS: its checks are ERROR or FAIL, the exit is 3, and the report still validates', async () => {
    const stop = await install.cli(['db', 'stop']);
    expect(stop.code, stop.stderr).toBe(0);
    try {
      const {code, report} = await posture();
      expect(validate(report), validationErrors()).toBe(true);
      expect(code).toBe(3);
      const needsCluster = report.checks.filter((c) => ['isolation', 'in-transit', 'audit', 'backups', 'residency'].includes(c.area));
      expect(needsCluster.length).toBeGreaterThan(0);
      expect(needsCluster.filter((c) => c.status === 'PASS').map((c) => `${c.id} [${c.scope}]`)).toEqual([]);
      expect(report.counts.ERROR).toBeGreaterThan(0);
      expect(report.overall).toBe('red');
      expect(report.coverage).toBeLessThan(100);
    } finally {
      const start = await install.cli(['db', 'start']);
      expect(start.code, start.stderr).toBe(0);
    }
    expect((await posture()).code).toBe(0);
  });

  it('no secret in any output', async () => {
    const plane = await install.plane();
    try {
      const secrets = [access.superuserPassword, access.provisionerPassword, await install.tenantPassword(plane, 'acme'), await install.tenantPassword(plane, 'globex')];
      for (const out of install.outputs) for (const s of secrets) expect(out.includes(s)).toBe(false);
    } finally {
      await plane.close();
    }
  });
});
