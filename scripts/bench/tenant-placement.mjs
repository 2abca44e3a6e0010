#!/usr/bin/env node
// Placement benchmark on a real embedded install with three clusters in one region: `dforge
// quickstart`, then dforge.yaml edited to add two more embedded clusters (every cluster given a
// maxTenants capacity, so placement counts and compares free slots), then `dforge db init`.
// N tenants are created one by one through the CLI (`dforge tenant create`, a process each, as an
// operator or a provisioning script runs it); placement spreads them over the three clusters.
// Reported:
//  - the median create time of the first tenth against the last tenth, each with a baseline in the
//    same run: one `createdb` process (superuser, unix socket) on the same clusters, interleaved
//    with the creates of that tenth, which is the floor of what any tenant create costs;
//  - then, with drift cancelled: a tenth's worth of ABBA pairs, one create on the full install and
//    one on a second, fresh install of the same shape. Over a long run the machine itself drifts
//    (WAL volume, checkpoints, page cache), and the tenths' comparison cannot tell that from creep.
// Needs ~8 MB of disk per tenant (N databases, plus a tenth's worth of baseline ones).
// Usage: npm run build && npx node scripts/bench/tenant-placement.mjs [--scale 1] [--tenants 1000] [--json out.json]
import {spawnSync} from 'node:child_process';
import {chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync} from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import YAML from 'yaml';

import {abba, benchOptions, dforgeAt, freePort, median, medianInterval, pairRatio, repoRoot as root, report, wall} from './common.mjs';

const options = benchOptions();
const tenants = options.count('tenants', 1000, 30);
const tenth = Math.max(3, Math.round(tenants / 10));

const scratch = mkdtempSync(path.join(os.tmpdir(), 'dforge-bench-placement-'));
chmodSync(scratch, 0o755);
const capacity = tenants + tenth + 10;
const dir = path.join(scratch, 'install');
const freshDir = path.join(scratch, 'fresh');
const cli = dforgeAt(dir);
const fresh = dforgeAt(freshDir);

/** A quickstart install at `dir`, grown to three clusters in its region, each with room for all N; its clusters. */
async function threeClusterInstall(dir, cli) {
  cli('quickstart', '--port', String(await freePort()));
  const configFile = path.join(dir, 'dforge.yaml');
  const config = YAML.parse(readFileSync(configFile, 'utf8'));
  const region = Object.keys(config.regions)[0];
  const first = config.regions[region].clusters[0];
  config.regions[region].clusters = [
    {...first, maxTenants: capacity},
    {name: `${region}-2`, kind: 'embedded', port: await freePort(), maxTenants: capacity},
    {name: `${region}-3`, kind: 'embedded', port: await freePort(), maxTenants: capacity},
  ];
  writeFileSync(configFile, YAML.stringify(config), {mode: 0o600});
  cli('db', 'init');
  return {region, clusters: config.regions[region].clusters};
}

