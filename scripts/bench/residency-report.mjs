#!/usr/bin/env node
// Benchmark: `dforge residency report` over 1,000 tenants with 3 catalogued backups each, on a real
// cluster (made by `dforge quickstart`), in both formats (Markdown and JSON), against a fresh Node
// process that reads the same rows the report is built from (tenants, the backup catalog, the
// ops-log residency entries) over one TLS + SCRAM provisioner connection and prints them as JSON:
// the floor of "connect and read the records", without dforge. `node -e 0` is the process floor.
// The tenants are registry rows without databases and the backups catalog rows without files: the
// report (without --verify) reads only these rows, and creating 1,000 databases and 3,000 dumps
// would take many minutes and measure nothing more. Runs alternate (ABBA) with the floor.
// Usage: npm run build && node scripts/bench/residency-report.mjs [--scale 1] [--runs 7] [--tenants 1000] [--json out.json]
import {spawnSync} from 'node:child_process';
import {chmodSync, mkdtempSync, rmSync} from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {benchOptions, dforgeAt, freePort, median, pairRatio, repoRoot as root, report, wall} from './common.mjs';

const options = benchOptions();
const runs = options.count('runs', 7, 3);
const TENANTS = options.count('tenants', 1000, 20);
const BACKUPS_PER_TENANT = 3;

const {InstallDir} = await import(path.join(root, 'dist/state/install-dir.js'));
const {openControlPlane, primaryCluster} = await import(path.join(root, 'dist/control/plane.js'));

const scratch = mkdtempSync(path.join(os.tmpdir(), 'dforge-bench-residency-'));
chmodSync(scratch, 0o755);
const dir = path.join(scratch, 'install');
const cli = dforgeAt(dir);

const floorScript = `
import {readFileSync} from 'node:fs';
const pg = (await import(process.env.BENCH_PG)).default;
const c = new pg.Client({host: '127.0.0.1', port: Number(process.env.BENCH_PORT), user: 'dforge_provisioner', password: process.env.BENCH_PASSWORD, database: 'dforge_control',
  ssl: {ca: readFileSync(process.env.BENCH_CA, 'utf8'), servername: 'localhost', minVersion: 'TLSv1.3', rejectUnauthorized: true}});
await c.connect();
const tenants = (await c.query('SELECT * FROM tenants ORDER BY slug')).rows;
const backups = (await c.query('SELECT * FROM backups ORDER BY created_at DESC, id DESC')).rows;
const events = (await c.query("SELECT seq, at, actor, action, target, outcome, details FROM ops_log WHERE action = 'residency.cross-region' OR action = 'tenant.move' OR action LIKE 'tenant.move.%' ORDER BY seq")).rows;
await c.end();
process.stdout.write(JSON.stringify({tenants, backups, events}));
`;

