#!/usr/bin/env node
// Tenant move benchmark on a real embedded install with two clusters in one region (a quickstart,
// then a second embedded cluster added to dforge.yaml and started with `dforge db init`):
// `dforge tenant move acme --to-cluster <other>` (plan, freeze, copy, verify, cutover, unfreeze)
// against its baseline in the same run, raw `pg_dump -Fc | pg_restore` between the same two
// clusters into a fresh database (`createdb` included), in pairs, alternated (ABBA).
// The tenant holds pgbench data, about 1 GB at scale 1 (pgbench scale 70).
// Untimed: one baseline copy first (the second cluster's warm-up), the move's kept source purged
// (--purge-source), the baseline's copy dropped, and a checkpoint on both clusters before each case.
// Usage: npm run build && node scripts/bench/tenant-move.mjs [--scale 1] [--pgbench-scale 70] [--runs 9] [--json out.json]
import {chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync} from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import YAML from 'yaml';

import {abba, benchOptions, checkedRun as run, dforgeAt, freePort, log, median, pairRatio, repoRoot as root, report, seconds, timedDforgeAt, wall} from './common.mjs';

const options = benchOptions();
const pgbenchScale = options.count('pgbench-scale', 70, 1);
const runs = options.count('runs', 9, 2);

const scratch = mkdtempSync(path.join(os.tmpdir(), 'dforge-bench-move-'));
chmodSync(scratch, 0o755);
const dir = path.join(scratch, 'install');
const ports = {'local-1': await freePort(), 'local-2': await freePort()};

const dforge = timedDforgeAt(dir);
const fmt = (x) => x.toFixed(3);

