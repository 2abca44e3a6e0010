#!/usr/bin/env node
// Backup and restore benchmarks on a real embedded install, each against its baseline in the same
// run, on a tenant database of about 1 GB (pgbench scale 70 by default):
//  1. `dforge backup --tenant` vs raw `pg_dump -Fc > file`, interleaved;
//  2. `dforge restore` (in place) vs raw `createdb` + `pg_restore`, interleaved;
//  3. peak RSS of the dforge process during backup and restore;
//  4. `backup --all` over 100 small tenants vs a sequential shell loop of pg_dump.
// Needs ~6 GB of disk. Usage: npm run build && node scripts/bench/backup.mjs [--scale 70] [--runs 3] [--backup-runs N]
import {spawn, spawnSync} from 'node:child_process';
import {chmodSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {fileURLToPath} from 'node:url';

import {freePort, machine, median, medianInterval, wall} from './common.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const cliPath = path.join(root, 'bin/run.js');
const arg = (name, fallback) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
};
const scale = arg('scale', 70);
const runs = arg('runs', 3);
// pg_dump alone varies by about ±10% from run to run on a shared 2-core VM: the backup pairs are
// cheap, so they get more runs than the restores, and every ratio comes with its 95% interval.
const backupRuns = arg('backup-runs', runs);

const scratch = mkdtempSync(path.join(os.tmpdir(), 'dforge-bench-backup-'));
chmodSync(scratch, 0o755);
const dir = path.join(scratch, 'install');
const port = await freePort();
/**
 * Runs dforge, returning wall ms and the peak RSS (KiB) of the dforge process itself, read from
 * its /proc VmHWM while it runs (GNU time would report the largest child: pg_dump or pg_restore).
 */