let port;
try {
  port = await freePort();
  cli('quickstart', '--port', String(port));
  const plane = await openControlPlane(new InstallDir(dir));
  const region = plane.config.primaryRegion;
  const cluster = primaryCluster(plane.config).name;
  const destination = plane.config.regions[region].backup.destinations[0].name;
  const c = plane.control;
  await c.query('BEGIN');
  for (let i = 0; i < TENANTS; i++) {
    const slug = `bench-${String(i).padStart(4, '0')}`;
    const role = `tenant_${slug.replaceAll('-', '_')}`;
    await c.query(`INSERT INTO tenants (slug, region, cluster, role_name, database_name, status, connection_limit) VALUES ($1, $2, $3, $4, $4, 'active', 20)`, [slug, region, cluster, role]);
    for (let b = 0; b < BACKUPS_PER_TENANT; b++) {
      const id = `2026110${b}T000000Z-${slug}-${String(b).padStart(6, '0')}`;
      await c.query(
        `INSERT INTO backups (id, kind, tenant, region, cluster, destination, location, size, sha256, pg_version, key_id, key_version, created_at)
         VALUES ($1, 'tenant', $2, $3, $4, $5, $6, 1048576, repeat('0', 64), '15', 'dek:' || $2, 1, now() - make_interval(days => $7))`,
        [id, slug, region, cluster, destination, `${slug}/${id}.dfb`, BACKUPS_PER_TENANT - b],
      );
    }
  }
  await c.query('COMMIT');
  const counted = (await c.query('SELECT (SELECT count(*) FROM tenants)::int AS tenants, (SELECT count(*) FROM backups)::int AS backups')).rows[0];
  const provisionerPassword = (await plane.keys.sealed.get(`postgres/${cluster}/provisioner`)).toString();
  await plane.close();
  const floorEnv = {...process.env, BENCH_PG: path.join(root, 'node_modules/pg/lib/index.js'), BENCH_PORT: String(port), BENCH_PASSWORD: provisionerPassword, BENCH_CA: path.join(dir, 'pki/ca.crt')};

  const floor = () =>
    wall(() => {
      const r = spawnSync(process.execPath, ['--input-type=module', '-e', floorScript], {env: floorEnv, encoding: 'utf8', maxBuffer: 256 * 1024 * 1024});
      if (r.status !== 0) throw new Error(`floor: ${r.stderr}`);
      if (JSON.parse(r.stdout).tenants.length !== counted.tenants) throw new Error('floor read another number of tenants');
    });
  let size = {};
  const reportRun = (format) => () => {
    let out;
    const ms = wall(() => (out = cli('residency', 'report', '--format', format)));
    size[format] = out.length;
    if (format === 'json' && JSON.parse(out).tenants.length !== counted.tenants) throw new Error('the report lists another number of tenants');
    return ms;
  };
  const nodeFloor = () => wall(() => spawnSync(process.execPath, ['-e', '0']));

  reportRun('md')();
  floor();
  const t = {md: [], json: [], floor: [], node: []};
  for (let i = 0; i < runs; i++) {
    // ABBA: dforge first on even runs, the floor first on odd ones.
    if (i % 2 === 1) t.floor.push(floor());
    t.md.push(reportRun('md')());
    t.json.push(reportRun('json')());
    if (i % 2 === 0) t.floor.push(floor());
    t.node.push(nodeFloor());
    process.stderr.write(`run ${i + 1}: md ${t.md.at(-1).toFixed(0)} ms, json ${t.json.at(-1).toFixed(0)} ms, floor ${t.floor.at(-1).toFixed(0)} ms\n`);
  }
  const version = JSON.parse(cli('db', 'status', '--json')).clusters[0].version;
  const fmt = (x) => x.toFixed(3);
  const row = (label, xs) => {
    const r = pairRatio(xs, t.floor);
    return [label, median(xs).toFixed(0), median(t.floor).toFixed(0), fmt(r.ratio), `${r.label} ${fmt(r.low)}-${fmt(r.high)}`, fmt(r.ratioOfMedians)];
  };
  report(options, {
    name: 'residency-report',
    title: 'Residency report',
    script: 'scripts/bench/residency-report.mjs',
    command: `npm run bench:residency-report -- --runs ${runs} --tenants ${TENANTS}`,
    software: `PostgreSQL ${version}`,
    workload: `\`dforge residency report\` (no --verify) over ${counted.tenants} tenants and ${counted.backups} catalogued backups on a quickstart install, ${runs} runs per case in ABBA order with the floor. The tenants are registry rows without databases and the backups catalog rows without files: the report reads only these rows.`,
    tables: [
      {
        columns: ['case', 'dforge median ms', 'floor median ms', 'ratio (median of pairs)', 'interval', 'ratio of the medians'],
        rows: [
          row(`\`residency report\` (Markdown, ${Math.round(size.md / 1024)} KiB) vs a fresh Node process reading the same rows over TLS`, t.md),
          row(`\`residency report --format json\` (${Math.round(size.json / 1024)} KiB) vs the same floor`, t.json),
          ['process floor: `node -e 0`', median(t.node).toFixed(0), '', '', '', ''],
        ],
      },
    ],
    notes: ['The dforge figure includes process start and module loading, opening the key services and the control plane, placing every backup against its region, rendering, and the ops-log record of the run; the floor only connects, selects and prints.'],
  });
} finally {
  if (port) cli.stop();
  rmSync(scratch, {recursive: true, force: true});
}