try {
  await dforge('quickstart', '--port', String(ports['local-1']));
  const configFile = path.join(dir, 'dforge.yaml');
  const config = YAML.parse(readFileSync(configFile, 'utf8'));
  const region = Object.keys(config.regions)[0];
  config.regions[region].clusters.push({name: 'local-2', kind: 'embedded', port: ports['local-2']});
  writeFileSync(configFile, YAML.stringify(config), {mode: 0o600});
  await dforge('db', 'init');

  // Passwords of the benchmark's own throwaway install, for the baseline: the CLI never prints them.
  const {openControlPlane} = await import(path.join(root, 'dist/control/plane.js'));
  const {InstallDir} = await import(path.join(root, 'dist/state/install-dir.js'));
  const plane = await openControlPlane(new InstallDir(dir));
  const superuser = {};
  for (const c of Object.keys(ports)) superuser[c] = (await plane.keys.sealed.get(`postgres/${c}/superuser`)).toString();
  const tenantPassword = await plane.tenants.password('acme');
  let live = (await plane.tenants.get('acme')).cluster;
  await plane.close();
  const other = (c) => (c === 'local-1' ? 'local-2' : 'local-1');

  const version = JSON.parse((await dforge('db', 'status', '--json')).stdout).clusters[0].version;
  const bin = (t) => `/usr/lib/postgresql/${version}/bin/${t}`;
  const asAdmin = (cluster, database = 'postgres') => ({...process.env, PGHOST: path.join(dir, `run/postgres/${cluster}`), PGPORT: String(ports[cluster]), PGUSER: 'dforge_admin', PGPASSWORD: superuser[cluster], PGDATABASE: database});
  // The baseline's dump connects like dforge's: the tenant's role over TLS (verify-full).
  const asTenant = (cluster) => ({...process.env, PGHOST: '127.0.0.1', PGPORT: String(ports[cluster]), PGSSLMODE: 'verify-full', PGSSLROOTCERT: path.join(dir, 'pki/ca.crt'), PGUSER: 'tenant_acme', PGPASSWORD: tenantPassword, PGDATABASE: 'tenant_acme'});

  // As in the backup benchmark: the superuser loads pgbench data into the tenant's module schema
  // without writing a change log, then hands the tables to the tenant's role.
  log(`loading pgbench scale ${pgbenchScale} into tenant_acme on ${live}...`);
  const loader = {...asAdmin(live, 'tenant_acme'), PGOPTIONS: '-c search_path=crm -c session_replication_role=replica'};
  run(bin('pgbench'), ['-i', '-s', String(pgbenchScale), '-q', '--foreign-keys'], loader);
  run(bin('psql'), ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-c', ['accounts', 'branches', 'history', 'tellers'].map((t) => `ALTER TABLE crm.pgbench_${t} OWNER TO tenant_acme;`).join(' ')], loader);
  const dbBytes = Number(run(bin('psql'), ['-XAtc', "SELECT pg_database_size('tenant_acme')"], asAdmin(live)).stdout.trim());

  // Untimed before every case: each starts with nothing left to flush from the one before (a move
  // or copy writes 1 GB and its WAL), whichever ran first.
  const settle = () => {
    for (const c of Object.keys(ports)) run(bin('psql'), ['-XAtqc', 'CHECKPOINT'], asAdmin(c));
  };
  // The baseline, from where the tenant lives to the other cluster.
  const rawCopy = () => {
    const from = live;
    const to = other(from);
    run(bin('psql'), ['-XAtc', 'DROP DATABASE IF EXISTS raw_copy'], asAdmin(to));
    settle();
    const ms = wall(() => {
      run(bin('createdb'), ['raw_copy'], asAdmin(to));
      run('/bin/sh', ['-c', `"${bin('pg_dump')}" -Fc | PGHOST="$T_HOST" PGPORT="$T_PORT" PGUSER=dforge_admin PGPASSWORD="$T_PASSWORD" PGDATABASE=raw_copy PGSSLMODE=disable "${bin('pg_restore')}" -d raw_copy --no-owner --no-privileges --exit-on-error`], {
        ...asTenant(from),
        T_HOST: path.join(dir, `run/postgres/${to}`),
        T_PORT: String(ports[to]),
        T_PASSWORD: superuser[to],
      });
    });
    run(bin('psql'), ['-XAtc', 'DROP DATABASE IF EXISTS raw_copy'], asAdmin(to));
    return ms;
  };
  // Untimed warm-up: the second cluster is new, and its first 1 GB load would also create the WAL
  // segments that every later load recycles.
  rawCopy();
  const move = [];
  const raw = [];
  // Both sides copy from where the tenant lives at that moment to the other cluster.
  for (let i = 0; i < runs; i++) {
    const [m, r] = await abba(
      i,
      async () => {
        const from = live;
        settle();
        const {ms} = await dforge('tenant', 'move', 'acme', '--to-cluster', other(from));
        live = other(from);
        await dforge('tenant', 'move', 'acme', '--purge-source', '--confirm', 'acme');
        return ms;
      },
      async () => rawCopy(),
    );
    move.push(m);
    raw.push(r);
    log(`pair ${i + 1}: tenant move ${seconds(m)}, pg_dump | pg_restore ${seconds(r)}`);
  }
  const r = pairRatio(move, raw);
  report(options, {
    name: 'tenant-move',
    title: 'Tenant move between clusters',
    script: 'scripts/bench/tenant-move.mjs',
    command: `npm run bench:tenant-move -- --pgbench-scale ${pgbenchScale} --runs ${runs}`,
    software: `PostgreSQL ${version}`,
    workload: `a quickstart install plus a second embedded cluster in its region; tenant acme loaded with \`pgbench -i -s ${pgbenchScale} --foreign-keys\` (${(dbBytes / 2 ** 20).toFixed(0)} MiB database). Each pair moves the tenant to the other cluster and copies it raw between the same two clusters, the baseline first on every other pair (ABBA). The baseline dumps as the tenant's role over TLS (verify-full), like dforge, and restores as the superuser on the target's socket.`,
    tables: [
      {
        columns: ['case', 'dforge median', 'baseline median', 'ratio (median of pairs)', 'interval', 'ratio of the medians'],
        rows: [[`\`tenant move --to-cluster\` vs \`createdb\` + \`pg_dump -Fc \\| pg_restore\` (${runs} pairs)`, seconds(median(move)), seconds(median(raw)), fmt(r.ratio), `${r.label} ${fmt(r.low)}-${fmt(r.high)}`, fmt(r.ratioOfMedians)]],
      },
    ],
    notes: [
      'A ratio is the median of the per-pair ratios, with a distribution-free 95% interval for that median (with fewer than 6 pairs, the range). Target: at most 1.20.',
      "dforge's move adds to the copy: the freeze, the tenant template clone and shaping on the target, restoring over TLS (the baseline restores on the socket), and the verification: a count and a hash sum of every table on both clusters, the frozen source read (without parallel workers) while the copy runs and the target after it. Measured alone on this data set, one side's sum takes about 1.7 s serially, its count alone 0.8 s.",
    ],
  });
} finally {
  dforgeAt(dir).stop();
  rmSync(scratch, {recursive: true, force: true});
}