try {
  const {region, clusters} = await threeClusterInstall(dir, cli);

  const {InstallDir} = await import(path.join(root, 'dist/state/install-dir.js'));
  const keys = await (await import(path.join(root, 'dist/keys/context.js'))).openKeyServices(new InstallDir(dir));
  const status = JSON.parse(cli('db', 'status', '--json'));
  const binDir = `/usr/lib/postgresql/${status.clusters[0].version}/bin`;
  const superEnv = {};
  for (const c of clusters) {
    superEnv[c.name] = {
      ...process.env,
      PGHOST: path.join(dir, 'run/postgres', c.name),
      PGPORT: String(c.port),
      PGUSER: 'dforge_admin',
      PGPASSWORD: (await keys.sealed.get(`postgres/${c.name}/superuser`)).toString(),
    };
  }
  let raw = 0;
  // The baseline: one createdb process, on the clusters in turn, like placement spreads tenants.
  const createdb = () => {
    const c = clusters[raw % clusters.length];
    const r = spawnSync(path.join(binDir, 'createdb'), [`raw_${raw++}`], {env: superEnv[c.name], encoding: 'utf8'});
    if (r.status !== 0) throw new Error(`createdb: ${r.stderr}`);
  };

  const perCreate = [];
  const baselineFirst = [];
  const baselineLast = [];
  for (let i = 0; i < tenants; i++) {
    perCreate.push(wall(() => cli('tenant', 'create', `t-${String(i).padStart(4, '0')}`)));
    if (i < tenth) baselineFirst.push(wall(createdb));
    if (i >= tenants - tenth) baselineLast.push(wall(createdb));
    if ((i + 1) % 50 === 0) process.stderr.write(`${i + 1}/${tenants} tenants\n`);
  }
  const placed = JSON.parse(cli('tenant', 'list', '--json')).tenants;
  const onCluster = clusters.map((c) => `${c.name} ${placed.filter((t) => t.cluster === c.name).length}`).join(', ');

  // Drift cancelled: ABBA pairs of one create on the full install and one on a fresh one.
  await threeClusterInstall(freshDir, fresh);
  const atN = [];
  const atStart = [];
  for (let i = 0; i < tenth; i++) {
    const slug = `p-${String(i).padStart(4, '0')}`;
    const [x, y] = await abba(i, async () => wall(() => cli('tenant', 'create', slug)), async () => wall(() => fresh('tenant', 'create', slug)));
    atN.push(x);
    atStart.push(y);
  }
  const paired = pairRatio(atN, atStart);

  const firstCreate = medianInterval(perCreate.slice(0, tenth));
  const lastCreate = medianInterval(perCreate.slice(-tenth));
  const [b1, b2] = [median(baselineFirst), median(baselineLast)];
  const ms = (x) => `${x.toFixed(0)} ms`;
  const ci = (m) => `${ms(m.median)} (${m.label} ${ms(m.low)}-${ms(m.high)})`;
  report(options, {
    name: 'tenant-placement',
    title: 'Tenant placement over three clusters',
    script: 'scripts/bench/tenant-placement.mjs',
    command: `npm run bench:tenant-placement -- --tenants ${tenants}`,
    software: `PostgreSQL ${status.clusters[0].version}`,
    workload: `a quickstart install grown to three embedded clusters in region ${region} (maxTenants ${capacity} each); ${tenants} \`dforge tenant create\` runs one after another, placed by free capacity (end state, the quickstart's two tenants included: ${onCluster}); a \`createdb\` baseline interleaved with the first and the last ${tenth}. Then ${tenth} ABBA pairs: one create on that install (from ${tenants + 2} tenants on) and one on a fresh install of the same shape (from 2).`,
    tables: [
      {
        columns: ['case', 'median', 'baseline median', 'ratio'],
        rows: [
          [`\`dforge tenant create\`, last ${tenth} of ${tenants} vs first ${tenth}`, ci(lastCreate), ci(firstCreate), (lastCreate.median / firstCreate.median).toFixed(2)],
          [`first ${tenth}: \`dforge tenant create\` vs one \`createdb\` process`, ms(firstCreate.median), ms(b1), (firstCreate.median / b1).toFixed(2)],
          [`last ${tenth}: \`dforge tenant create\` vs one \`createdb\` process`, ms(lastCreate.median), ms(b2), (lastCreate.median / b2).toFixed(2)],
        ],
      },
      {
        columns: ['case', 'median', 'baseline median', 'ratio (median of pairs)', 'interval', 'ratio of the medians'],
        rows: [
          [
            `\`dforge tenant create\` at ${tenants + 2} tenants vs on a fresh install (${tenth} ABBA pairs)`,
            ms(median(atN)),
            ms(median(atStart)),
            paired.ratio.toFixed(3),
            `${paired.label} ${paired.low.toFixed(3)}-${paired.high.toFixed(3)}`,
            paired.ratioOfMedians.toFixed(3),
          ],
        ],
      },
    ],
    notes: [
      'A create is a whole CLI process: Node start-up, the control plane, the placement transaction (region lock, one count over the registry, insert), roles, database, schemas, data key, ops log, the tenant catalog. Placement itself is one count over the registry and one insert, so the creep a growing registry could cause is in the ratio of the last tenth to the first.',
      'CREATE DATABASE follows the disk and the checkpointer, and this machine is shared, so the createdb baseline moves between tenths: compare it within a tenth.',
      'Whether a create stays flat as tenants grow is the paired row: both installs run side by side, so what the machine does over the long run weighs on both sides of every pair alike.',
    ],
  });
} finally {
  cli.stop();
  fresh.stop();
  rmSync(scratch, {recursive: true, force: true});
}