const dforge = async (...args) => {
  const start = process.hrtime.bigint();
  const child = spawn(process.execPath, [cliPath, ...args, '--dir', dir, '--quiet'], {stdio: ['ignore', 'pipe', 'pipe']});
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c) => (stdout += c));
  child.stderr.on('data', (c) => (stderr += c));
  let rssKiB = 0;
  const poll = setInterval(() => {
    try {
      const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'));
      if (m) rssKiB = Math.max(rssKiB, Number(m[1]));
    } catch {
      // exited between polls
    }
  }, 20);
  const code = await new Promise((resolve) => child.on('close', resolve));
  clearInterval(poll);
  const ms = Number(process.hrtime.bigint() - start) / 1e6;
  if (code !== 0) throw new Error(`dforge ${args.join(' ')}: ${stderr}`);
  return {ms, rssKiB, stdout};
};
try {
  await dforge('quickstart', '--port', String(port));
  const {openKeyServices} = await import(path.join(root, 'dist/keys/context.js'));
  const {openControlPlane} = await import(path.join(root, 'dist/control/plane.js'));
  const {InstallDir} = await import(path.join(root, 'dist/state/install-dir.js'));
  const {tenantPasswordContext} = await import(path.join(root, 'dist/control/keys-store.js'));
  const installDir = new InstallDir(dir);
  const keys = await openKeyServices(installDir);
  const version = JSON.parse((await dforge('db', 'status', '--json')).stdout)[0].version;
  const bin = (t) => `/usr/lib/postgresql/${version}/bin/${t}`;
  const plane = await openControlPlane(installDir);
  const row = await plane.control.query("SELECT sealed_password FROM tenant_credentials WHERE slug = 'acme'");
  const acmePassword = (await keys.keyring.unwrap(row.rows[0].sealed_password, tenantPasswordContext('acme'), 'bench')).toString();
  await plane.close();
  const tls = {PGHOST: '127.0.0.1', PGPORT: String(port), PGSSLMODE: 'verify-full', PGSSLROOTCERT: path.join(dir, 'pki/ca.crt')};
  const asAcme = {...process.env, ...tls, PGUSER: 'tenant_acme', PGPASSWORD: acmePassword, PGDATABASE: 'tenant_acme'};
  const superPassword = (await keys.sealed.get('postgres/local-1/superuser')).toString();
  const asAdmin = {...process.env, PGHOST: path.join(dir, 'run/postgres/local-1'), PGPORT: String(port), PGUSER: 'dforge_admin', PGPASSWORD: superPassword, PGDATABASE: 'postgres'};
  const run = (cmd, args, env, opts = {}) => {
    const r = spawnSync(cmd, args, {env, encoding: 'utf8', maxBuffer: 1 << 26, ...opts});
    if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
    return r;
  };

  process.stderr.write(`loading pgbench scale ${scale} into tenant_acme...\n`);
  run(bin('pgbench'), ['-i', '-s', String(scale), '-q', '--foreign-keys'], asAcme);
  const dbSize = run(bin('psql'), ['-XAtc', "SELECT pg_size_pretty(pg_database_size('tenant_acme'))"], asAcme).stdout.trim();

  // 1 + 3: backup vs pg_dump -Fc > file.
  const rawFile = path.join(scratch, 'raw.dump');
  const backup = [];
  const raw = [];
  let backupRss = 0;
  // Alternate which goes first (ABBA), so neither side always runs right after the other's
  // writes, or always first after a pause.
  for (let i = 0; i < backupRuns; i++) {
    const measureRaw = () => raw.push(wall(() => run('/bin/sh', ['-c', `"${bin('pg_dump')}" -Fc > "${rawFile}"`], asAcme)));
    if (i % 2 === 1) measureRaw();
    const b = await dforge('backup', '--tenant', 'acme');
    backup.push(b.ms);
    backupRss = Math.max(backupRss, b.rssKiB);
    if (i % 2 === 0) measureRaw();
    process.stderr.write(`backup run ${i + 1}: dforge ${(b.ms / 1000).toFixed(2)} s, pg_dump ${(raw.at(-1) / 1000).toFixed(2)} s\n`);
  }
  const rawSize = statSync(rawFile).size;
  const list = JSON.parse((await dforge('backup', 'list', '--tenant', 'acme', '--json')).stdout);
  const backupId = list.backups[0].id;

  // 2 + 3: restore (in place: scratch database, verified, swapped in) vs createdb + pg_restore.
  // The replaced database is dropped outside the timed part, as a later prune would.
  const restore = [];
  const rawRestore = [];
  let restoreRss = 0;
  for (let i = 0; i < runs; i++) {
    const r = await dforge('restore', '--tenant', 'acme', '--from', backupId, '--json');
    restore.push(r.ms);
    restoreRss = Math.max(restoreRss, r.rssKiB);
    run(bin('dropdb'), [JSON.parse(r.stdout).previousDatabase], asAdmin);
    rawRestore.push(wall(() => {
      run(bin('createdb'), [`raw_${i}`], asAdmin);
      run(bin('pg_restore'), ['-d', `raw_${i}`, rawFile], asAdmin);
    }));
    run(bin('dropdb'), [`raw_${i}`], asAdmin);
  }

  // 4: backup --all over 100 small tenants vs a sequential loop of pg_dump.
  await dforge('tenant', 'delete', 'acme', '--confirm', 'acme', '--shred');
  await dforge('tenant', 'delete', 'globex', '--confirm', 'globex', '--shred');
  const plane2 = await openControlPlane(installDir);
  const passwords = [];
  for (let i = 0; i < 100; i++) {
    const slug = `small-${String(i).padStart(3, '0')}`;
    await plane2.tenants.create(slug);
    passwords.push([slug, await plane2.tenants.password(slug)]);
  }
  await plane2.close();
  const loop = path.join(scratch, 'loop.sh');
  writeFileSync(loop, passwords.map(([slug, pw]) => `PGUSER=tenant_${slug.replaceAll('-', '_')} PGDATABASE=tenant_${slug.replaceAll('-', '_')} PGPASSWORD='${pw}' "${bin('pg_dump')}" -Fc > "${scratch}/${slug}.dump" || exit 1`).join('\n') + '\n', {mode: 0o600});
  const all = [];
  const seq = [];
  for (let i = 0; i < runs; i++) {
    all.push((await dforge('backup', '--all', '--concurrency', '2')).ms);
    seq.push(wall(() => run('/bin/sh', [loop], {...process.env, ...tls})));
  }

  const [b, r, rs, rr, a, s] = [median(backup), median(raw), median(restore), median(rawRestore), median(all), median(seq)];
  // Each pair ran back to back, so its ratio cancels the drift of a shared machine between pairs.
  const ratio = (xs, ys) => {
    const {median: m, low, high, label} = medianInterval(xs.map((x, i) => x / ys[i]));
    return `ratio ${m.toFixed(3)} (median of ${xs.length} pair ratios; ${label} ${low.toFixed(3)}-${high.toFixed(3)}; ratio of the medians ${(median(xs) / median(ys)).toFixed(3)})`;
  };
  console.log(`${machine()}, PostgreSQL ${version}; ${backupRuns} interleaved backup runs (ABBA), ${runs} restore runs`);
  console.log(`tenant database: pgbench scale ${scale}, ${dbSize}; pg_dump -Fc output ${(rawSize / 2 ** 20).toFixed(0)} MiB`);
  console.log(`backup:  dforge ${(b / 1000).toFixed(1)} s vs pg_dump -Fc > file ${(r / 1000).toFixed(1)} s   ${ratio(backup, raw)} (budget 1.10)`);
  console.log(`restore: dforge ${(rs / 1000).toFixed(1)} s vs createdb + pg_restore ${(rr / 1000).toFixed(1)} s   ${ratio(restore, rawRestore)} (budget 1.15)`);
  console.log(`peak RSS of dforge: backup ${(backupRss / 1024).toFixed(0)} MiB, restore ${(restoreRss / 1024).toFixed(0)} MiB (budget 150)`);
  console.log(`backup --all, 100 small tenants (+ control): ${(a / 1000).toFixed(1)} s vs sequential pg_dump loop ${(s / 1000).toFixed(1)} s   ratio ${(a / s).toFixed(2)}`);
} finally {
  spawnSync(process.execPath, [cliPath, 'db', 'stop', '--immediate', '--dir', dir, '--quiet']);
  rmSync(scratch, {recursive: true, force: true});
}
