#!/usr/bin/env node
// Benchmark: `dforge keys rotate --master` over 1,000 data keys (plus the JWT key and 20 sealed
// secrets), against two baselines in the same run: `node -e 0` (the process floor) and the raw
// crypto floor (1,000 AES-256-GCM unwrap + wrap in one process, with one fsynced file write).
// Usage: npm run build && node scripts/bench/keys-rotate.mjs [--runs 7]
import {spawnSync} from 'node:child_process';
import {createCipheriv, createDecipheriv, randomBytes} from 'node:crypto';
import {cpSync, mkdtempSync, rmSync, writeFileSync, openSync, fsyncSync, closeSync} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {fileURLToPath} from 'node:url';

import {machine, median, wall} from './common.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const runsArg = process.argv.indexOf('--runs');
const runs = runsArg > 0 ? Number(process.argv[runsArg + 1]) : 7;
const DEKS = 1000;

const {InstallDir} = await import(path.join(root, 'dist/state/install-dir.js'));
const {initKeys} = await import(path.join(root, 'dist/keys/init.js'));
const {openKeyServices} = await import(path.join(root, 'dist/keys/context.js'));

const scratch = mkdtempSync(path.join(os.tmpdir(), 'dforge-bench-rotate-'));
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

const rotateOnce = (i) => {
  const dir = path.join(scratch, `run-${i}`);
  cpSync(pristine.root, dir, {recursive: true});
  const ms = wall(() => {
    const r = spawnSync(process.execPath, [path.join(root, 'bin/run.js'), 'keys', 'rotate', '--master', '--dir', dir, '--quiet'], {stdio: ['ignore', 'ignore', 'pipe']});
    if (r.status !== 0) throw new Error(`rotate failed: ${r.stderr}`);
  });
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

const samples = {rotate: [], node: [], crypto: []};
rotateOnce('warm');
for (let i = 0; i < runs; i++) {
  samples.node.push(nodeFloor());
  samples.crypto.push(cryptoFloor());
  samples.rotate.push(rotateOnce(i));
}
rmSync(scratch, {recursive: true, force: true});
const [r, n, c] = [median(samples.rotate), median(samples.node), median(samples.crypto)];
console.log(`${machine()}; ${runs} interleaved runs`);
console.log(`dforge keys rotate --master (${DEKS} DEKs + 21 sealed secrets): ${r.toFixed(0)} ms median`);
console.log(`baseline node -e 0:                                  ${n.toFixed(0)} ms  (ratio ${(r / n).toFixed(2)})`);
console.log(`baseline raw crypto floor (${DEKS} unwrap+wrap, 1 write): ${c.toFixed(0)} ms  (rotate minus process floor: ${(r - n).toFixed(0)} ms)`);
console.log(`per data key: ${((r - n) / DEKS).toFixed(3)} ms`);
