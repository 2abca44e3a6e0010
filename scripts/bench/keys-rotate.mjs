#!/usr/bin/env node
// Benchmark: `dforge keys rotate --master`, on both places the master key wraps things:
//  1. the file stores of an install without a control plane: 1,000 data keys, 20 sealed secrets
//     and the JWT key, against `node -e 0` (the process floor) and the raw crypto floor (1,000
//     AES-256-GCM unwrap + wrap in one process, with one fsynced file write);
//  2. dforge_control on a real cluster (made by `dforge quickstart`): 1,000 tenants' data keys and
//     sealed passwords, re-wrapped in one transaction, against a fresh Node process that does the
//     same database work on a copy of those rows: one TLS + SCRAM connection as the provisioner,
//     SELECT ... FOR UPDATE, one AES-256-GCM decrypt + encrypt and one UPDATE per row, COMMIT.
// The runs alternate (ABBA) so drift on a shared machine hits both sides alike.
// Usage: npm run build && node scripts/bench/keys-rotate.mjs [--scale 1] [--runs 7] [--json out.json]
import {spawnSync} from 'node:child_process';
import {closeSync, cpSync, fsyncSync, mkdtempSync, openSync, chmodSync, rmSync, writeFileSync} from 'node:fs';
import {createCipheriv, createDecipheriv, randomBytes} from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import {fileURLToPath} from 'node:url';

import {benchOptions, freePort, median, pairRatio, report, wall} from './common.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const cliPath = path.join(root, 'bin/run.js');
const options = benchOptions();
const runs = options.count('runs', 7, 3);
const DEKS = options.count('keys', 1000, 20);
const TENANTS = options.count('tenants', 1000, 20);

// Seeding needs the keyring (to wrap what it inserts); the rotations themselves run the CLI.
const {InstallDir} = await import(path.join(root, 'dist/state/install-dir.js'));
const {initKeys} = await import(path.join(root, 'dist/keys/init.js'));
const {openKeyServices} = await import(path.join(root, 'dist/keys/context.js'));

