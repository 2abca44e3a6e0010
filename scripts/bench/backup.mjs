#!/usr/bin/env node
// Backup and restore benchmarks on a real embedded install (made by `dforge quickstart`), each
// against its baseline in the same run, on two data sets:
//  - tenant acme: pgbench data (about 1 GB at scale 1). It compresses about 50:1, so pg_dump's
//    compression dominates and dforge's encryption sees 2% of the bytes;
//  - tenant globex: incompressible random bytes in a bytea table (300 MB at scale 1), so every
//    byte of the database passes through the encryption.
// Per data set:
//  1. `dforge backup --tenant` vs raw `pg_dump -Fc > file`, pairs in ABBA order, and MB/s;
//  2. `dforge restore` (in place) vs raw `createdb` + `pg_restore`, pairs in ABBA order;
//  3. peak RSS of the dforge process during each.
// Then `dforge backup --all --concurrency N` over small tenants plus dforge_control vs
// `xargs -P N pg_dump` over the same databases, pairs in ABBA order.
// Needs about 8 GB of disk at scale 1.
// Usage: npm run build && node scripts/bench/backup.mjs [--scale 1] [--pgbench-scale 70] [--random-mb 300]
//   [--backup-runs 15] [--runs 5] [--tenants 100] [--concurrency 2] [--json out.json]
import {chmodSync, mkdtempSync, rmSync, statSync, writeFileSync} from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {abba, benchOptions, checkedRun as run, dforgeAt, freePort, log, median, pairRatio, repoRoot as root, report, seconds, timedDforgeAt, wall} from './common.mjs';

const options = benchOptions();
const pgbenchScale = options.count('pgbench-scale', 70, 1);
const randomMiB = options.count('random-mb', 300, 8);
// pg_dump alone varies by about ±10% from run to run on a shared 2-core VM: backup pairs are
// cheap, so they get more runs than restores, and every ratio comes with its interval.
const backupRuns = options.count('backup-runs', 15, 3);
const restoreRuns = options.count('runs', 5, 2);
const smallTenants = options.count('tenants', 100, 4);
const allRuns = options.count('all-runs', 4, 2);
const concurrency = options.value('concurrency', 2);

const scratch = mkdtempSync(path.join(os.tmpdir(), 'dforge-bench-backup-'));
chmodSync(scratch, 0o755);
const dir = path.join(scratch, 'install');
const port = await freePort();
const dforge = timedDforgeAt(dir);
const fmt = (x) => x.toFixed(3);
const ratioCells = (xs, ys) => {
  const r = pairRatio(xs, ys);
  return [fmt(r.ratio), `${r.label} ${fmt(r.low)}-${fmt(r.high)}`, fmt(r.ratioOfMedians)];
};
const mbps = (bytes, ms) => (bytes / 1e6 / (ms / 1000)).toFixed(1);
const mib = (bytes) => `${(bytes / 2 ** 20).toFixed(bytes < 10 * 2 ** 20 ? 1 : 0)} MiB`;

