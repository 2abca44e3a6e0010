#!/usr/bin/env node
// Tenant benchmarks on a real embedded install (made by `dforge quickstart`), each against its
// baseline in the same run:
//  1. `dforge tenant create` wall time vs one psql process doing CREATE ROLE + CREATE DATABASE +
//     REVOKE CONNECT (the bare minimum a tenant needs), interleaved;
//  2. per-tenant create time of the first 50 against the last 50 of 500 (should be flat);
//  3. `dforge tenant list` with 1,000 tenants vs psql reading the same registry.
// Needs ~8 GB of disk (1,000 databases) at scale 1.
// Usage: npm run build && node scripts/bench/tenants.mjs [--scale 1] [--runs 15] [--scale-tenants 500] [--list-tenants 1000] [--json out.json]
import {spawnSync} from 'node:child_process';
import {chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync} from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {benchOptions, dforgeAt, freePort, median, repoRoot as root, report, wall} from './common.mjs';

const options = benchOptions();
const runs = options.count('runs', 15, 3);
// The creep check compares the first and last tenth of this many creates.
const scaleTenants = options.count('scale-tenants', 500, 20);
const listTenants = Math.max(scaleTenants + runs + 2, options.count('list-tenants', 1000, 30));
const tenth = Math.max(2, Math.round(scaleTenants / 10));

const scratch = mkdtempSync(path.join(os.tmpdir(), 'dforge-bench-tenants-'));
chmodSync(scratch, 0o755);
const dir = path.join(scratch, 'install');
const port = await freePort();
const cli = dforgeAt(dir);

try {
  cli('quickstart', '--port', String(port));
  const {openControlPlane} = await import(path.join(root, 'dist/control/plane.js'));
  const {InstallDir} = await import(path.join(root, 'dist/state/install-dir.js'));
  const installDir = new InstallDir(dir);
  const keys = await (await import(path.join(root, 'dist/keys/context.js'))).openKeyServices(installDir);
  const superPassword = (await keys.sealed.get('postgres/local-1/superuser')).toString();
  const psqlBin = '/usr/lib/postgresql/' + JSON.parse(cli('db', 'status', '--json')).clusters[0].version + '/bin/psql';
  // The baseline connects like dforge's admin path would at its cheapest: the superuser on the unix socket.
  const psqlEnv = {...process.env, PGHOST: path.join(dir, 'run/postgres/local-1'), PGPORT: String(port), PGUSER: 'dforge_admin', PGPASSWORD: superPassword, PGDATABASE: 'postgres'};
  const psql = (sql) => {
    const file = path.join(scratch, 'baseline.sql');
    writeFileSync(file, sql);
    const r = spawnSync(psqlBin, ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-f', file], {env: psqlEnv, encoding: 'utf8'});
    if (r.status !== 0) throw new Error(`psql: ${r.stderr}`);
    return r.stdout;
  };

  // 1. create latency, interleaved.
  const dforgeCreate = [];
  const rawCreate = [];
  for (let i = 0; i < runs; i++) {
    dforgeCreate.push(wall(() => cli('tenant', 'create', `bench-${i}`)));
    rawCreate.push(wall(() => psql(`CREATE ROLE raw_${i} LOGIN PASSWORD 'x-${i}';\nCREATE DATABASE raw_${i} OWNER raw_${i};\nREVOKE CONNECT ON DATABASE raw_${i} FROM PUBLIC;\n`)));
  }

  // 2. Tenants through the service in one process: the first tenth vs the last.
  const plane = await openControlPlane(installDir);
  const perTenant = [];
  for (let i = 0; i < scaleTenants; i++) {
    const t = process.hrtime.bigint();
    await plane.tenants.create(`scale-${String(i).padStart(4, '0')}`);
    perTenant.push(Number(process.hrtime.bigint() - t) / 1e6);
  }
  // 3. Up to listTenants tenants, then list.
  const existing = (await plane.tenants.list()).length;
  for (let i = existing; i < listTenants; i++) await plane.tenants.create(`fill-${String(i).padStart(4, '0')}`);
  await plane.close();
  const listCli = [];
  const listJson = [];
  const listRaw = [];
  for (let i = 0; i < runs; i++) {
    listCli.push(wall(() => cli('tenant', 'list')));
    listJson.push(wall(() => cli('tenant', 'list', '--json')));
    listRaw.push(wall(() => psql(`\\c dforge_control\nSELECT slug, status, region, cluster, database_name, created_at FROM dforge.tenants ORDER BY slug;\n`)));
  }
  const count = JSON.parse(cli('tenant', 'list', '--json')).tenants.length;

  const first = median(perTenant.slice(0, tenth));
  const last = median(perTenant.slice(-tenth));
  const c = median(dforgeCreate);
  const r = median(rawCreate);
  const [lc, lj, lr] = [median(listCli), median(listJson), median(listRaw)];
  const ms = (x) => `${x.toFixed(0)} ms`;
  report(options, {
    name: 'tenants',
    title: 'Tenants',
    script: 'scripts/bench/tenants.mjs',
    command: `npm run bench:tenants -- --runs ${runs} --scale-tenants ${scaleTenants} --list-tenants ${listTenants}`,
    software: `PostgreSQL ${psqlBin.split('/')[4]}`,
    workload: `a quickstart install; ${runs} interleaved runs for the latency figures; ${scaleTenants} creates through the service in one process for the creep check; \`tenant list\` with ${count} tenants.`,
    tables: [
      {
        columns: ['case', 'median', 'baseline median', 'ratio'],
        rows: [
          ['`dforge tenant create` (CLI: registry, roles, database, REVOKE, schemas, audit trail, data key, ops log) vs one psql process (superuser, socket) running CREATE ROLE + CREATE DATABASE + REVOKE CONNECT', ms(c), ms(r), (c / r).toFixed(2)],
          ['the same, dforge minus baseline', ms(c - r), '', ''],
          [`per tenant, service in one process: last ${tenth} of ${scaleTenants} vs first ${tenth}`, ms(last), ms(first), (last / first).toFixed(2)],
          [`\`dforge tenant list\` with ${count} tenants (table) vs psql reading the same registry`, ms(lc), ms(lr), (lc / lr).toFixed(2)],
          [`\`dforge tenant list --json\` with ${count} tenants`, ms(lj), ms(lr), (lj / lr).toFixed(2)],
        ],
      },
    ],
    notes: ['CREATE DATABASE\'s cost follows the disk and the checkpointer, so the create ratio moves a lot between runs; the difference, dforge minus the baseline in the same run, is the steadier figure.'],
  });
} finally {
  cli.stop();
  rmSync(scratch, {recursive: true, force: true});
}