const scratch = mkdtempSync(path.join(os.tmpdir(), 'dforge-bench-rotate-'));
chmodSync(scratch, 0o755);
const cli = (dir, ...args) => {
  const r = spawnSync(process.execPath, [cliPath, ...args, '--dir', dir, '--quiet'], {encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe']});
  if (r.status !== 0) throw new Error(`dforge ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
};

// A fresh process that does what the control-store rotation does to the database, on a copy of
// its rows (bench_rows), without dforge: its floor. Credentials arrive in the environment.
const floorScript = `
import {createCipheriv, createDecipheriv, randomBytes} from 'node:crypto';
import {readFileSync} from 'node:fs';
const pg = (await import(process.env.BENCH_PG)).default;
const c = new pg.Client({host: '127.0.0.1', port: Number(process.env.BENCH_PORT), user: 'dforge_provisioner', password: process.env.BENCH_PASSWORD, database: 'dforge_control',
  ssl: {ca: readFileSync(process.env.BENCH_CA, 'utf8'), servername: 'localhost', minVersion: 'TLSv1.3', rejectUnauthorized: true}});
await c.connect();
const oldKey = Buffer.from(process.env.BENCH_KEY, 'hex');
const newKey = randomBytes(32);
await c.query('BEGIN');
const rows = (await c.query('SELECT id, blob FROM bench_rows FOR UPDATE')).rows;
for (const r of rows) {
  const d = createDecipheriv('aes-256-gcm', oldKey, r.blob.subarray(0, 12));
  d.setAuthTag(r.blob.subarray(-16));
  const plain = Buffer.concat([d.update(r.blob.subarray(12, -16)), d.final()]);
  const nonce = randomBytes(12);
  const e = createCipheriv('aes-256-gcm', newKey, nonce);
  await c.query('UPDATE bench_rows SET blob = $1 WHERE id = $2', [Buffer.concat([nonce, e.update(plain), e.final(), e.getAuthTag()]), r.id]);
}
await c.query('COMMIT');
await c.end();
process.stdout.write(String(rows.length));
`;

let port;
const controlDir = path.join(scratch, 'control');
try {
  // 1. File stores.
  const pristine = new InstallDir(path.join(scratch, 'pristine'));
  await pristine.ensureLayout();
  writeFileSync(pristine.configFile, 'version: 1\ndomain: bench.example.test\ntarget: embedded\nprimaryRegion: eu\nregions:\n  eu:\n    clusters:\n      - name: eu-1\n        kind: embedded\n');
  await initKeys(pristine, {command: 'bench'});
  const services = await openKeyServices(pristine);
  // Seed through the store in one write; DataKeys.create would rewrite the file per key.
  const now = new Date().toISOString();
  const records = [];
  for (let i = 0; i < DEKS; i++) {
    const owner = `tenant-${i}`;
    records.push({owner, version: 1, state: 'active', createdAt: now, wrapped: await services.keyring.wrap(randomBytes(32), `dek:${owner}:v1`)});
  }
  await services.dataKeyStore.replace(records);
  for (let i = 0; i < 20; i++) await services.sealed.put(`bench/secret-${i}`, randomBytes(64).toString('base64'));

  const rotateFiles = (i) => {
    const dir = path.join(scratch, `run-${i}`);
    cpSync(pristine.root, dir, {recursive: true});
    const ms = wall(() => cli(dir, 'keys', 'rotate', '--master'));
    rmSync(dir, {recursive: true, force: true});
    return ms;
  };
  const nodeFloor = () => wall(() => spawnSync(process.execPath, ['-e', '0']));
  const cryptoFloor = () =>
    wall(() => {
      const oldKey = randomBytes(32);
      const newKey = randomBytes(32);
      const out = [];
      for (const r of records) {
        const nonce = randomBytes(12);
        const c = createCipheriv('aes-256-gcm', oldKey, nonce);
        const ct = Buffer.concat([c.update(r.wrapped.subarray(0, 32)), c.final(), c.getAuthTag()]);
        const d = createDecipheriv('aes-256-gcm', oldKey, nonce);
        d.setAuthTag(ct.subarray(32));
        const plain = Buffer.concat([d.update(ct.subarray(0, 32)), d.final()]);
        const n2 = randomBytes(12);
        const e = createCipheriv('aes-256-gcm', newKey, n2);
        out.push(Buffer.concat([n2, e.update(plain), e.final(), e.getAuthTag()]).toString('base64'));
      }
      const file = path.join(scratch, 'floor.json');
      writeFileSync(file, JSON.stringify(out));
      const fd = openSync(file, 'r');
      fsyncSync(fd);
      closeSync(fd);
    });
  const files = {rotate: [], node: [], crypto: []};
  rotateFiles('warm');
  for (let i = 0; i < runs; i++) {
    files.node.push(nodeFloor());
    files.crypto.push(cryptoFloor());
    files.rotate.push(rotateFiles(i));
  }

  // 2. dforge_control on a real cluster.
  port = await freePort();
  cli(controlDir, 'quickstart', '--port', String(port));
  const {openControlPlane} = await import(path.join(root, 'dist/control/plane.js'));
  const {tenantPasswordContext} = await import(path.join(root, 'dist/control/keys-store.js'));
  const plane = await openControlPlane(new InstallDir(controlDir));
  const c = plane.control;
  // Registry rows with a sealed password and a data key each, inserted directly: a rotation reads
  // and writes only these rows, and creating 1,000 real databases would take minutes and measure
  // nothing more.
  await c.query('BEGIN');
  for (let i = 0; i < TENANTS; i++) {
    const slug = `bench-${String(i).padStart(4, '0')}`;
    const role = `tenant_${slug.replaceAll('-', '_')}`;
    await c.query(`INSERT INTO tenants (slug, region, cluster, role_name, database_name, status, connection_limit) VALUES ($1, 'local', 'local-1', $2, $2, 'active', 20)`, [slug, role]);
    await c.query('INSERT INTO tenant_credentials (slug, sealed_password) VALUES ($1, $2)', [slug, await plane.keys.keyring.wrap(randomBytes(32), tenantPasswordContext(slug))]);
    await c.query(`INSERT INTO data_keys (owner, version, state, created_at, wrapped) VALUES ($1, 1, 'active', now(), $2)`, [slug, await plane.keys.keyring.wrap(randomBytes(32), `dek:${slug}:v1`)]);
  }
  await c.query('COMMIT');
  const counted = await c.query('SELECT (SELECT count(*) FROM data_keys)::int AS keys, (SELECT count(*) FROM tenant_credentials)::int AS passwords');
  const {keys: controlKeys, passwords: controlPasswords} = counted.rows[0];
  // The floor's copy: as many rows, each a 32-byte secret under AES-256-GCM, as dforge re-wraps.
  const floorKey = randomBytes(32);
  await c.query('CREATE TABLE bench_rows (id integer PRIMARY KEY, blob bytea NOT NULL)');
  for (let i = 0; i < controlKeys + controlPasswords; i++) {
    const nonce = randomBytes(12);
    const e = createCipheriv('aes-256-gcm', floorKey, nonce);
    await c.query('INSERT INTO bench_rows VALUES ($1, $2)', [i, Buffer.concat([nonce, e.update(randomBytes(32)), e.final(), e.getAuthTag()])]);
  }
  const provisionerPassword = (await plane.keys.sealed.get('postgres/local-1/provisioner')).toString();
  await plane.close();
  const floorEnv = {
    ...process.env,
    BENCH_PG: path.join(root, 'node_modules/pg/lib/index.js'),
    BENCH_PORT: String(port),
    BENCH_PASSWORD: provisionerPassword,
    BENCH_CA: path.join(controlDir, 'pki/ca.crt'),
  };
  let floorKeyHex = floorKey.toString('hex');
  const controlFloor = () =>
    wall(() => {
      const r = spawnSync(process.execPath, ['--input-type=module', '-e', floorScript], {env: {...floorEnv, BENCH_KEY: floorKeyHex}, encoding: 'utf8'});
      if (r.status !== 0) throw new Error(`floor: ${r.stderr}`);
      if (Number(r.stdout) !== controlKeys + controlPasswords) throw new Error(`floor re-wrapped ${r.stdout} rows, not ${controlKeys + controlPasswords}`);
    });
  // The floor re-wraps under a random new key each time; reset the copy so the next run can read it.
  const resetFloor = async () => {
    floorKeyHex = randomBytes(32).toString('hex');
    const reset = await openControlPlane(new InstallDir(controlDir));
    const key = Buffer.from(floorKeyHex, 'hex');
    await reset.control.query('BEGIN');
    for (let i = 0; i < controlKeys + controlPasswords; i++) {
      const nonce = randomBytes(12);
      const e = createCipheriv('aes-256-gcm', key, nonce);
      await reset.control.query('UPDATE bench_rows SET blob = $1 WHERE id = $2', [Buffer.concat([nonce, e.update(randomBytes(32)), e.final(), e.getAuthTag()]), i]);
    }
    await reset.control.query('COMMIT');
    await reset.close();
  };
  let rewrapped;
  // Each rotation moves every item to the next master version, so the same install serves every run.
  const rotateControl = () => {
    let out;
    const ms = wall(() => (out = cli(controlDir, 'keys', 'rotate', '--master', '--json')));
    rewrapped = JSON.parse(out).master.rewrapped;
    if (rewrapped.control !== controlKeys + controlPasswords) throw new Error(`rotation re-wrapped ${JSON.stringify(rewrapped)} in dforge_control, expected ${controlKeys + controlPasswords}`);
    return ms;
  };
  rotateControl();
  controlFloor();
  await resetFloor();
  const control = {rotate: [], floor: []};
  for (let i = 0; i < runs; i++) {
    // ABBA: dforge first on even runs, the floor first on odd ones.
    const floorRun = async () => {
      control.floor.push(controlFloor());
      await resetFloor();
    };
    if (i % 2 === 1) await floorRun();
    control.rotate.push(rotateControl());
    if (i % 2 === 0) await floorRun();
    process.stderr.write(`control run ${i + 1}: rotate ${control.rotate.at(-1).toFixed(0)} ms, floor ${control.floor.at(-1).toFixed(0)} ms\n`);
  }

  const version = JSON.parse(cli(controlDir, 'db', 'status', '--json')).clusters[0].version;
  const [r, n, cf] = [median(files.rotate), median(files.node), median(files.crypto)];
  const ctl = pairRatio(control.rotate, control.floor);
  const fmt = (x) => x.toFixed(3);
  report(options, {
    name: 'keys-rotate',
    title: 'Master-key rotation',
    script: 'scripts/bench/keys-rotate.mjs',
    command: `npm run bench:keys-rotate -- --runs ${runs} --keys ${DEKS} --tenants ${TENANTS}`,
    software: `PostgreSQL ${version}`,
    workload: `\`dforge keys rotate --master\`, ${runs} runs per case. File stores: ${DEKS} data keys, 20 sealed secrets and the JWT key, in a copy of one install per run. dforge_control: a quickstart install on a real cluster with ${controlKeys} data keys and ${controlPasswords} sealed tenant passwords in the control database (the ${TENANTS} benchmark tenants are registry rows without databases: a rotation touches only these rows), rotated again each run, in ABBA order with its floor.`,
    tables: [
      {
        title: 'File stores (no control plane)',
        columns: ['case', 'median ms'],
        rows: [
          ['`dforge keys rotate --master`', r.toFixed(0)],
          ['baseline: `node -e 0` (process floor)', n.toFixed(0)],
          [`baseline: raw crypto floor, ${DEKS} AES-GCM unwraps and wraps plus one fsynced write, in-process`, cf.toFixed(0)],
          ['per data key above the process floor', fmt((r - n) / DEKS)],
        ],
      },
      {
        title: 'dforge_control on a real cluster',
        columns: ['case', 'dforge median ms', 'floor median ms', 'ratio (median of pairs)', 'interval', 'ratio of the medians'],
        rows: [
          [
            `\`dforge keys rotate --master\` (${rewrapped.control} control items, plus ${Object.entries(rewrapped).filter(([id]) => id !== 'control').map(([id, k]) => `${k} ${id}`).join(', ')}) vs a fresh Node process re-wrapping ${controlKeys + controlPasswords} rows in one transaction`,
            median(control.rotate).toFixed(0),
            median(control.floor).toFixed(0),
            fmt(ctl.ratio),
            `${ctl.label} ${fmt(ctl.low)}-${fmt(ctl.high)}`,
            fmt(ctl.ratioOfMedians),
          ],
          ['per control item, dforge minus floor', fmt((median(control.rotate) - median(control.floor)) / (controlKeys + controlPasswords)), '', '', '', ''],
        ],
      },
    ],
    notes: [
      'The dforge figure includes process start and module loading, verifying every wrapped item before the change, the keyring commits, the file-store re-wraps and the ops-log record; the floor has none of these.',
    ],
  });
} finally {
  if (port) spawnSync(process.execPath, [cliPath, 'db', 'stop', '--immediate', '--dir', controlDir, '--quiet']);
  rmSync(scratch, {recursive: true, force: true});
}
