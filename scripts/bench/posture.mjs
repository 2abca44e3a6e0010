#!/usr/bin/env node
// `dforge posture` over many tenants on one cluster, run as a whole process, as cron or CI runs it.
// Against its baselines in the same run:
//  - `node -e 0`: the process floor;
//  - the cheapest live per-tenant evidence there is: one verified TLS 1.3 + SCRAM login as each
//    tenant's role, in one node process, one after the other (posture does that and more, per tenant).
// Also the default concurrency against --concurrency 1, and the cost per tenant from the slope
// between the quickstart's 2 tenants and the full count.
// Usage: npm run build && node scripts/bench/posture.mjs [--scale 1] [--tenants 100] [--runs 5] [--json out.json]
import {spawnSync} from 'node:child_process';
import {chmodSync, mkdtempSync, rmSync} from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {benchOptions, dforgeAt, freePort, median, repoRoot as root, report, wall} from './common.mjs';

const options = benchOptions();
const tenants = options.count('tenants', 100, 10);
const runs = options.count('runs', 5, 3);

const scratch = mkdtempSync(path.join(os.tmpdir(), 'dforge-bench-posture-'));
chmodSync(scratch, 0o755);
const dir = path.join(scratch, 'install');
const port = await freePort();
const cli = dforgeAt(dir);
const timePosture = (...extra) => {
  const times = [];
  let last;
  for (let i = 0; i < runs; i++) times.push(wall(() => (last = JSON.parse(cli('posture', '--json', ...extra)))));
  return {ms: median(times), report: last};
};

try {
  cli('quickstart', '--port', String(port));
  cli('backup', '--all');
  const small = timePosture();

  const {openControlPlane} = await import(path.join(root, 'dist/control/plane.js'));
  const {InstallDir} = await import(path.join(root, 'dist/state/install-dir.js'));
  const plane = await openControlPlane(new InstallDir(dir));
  const existing = (await plane.tenants.list()).length;
  for (let i = existing; i < tenants; i++) await plane.tenants.create(`bench-${String(i).padStart(4, '0')}`);
  cli('backup', '--all');

  // Baseline: one verified TLS 1.3 login per tenant as its own role, in one process.
  const {connectAsTenant} = await import(path.join(root, 'dist/posture/context.js'));
  const all = await plane.tenants.list();
  const ctx = {dir: new InstallDir(dir), config: plane.config, plane, tenants: all};
  const logins = [];
  for (let r = 0; r < runs; r++) {
    const t = process.hrtime.bigint();
    for (const tenant of all) await (await connectAsTenant(ctx, tenant)).end();
    logins.push(Number(process.hrtime.bigint() - t) / 1e6);
  }
  await plane.close();
  const nodeFloor = median(Array.from({length: runs * 2}, () => wall(() => spawnSync(process.execPath, ['-e', '0']))));

  const big = timePosture();
  const serial = timePosture('--concurrency', '1');
  const login = median(logins);
  const perTenant = (big.ms - small.ms) / (all.length - 2);
  const ms = (x) => `${x.toFixed(0)} ms`;
  const counts = big.report.counts;
  report(options, {
    name: 'posture',
    title: 'Posture',
    script: 'scripts/bench/posture.mjs',
    command: `npm run bench:posture -- --tenants ${tenants} --runs ${runs}`,
    software: `PostgreSQL ${JSON.parse(cli('db', 'status', '--json')).clusters[0].version}`,
    workload: `a quickstart install with ${all.length} tenants on its one cluster, each with a backup; ${runs} runs of \`dforge posture --json\` each; ${big.report.checks.length} checks per run (${counts.PASS} PASS, ${counts.WARN} WARN, ${counts.FAIL} FAIL, ${counts.ERROR} ERROR, ${counts.SKIP} SKIP, ${counts.MANUAL} MANUAL).`,
    tables: [
      {
        columns: ['case', 'median', 'baseline median', 'ratio'],
        rows: [
          [`\`dforge posture\`, ${all.length} tenants, default concurrency (8), whole process vs one TLS+SCRAM login per tenant in one process`, ms(big.ms), ms(login), (big.ms / login).toFixed(2)],
          [`the same with --concurrency 1 vs the default`, ms(serial.ms), ms(big.ms), (serial.ms / big.ms).toFixed(2)],
          ['`dforge posture`, 2 tenants vs `node -e 0`', ms(small.ms), ms(nodeFloor), (small.ms / nodeFloor).toFixed(2)],
          [`cost per added tenant (slope from 2 to ${all.length} tenants) vs one login`, ms(perTenant), ms(login / all.length), (perTenant / (login / all.length)).toFixed(2)],
        ],
      },
    ],
    notes: [
      'Per tenant, posture logs in as the tenant, attempts one cross-tenant login (which must be refused), measures trigger coverage and the tenant role\'s privileges inside its database, and authenticates its newest backup\'s header; catalog checks run once per cluster for all tenants.',
    ],
  });
} finally {
  cli.stop();
  rmSync(scratch, {recursive: true, force: true});
}
