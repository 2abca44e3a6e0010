import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {parse as parseJunit} from 'junit2json';
import {describe, expect, it} from 'vitest';

import {errorResult, runCheck, type CheckDefinition, type CheckResult, type PostureStatus} from '../../src/posture/check.js';
import {toJunit} from '../../src/posture/junit.js';
import {parseHba, type HbaRule} from '../../src/posture/probes/hba.js';
import {hbaFinding} from '../../src/posture/probes/isolation.js';
import {KNOWN_CHECKS} from '../../src/posture/probes/index.js';
import {exitCodeOf, overallOf, runPosture, type RegisteredProbe} from '../../src/posture/service.js';
import {applyWaivers, loadWaivers} from '../../src/posture/waivers.js';
import type {PostureContext} from '../../src/posture/context.js';
import {repoRoot} from '../helpers/cli.js';

const def = (id: string, severity: CheckDefinition['severity'] = 'high'): CheckDefinition => ({
  id,
  title: id,
  area: 'isolation',
  controls: [],
  severity,
  expected: 'x',
  method: 'measured',
  fix: 'dforge posture',
});
const result = (id: string, status: PostureStatus, severity: CheckDefinition['severity'] = 'high', scope = 'install'): CheckResult => ({...def(id, severity), scope, status, observed: status});

/** The smallest context runPosture needs: probes here measure nothing external. */
const ctx = {config: {domain: 'example.test', target: 'embedded', release: '1.0.0'}, clock: () => new Date('2026-11-28T12:00:00Z'), tenants: [], plane: undefined} as unknown as PostureContext;
const probe = (results: CheckResult[]): RegisteredProbe => ({name: 'test', checks: results.map((r) => r), probe: async () => results});

