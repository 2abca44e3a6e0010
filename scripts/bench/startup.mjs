#!/usr/bin/env node
// Startup benchmark: `dforge --version` and `dforge help tenant` against `node -e 0`, interleaved in
// one run on the same Node binary, so machine noise hits all three alike. Prints median ratios.
// Usage: npm run bench:startup [-- --runs 40]
import {spawnSync} from 'node:child_process';
import path from 'node:path';
import {fileURLToPath} from 'node:url';

import {machine, median} from './common.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const runsArg = process.argv.indexOf('--runs');
const runs = runsArg > 0 ? Number(process.argv[runsArg + 1]) : 40;
const cli = path.join(root, 'bin', 'run.js');

const cases = [
  {name: 'node -e 0', args: ['-e', '0']},
  {name: 'dforge --version', args: [cli, '--version'], budget: 2.0},
  {name: 'dforge help tenant', args: [cli, 'help', 'tenant'], budget: 2.5},
  // For reference: the same help rendered live by oclif, i.e. what the build-time help cache saves.
  {name: 'help tenant (live)', args: [cli, 'help', 'tenant'], env: {DFORGE_NO_FAST_PATH: '1'}},
];

const env = {...process.env};
delete env.DFORGE_NO_FAST_PATH;
const time = (args, extraEnv = {}) => {
  const start = process.hrtime.bigint();
  const r = spawnSync(process.execPath, args, {env: {...env, ...extraEnv}, stdio: ['ignore', 'pipe', 'pipe']});
  const ms = Number(process.hrtime.bigint() - start) / 1e6;
  if (r.status !== 0) throw new Error(`${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return ms;
};

// Warm the page cache and Node's compile cache before measuring.
for (const c of cases) for (let i = 0; i < 3; i++) time(c.args, c.env);
const samples = new Map(cases.map((c) => [c.name, []]));
for (let i = 0; i < runs; i++) {
  // Rotate the order every round so no case always runs first.
  for (let j = 0; j < cases.length; j++) {
    const c = cases[(i + j) % cases.length];
    samples.get(c.name).push(time(c.args, c.env));
  }
}
const baseline = median(samples.get('node -e 0'));
console.log(`${machine()}; ${runs} interleaved runs each`);
console.log('case                 median ms   ratio vs node -e 0   budget');
let over = false;
for (const c of cases) {
  const m = median(samples.get(c.name));
  const ratio = m / baseline;
  if (c.budget && ratio > c.budget) over = true;
  console.log(`${c.name.padEnd(20)} ${m.toFixed(1).padStart(9)}   ${ratio.toFixed(2).padStart(18)}   ${c.budget ? `<= ${c.budget.toFixed(1)}${ratio > c.budget ? '  OVER' : ''}` : ''}`);
}
process.exitCode = over ? 1 : 0;
