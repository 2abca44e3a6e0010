#!/usr/bin/env node
// Startup benchmark: `dforge --version` and `dforge help tenant` against `node -e 0`, interleaved in
// one run on the same Node binary, so machine noise hits all three alike. Prints median ratios.
// Usage: npm run bench:startup [-- --scale 1] [--runs 40] [--json out.json]
import {spawnSync} from 'node:child_process';
import {existsSync, mkdtempSync, rmSync, statSync} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {fileURLToPath} from 'node:url';

import {benchOptions, median, report} from './common.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const options = benchOptions();
const runs = options.count('runs', 40, 5);
const cli = path.join(root, 'bin', 'run.js');

const cases = [
  {name: 'node -e 0', args: ['-e', '0']},
  {name: 'dforge --version', args: [cli, '--version'], budget: 2.0},
  {name: 'dforge help tenant', args: [cli, 'help', 'tenant'], budget: 2.5},
  // For reference: the same help rendered live by oclif, i.e. what the build-time help cache saves.
  {name: 'help tenant (live)', args: [cli, 'help', 'tenant'], env: {DFORGE_NO_FAST_PATH: '1'}},
];
// The single executable (npm run build:sea), when built: unpacked once into a private cache first.
const sea = path.join(root, 'dist-sea', 'dforge');
const seaCache = existsSync(sea) ? mkdtempSync(path.join(os.tmpdir(), 'dforge-bench-sea-')) : undefined;
if (seaCache) cases.push({name: 'dforge-sea --version', cmd: sea, args: ['--version'], env: {XDG_CACHE_HOME: seaCache}, sea: true});

const env = {...process.env};
delete env.DFORGE_NO_FAST_PATH;
const time = (args, extraEnv = {}, cmd = process.execPath) => {
  const start = process.hrtime.bigint();
  const r = spawnSync(cmd, args, {env: {...env, ...extraEnv}, stdio: ['ignore', 'pipe', 'pipe']});
  const ms = Number(process.hrtime.bigint() - start) / 1e6;
  if (r.status !== 0) throw new Error(`${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return ms;
};

const firstRun = seaCache ? time(['--version'], {XDG_CACHE_HOME: seaCache}, sea) : undefined;
// Warm the page cache and Node's compile cache before measuring.
for (const c of cases) for (let i = 0; i < 3; i++) time(c.args, c.env, c.cmd);
const samples = new Map(cases.map((c) => [c.name, []]));
for (let i = 0; i < runs; i++) {
  // Rotate the order every round so no case always runs first.
  for (let j = 0; j < cases.length; j++) {
    const c = cases[(i + j) % cases.length];
    samples.get(c.name).push(time(c.args, c.env, c.cmd));
  }
}
const baseline = median(samples.get('node -e 0'));
let over = false;
const rows = cases.map((c) => {
  const m = median(samples.get(c.name));
  const ratio = m / baseline;
  if (c.budget && ratio > c.budget) over = true;
  return [c.env && !c.sea ? `\`${c.name}\` (\`DFORGE_NO_FAST_PATH=1\`, rendered live by oclif)` : `\`${c.name}\``, m.toFixed(1), ratio.toFixed(2), c.budget ? `<= ${c.budget.toFixed(1)}${ratio > c.budget ? ' OVER' : ''}` : ''];
});
report(options, {
  name: 'startup',
  title: 'Startup',
  script: 'scripts/bench/startup.mjs',
  command: `npm run bench:startup -- --runs ${runs}`,
  workload: `${runs} interleaved rounds (the order rotates every round), median wall time of the whole process.`,
  tables: [
    {columns: ['case', 'median ms', 'ratio vs `node -e 0`', 'budget'], rows},
    ...(seaCache ? [{columns: ['single executable', 'value'], rows: [['first run (unpack to the cache), ms', firstRun.toFixed(1)], ['size, MB', (statSync(sea).size / 1e6).toFixed(1)]]}] : []),
  ],
});
if (seaCache) rmSync(seaCache, {recursive: true, force: true});
process.exitCode = over ? 1 : 0;