describe('posture report logic', () => {
  it('a probe that throws is ERROR for every check it owns, never PASS', async () => {
    const broken: RegisteredProbe = {name: 'broken', checks: [def('isolation.a'), def('isolation.b')], probe: async () => Promise.reject(new Error('cluster gone'))};
    const report = await runPosture(ctx, [broken]);
    expect(report.checks.map((c) => c.status)).toEqual(['ERROR', 'ERROR']);
    expect(report.checks[0]!.reason).toContain('cluster gone');
    expect(report.exitCode).toBe(1);
    expect(report.overall).toBe('grey');
    expect(report.coverage).toBe(0);
    expect((await runCheck(def('isolation.c'), 'install', async () => Promise.reject(new Error('no route')))).status).toBe('ERROR');
  });

  it('score is severity-weighted over evaluated checks; coverage leaves out SKIP and counts ERROR and MANUAL as not evaluated', async () => {
    const report = await runPosture(ctx, [probe([result('isolation.a', 'PASS', 'critical'), result('isolation.b', 'FAIL', 'low'), result('isolation.c', 'SKIP'), result('isolation.d', 'MANUAL'), result('isolation.e', 'ERROR')])]);
    expect(report.score).toBe(90.9); // 10 / (10 + 1)
    expect(report.coverage).toBe(50); // 2 evaluated of 4 applicable
    expect(report.exitCode).toBe(3); // FAIL outranks ERROR
  });

  it('exit: FAIL (or WARN with --fail-on warn) is 3, else ERROR is 1, else 0; waived results do not count', () => {
    expect(exitCodeOf([result('isolation.a', 'WARN')], 'fail')).toBe(0);
    expect(exitCodeOf([result('isolation.a', 'WARN')], 'warn')).toBe(3);
    expect(exitCodeOf([result('isolation.a', 'ERROR'), result('isolation.b', 'WARN')], 'fail')).toBe(1);
    const waived = {...result('isolation.a', 'FAIL'), waiver: {id: 'W', reason: 'r', approver: 'a', expires: '2099-01-01T00:00:00Z', expired: false}};
    expect(exitCodeOf([waived], 'fail')).toBe(0);
    expect(overallOf([waived])).toBe('green');
  });

  it('waivers: scope matching, an expired waiver is FAIL whatever was measured, PASS and ERROR use no waiver', () => {
    const now = new Date('2026-11-28T00:00:00Z');
    const waivers = [
      {id: 'W1', check: 'isolation.a', scope: 'tenant:acme', reason: 'agreed window', approver: 'ciso', expires: '2099-01-01T23:59:59.999Z'},
      {id: 'W2', check: 'isolation.b', scope: '*', reason: 'agreed window', approver: 'ciso', expires: '2020-01-01T23:59:59.999Z'},
    ];
    const {results, used} = applyWaivers(
      [result('isolation.a', 'FAIL', 'high', 'tenant:acme'), result('isolation.a', 'FAIL', 'high', 'tenant:globex'), result('isolation.b', 'WARN'), result('isolation.b', 'PASS', 'high', 'cluster:x'), result('isolation.b', 'ERROR', 'high', 'cluster:y')],
      waivers,
      now,
    );
    expect(results.map((r) => [r.status, r.waiver?.id ?? null, r.waiver?.expired ?? null])).toEqual([
      ['FAIL', 'W1', false],
      ['FAIL', null, null],
      ['FAIL', 'W2', true],
      ['PASS', null, null],
      // "Could not measure" is never waived, not even by a "*" waiver.
      ['ERROR', null, null],
    ]);
    expect(results[2]!.measuredStatus).toBe('WARN');
    expect(used.map((u) => [u.waiver.id, u.expired])).toEqual([
      ['W1', false],
      ['W2', true],
    ]);
  });

  it('a waivers file: dates, defaults, and clear errors for broken YAML, missing fields and duplicate ids', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-waivers-'));
    try {
      const file = path.join(dir, 'w.yaml');
      await fs.writeFile(file, 'waivers:\n  - id: W-1\n    check: at-rest.data-volume\n    reason: SAN encrypts the disks\n    approver: jane@example.com\n    expires: 2027-03-31\n');
      expect(await loadWaivers(file)).toEqual([{id: 'W-1', check: 'at-rest.data-volume', scope: '*', reason: 'SAN encrypts the disks', approver: 'jane@example.com', expires: '2027-03-31T23:59:59.999Z'}]);
      const cases: Array<[string, RegExp]> = [
        ['waivers:\n  - id: [\n', /w\.yaml:\d+:\d+: not valid YAML/],
        ['waivers:\n  - id: W-1\n    check: at-rest.data-volume\n    approver: jane@example.com\n    expires: 2027-03-31\n', /waivers\.0\.reason/],
        ['waivers:\n  - id: W-1\n    check: at-rest.data-volume\n    reason: SAN encrypts the disks\n    approver: jane@example.com\n    expires: soon\n', /expires: a date/],
        ['waivers:\n  - {id: W-1, check: a.b, reason: long enough reason, approver: abc, expires: 2027-01-01}\n  - {id: W-1, check: a.c, reason: long enough reason, approver: abc, expires: 2027-01-01}\n', /W-1 is used twice/],
        ['waivers:\n  - {id: W-1, check: a.b, reason: long enough reason, approver: abc, expires: 2027-01-01, approved: yes}\n', /Unrecognized key|unrecognized/i],
      ];
      for (const [text, message] of cases) {
        await fs.writeFile(file, text);
        await expect(loadWaivers(file)).rejects.toMatchObject({exitCode: 2, message: expect.stringMatching(message)});
      }
    } finally {
      await fs.rm(dir, {recursive: true, force: true});
    }
  });

  it('JUnit: well-formed even with control characters and markup in observed values', async () => {
    const hostile = {...result('isolation.a', 'FAIL', 'high', 'tenant:acme'), observed: 'lacking: crm."<x>&\u0007\u001b[31m'};
    const report = await runPosture(ctx, [probe([hostile, result('isolation.b', 'ERROR'), result('isolation.c', 'SKIP'), result('isolation.d', 'PASS')])]);
    const parsed = (await parseJunit(toJunit(report))) as {tests?: number; failures?: number; errors?: number; skipped?: number};
    expect(parsed).toMatchObject({tests: 4, failures: 1, errors: 1, skipped: 1});
    expect(errorResult(def('isolation.z'), 'install', 'x').status).toBe('ERROR');
  });

  it('pg_hba drift: a missing reject line is FAIL, a reorder is FAIL even with a line missing, a file newer than the load is FAIL', () => {
    const rules = parseHba('local all admin scram-sha-256\nhostssl all admin all reject\nhostssl all prov samenet scram-sha-256\nhostssl sameuser all samenet scram-sha-256\n');
    const live = (rs: HbaRule[]): HbaRule[] => rs.map((r, i) => ({...r, line: i + 1}));
    expect(hbaFinding(live(rules), rules).status).toBe('PASS');
    const noReject = hbaFinding(live(rules.filter((r) => r.method !== 'reject')), rules);
    expect(noReject.status).toBe('FAIL');
    expect(noReject.observed).toContain('reject');
    expect(hbaFinding(live(rules.filter((r) => r.type !== 'local')), rules).status).toBe('WARN');
    expect(hbaFinding(live([rules[0]!, rules[3]!, rules[2]!]), rules).status).toBe('FAIL');
    const stale = hbaFinding(live(rules), rules, {modified: new Date('2026-11-28T12:00:00.300Z'), loaded: new Date('2026-11-28T12:00:00.200Z'), precise: true});
    expect(stale).toMatchObject({status: 'FAIL'});
    expect(stale.observed).toContain('after the server last loaded');
    expect(hbaFinding(live(rules), rules, {modified: new Date('2026-11-28T12:00:00.100Z'), loaded: new Date('2026-11-28T12:00:00.200Z'), precise: true}).status).toBe('PASS');
    // Whole-second file times (pg_stat_file, when the file is not on this host): a later second is
    // FAIL, the load's own second can't be ordered (WARN), an earlier second is PASS.
    const coarse = (modified: string) => hbaFinding(live(rules), rules, {modified: new Date(modified), loaded: new Date('2026-11-28T12:00:05.500Z'), precise: false}).status;
    expect([coarse('2026-11-28T12:00:06Z'), coarse('2026-11-28T12:00:05Z'), coarse('2026-11-28T12:00:04Z')]).toEqual(['FAIL', 'WARN', 'PASS']);
    // Secret option values never reach a result, even from an older interface that returned them.
    expect(hbaFinding(live(parseHba('host all all 10.0.0.0/8 ldap ldapserver=x ldapbindpasswd=hunter2\n')), rules).observed).not.toContain('hunter2');
  });

  it('docs/security.md lists exactly the checks posture has', async () => {
    const doc = await fs.readFile(path.join(repoRoot, 'docs/security.md'), 'utf8');
    const section = doc.slice(doc.indexOf('## Posture: what is measured'));
    // The first cell of each table row names the check(s).
    const firstCells = section.split('\n').filter((l) => l.startsWith('| `')).map((l) => l.split('|')[1]!);
    const listed = new Set(firstCells.flatMap((cell) => [...cell.matchAll(/`([^`]+)`/g)].map((m) => m[1]!)));
    const runtime = [...KNOWN_CHECKS].filter((id) => id.startsWith('runtime.'));
    expect([...KNOWN_CHECKS].filter((id) => !id.startsWith('runtime.') && !listed.has(id))).toEqual([]);
    expect([...listed].filter((id) => !KNOWN_CHECKS.has(id) && id !== 'runtime.*')).toEqual([]);
    expect(runtime.length).toBeGreaterThan(0);
  });
});