try {
  await dforge('quickstart', '--port', String(port));
  // Passwords of the benchmark's own throwaway install, for the baselines: the CLI never prints them.
  const {openControlPlane} = await import(path.join(root, 'dist/control/plane.js'));
  const {InstallDir} = await import(path.join(root, 'dist/state/install-dir.js'));
  const installDir = new InstallDir(dir);
  const plane = await openControlPlane(installDir);
  const tenantPassword = (slug) => plane.tenants.password(slug);
  const superPassword = (await plane.keys.sealed.get('postgres/local-1/superuser')).toString();
  const provisionerPassword = (await plane.keys.sealed.get('postgres/local-1/provisioner')).toString();
  const version = JSON.parse((await dforge('db', 'status', '--json')).stdout).clusters[0].version;
  const bin = (t) => `/usr/lib/postgresql/${version}/bin/${t}`;
  const tls = {PGHOST: '127.0.0.1', PGPORT: String(port), PGSSLMODE: 'verify-full', PGSSLROOTCERT: path.join(dir, 'pki/ca.crt')};
  const asTenant = async (slug) => ({...process.env, ...tls, PGUSER: `tenant_${slug}`, PGPASSWORD: await tenantPassword(slug), PGDATABASE: `tenant_${slug}`});
  const asAdmin = {...process.env, PGHOST: path.join(dir, 'run/postgres/local-1'), PGPORT: String(port), PGUSER: 'dforge_admin', PGPASSWORD: superPassword, PGDATABASE: 'postgres'};

  const dataSets = [
    {slug: 'acme', label: `pgbench scale ${pgbenchScale}`, env: await asTenant('acme')},
    {slug: 'globex', label: `${randomMiB} MiB of random bytes (bytea)`, env: await asTenant('globex')},
  ];
  await plane.close();
  // Tenant tables live in the module schemas, where every table carries the change-log triggers.
  // The superuser loads the rows with session_replication_role = replica, so the load writes no
  // change-log (as a bulk import would), then hands the tables to the tenant's role: the data then
  // has the shape and owner of a tenant's own, with its triggers.
  const loader = (slug) => ({...asAdmin, PGDATABASE: `tenant_${slug}`, PGOPTIONS: '-c search_path=crm -c session_replication_role=replica'});
  const psqlAs = (env, sql) => run(bin('psql'), ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-c', sql], env);
  log(`loading pgbench scale ${pgbenchScale} into tenant_acme...`);
  run(bin('pgbench'), ['-i', '-s', String(pgbenchScale), '-q', '--foreign-keys'], loader('acme'));
  psqlAs(loader('acme'), ['accounts', 'branches', 'history', 'tellers'].map((t) => `ALTER TABLE crm.pgbench_${t} OWNER TO tenant_acme;`).join(' '));
  log(`loading ${randomMiB} MiB of random bytes into tenant_globex...`);
  // 1 MiB rows of md5 output: pseudo-random, so neither TOAST (storage external) nor pg_dump's
  // gzip shrinks them. One transaction per row keeps each one small.
  psqlAs(loader('globex'), 'CREATE TABLE crm.blobs (id integer PRIMARY KEY, data bytea NOT NULL); ALTER TABLE crm.blobs ALTER data SET STORAGE EXTERNAL;');
  run(bin('pgbench'), ['-n', '-t', String(randomMiB), '-f', '-'], loader('globex'), {
    input: "INSERT INTO crm.blobs SELECT coalesce(max(id), 0) + 1, (SELECT decode(string_agg(md5(random()::text || i::text), ''), 'hex') FROM generate_series(1, 65536) i) FROM crm.blobs;\n",
  });
  psqlAs(loader('globex'), 'ALTER TABLE crm.blobs OWNER TO tenant_globex;');

  const results = [];
  for (const ds of dataSets) {
    ds.dbBytes = Number(run(bin('psql'), ['-XAtc', `SELECT pg_database_size('tenant_${ds.slug}')`], ds.env).stdout.trim());
    const rawFile = path.join(scratch, `${ds.slug}.dump`);
    const backup = [];
    const raw = [];
    let backupRss = 0;
    for (let i = 0; i < backupRuns; i++) {
      const [b, r] = await abba(
        i,
        () => dforge('backup', '--tenant', ds.slug),
        () => wall(() => run('/bin/sh', ['-c', `"${bin('pg_dump')}" -Fc > "${rawFile}"`], ds.env)),
      );
      backup.push(b.ms);
      raw.push(r);
      backupRss = Math.max(backupRss, b.rssKiB);
      log(`${ds.slug} backup pair ${i + 1}: dforge ${seconds(b.ms)}, pg_dump ${seconds(r)}`);
    }
    const rawBytes = statSync(rawFile).size;
    const list = JSON.parse((await dforge('backup', 'list', '--tenant', ds.slug, '--json')).stdout);
    const latest = list.backups.filter((b) => b.tenant === ds.slug).sort((a, b) => b.createdAt.localeCompare(a.createdAt))[0];

    // Restore in place: scratch database, verified, swapped in. The replaced database is dropped
    // outside the timed part, as a later prune would.
    const restore = [];
    const rawRestore = [];
    let restoreRss = 0;
    for (let i = 0; i < restoreRuns; i++) {
      const [d, r] = await abba(
        i,
        async () => {
          const res = await dforge('restore', '--tenant', ds.slug, '--from', latest.id, '--confirm', ds.slug, '--json');
          const previous = JSON.parse(res.stdout).previousDatabase;
          if (previous) run(bin('dropdb'), [previous], asAdmin);
          return res;
        },
        () => {
          const ms = wall(() => {
            run(bin('createdb'), [`raw_${i}`], asAdmin);
            run(bin('pg_restore'), ['-d', `raw_${i}`, rawFile], asAdmin);
          });
          run(bin('dropdb'), [`raw_${i}`], asAdmin);
          return ms;
        },
      );
      restore.push(d.ms);
      rawRestore.push(r);
      restoreRss = Math.max(restoreRss, d.rssKiB);
      log(`${ds.slug} restore pair ${i + 1}: dforge ${seconds(d.ms)}, createdb + pg_restore ${seconds(r)}`);
    }
    results.push({ds, backup, raw, rawBytes, backupBytes: latest.size, backupRss, restore, rawRestore, restoreRss});
    rmSync(rawFile, {force: true});
  }

  // backup --all vs xargs -P N pg_dump, over the same databases.
  await dforge('tenant', 'delete', 'acme', '--confirm', 'acme', '--shred');
  await dforge('tenant', 'delete', 'globex', '--confirm', 'globex', '--shred');
  const plane2 = await openControlPlane(installDir);
  const pgpass = [];
  const jobs = [];
  const escape = (s) => s.replaceAll('\\', '\\\\').replaceAll(':', '\\:');
  for (let i = 0; i < smallTenants; i++) {
    const slug = `small-${String(i).padStart(3, '0')}`;
    const {tenant} = await plane2.tenants.create(slug);
    const {role, database} = tenant;
    pgpass.push(`127.0.0.1:${port}:${database}:${role}:${escape(await plane2.tenants.password(slug))}`);
    jobs.push(`${role} ${database} ${scratch}/all/${slug}.dump`);
  }
  await plane2.close();
  // dforge --all also dumps dforge_control; so does the baseline, as the same role.
  pgpass.push(`127.0.0.1:${port}:dforge_control:dforge_provisioner:${escape(provisionerPassword)}`);
  jobs.push(`dforge_provisioner dforge_control ${scratch}/all/control.dump`);
  writeFileSync(path.join(scratch, 'pgpass'), `${pgpass.join('\n')}\n`, {mode: 0o600});
  writeFileSync(path.join(scratch, 'jobs'), `${jobs.join('\n')}\n`);
  const xargsEnv = {...process.env, ...tls, PGPASSFILE: path.join(scratch, 'pgpass'), PGDUMP: bin('pg_dump')};
  const xargsArgs = ['-c', `mkdir -p "${scratch}/all" && xargs -P ${concurrency} -n 3 sh -c '"$PGDUMP" -Fc -U "$0" -d "$1" -f "$2"' < "${scratch}/jobs"`];
  const all = [];
  const par = [];
  let allCount = 0;
  for (let i = 0; i < allRuns; i++) {
    const [a, x] = await abba(
      i,
      () => dforge('backup', '--all', '--concurrency', String(concurrency), '--json'),
      () => wall(() => run('/bin/sh', xargsArgs, xargsEnv)),
    );
    all.push(a.ms);
    par.push(x);
    const out = JSON.parse(a.stdout);
    allCount = out.tenants.length + out.control.length;
    rmSync(path.join(scratch, 'all'), {recursive: true, force: true});
    log(`backup --all pair ${i + 1}: dforge ${seconds(a.ms)}, xargs -P ${concurrency} pg_dump ${seconds(x)}`);
  }

  const tables = [];
  for (const r of results) {
    const [b, rb] = [median(r.backup), median(r.raw)];
    tables.push({
      title: `${r.ds.label}: tenant database ${mib(r.ds.dbBytes)}, \`pg_dump -Fc\` writes ${mib(r.rawBytes)}, the dforge backup ${mib(r.backupBytes)}`,
      columns: ['case', 'dforge median', 'baseline median', 'ratio (median of pairs)', 'interval', 'ratio of the medians'],
      rows: [
        [`\`backup --tenant ${r.ds.slug}\` vs \`pg_dump -Fc > file\` (${r.backup.length} pairs)`, seconds(b), seconds(rb), ...ratioCells(r.backup, r.raw)],
        ['throughput, MB of dump output per second', mbps(r.backupBytes, b), mbps(r.rawBytes, rb), '', '', ''],
        ['throughput, MB of database per second', mbps(r.ds.dbBytes, b), mbps(r.ds.dbBytes, rb), '', '', ''],
        [`\`restore --tenant ${r.ds.slug} --from <id>\` (verify, scratch, counts, swap) vs \`createdb\` + \`pg_restore\` (${r.restore.length} pairs)`, seconds(median(r.restore)), seconds(median(r.rawRestore)), ...ratioCells(r.restore, r.rawRestore)],
        ['peak RSS of the dforge process (VmHWM), backup / restore', `${(r.backupRss / 1024).toFixed(0)} / ${(r.restoreRss / 1024).toFixed(0)} MiB`, '', '', '', ''],
      ],
    });
  }
  tables.push({
    title: `\`backup --all\`: ${smallTenants} small tenants plus dforge_control (${allCount} backups a run)`,
    columns: ['case', 'dforge median', 'baseline median', 'ratio (median of pairs)', 'interval', 'ratio of the medians'],
    rows: [[`\`backup --all --concurrency ${concurrency}\` vs \`xargs -P ${concurrency} pg_dump -Fc\` (${allRuns} pairs)`, seconds(median(all)), seconds(median(par)), ...ratioCells(all, par)]],
  });
  report(options, {
    name: 'backup',
    title: 'Backup and restore',
    script: 'scripts/bench/backup.mjs',
    command: `npm run bench:backup -- --pgbench-scale ${pgbenchScale} --random-mb ${randomMiB} --backup-runs ${backupRuns} --runs ${restoreRuns} --tenants ${smallTenants} --all-runs ${allRuns} --concurrency ${concurrency}`,
    software: `PostgreSQL ${version}`,
    workload: `a quickstart install; tenant acme loaded with \`pgbench -i -s ${pgbenchScale} --foreign-keys\`, tenant globex with ${randomMiB} rows of 1 MiB of random bytes. Each pair runs its two sides back to back, the baseline first on every other pair (ABBA), so drift between pairs cancels in the pair's ratio. Baselines connect like dforge: the tenant's role over TLS (verify-full); the restore baseline runs as the superuser on the socket.`,
    tables,
    notes: [
      'A ratio is the median of the per-pair ratios, with a distribution-free 95% interval for that median (with fewer than 6 pairs, the range).',
      `MB/s of dump output: the bytes each side wrote (the dforge backup file includes its header and per-chunk tags); that is what the encryption processes. ${results.map((r) => `${r.ds.label}: the dump is ${((100 * r.rawBytes) / r.ds.dbBytes).toFixed(1)}% of the database's size`).join('; ')}.`,
    ],
  });
} finally {
  dforgeAt(dir).stop();
  rmSync(scratch, {recursive: true, force: true});
}
