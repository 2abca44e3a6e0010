#!/usr/bin/env node
// Runs every benchmark at one scale and rewrites their sections of docs/benchmarks.md from the
// scripts' JSON output, so no figure in the doc is copied by hand. A section is the text between
// `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`; sections of benchmarks not run are kept.
// Usage: npm run build && node scripts/bench/run-all.mjs [--scale 1] [--only startup,backup]
//   [--note "text for the generated header"] [--doc docs/benchmarks.md] [--keep-json DIR]
import {spawnSync} from 'node:child_process';
import {existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {fileURLToPath} from 'node:url';

import {benchOptions, renderMarkdown} from './common.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const flag = (name) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : undefined;
};
const {scale} = benchOptions();
const all = ['startup', 'pki', 'keys-rotate', 'tenants', 'tenant-placement', 'residency-report', 'tenant-move', 'backup', 'posture', 'bundle'];
const only = flag('only')?.split(',') ?? all;
for (const name of only) if (!all.includes(name)) throw new Error(`--only: no benchmark ${name}; there are ${all.join(', ')}`);
const doc = path.resolve(root, flag('doc') ?? 'docs/benchmarks.md');
const note = flag('note');
if (!existsSync(path.join(root, 'dist/commands'))) throw new Error('dist/ is missing: run npm run build first (npm run bench:all does).');

const keep = flag('keep-json');
const jsonDir = keep ? path.resolve(keep) : mkdtempSync(path.join(os.tmpdir(), 'dforge-bench-json-'));
mkdirSync(jsonDir, {recursive: true});
const sections = new Map();
const failures = [];
const started = Date.now();
for (const name of only) {
  const jsonFile = path.join(jsonDir, `${name}.json`);
  rmSync(jsonFile, {force: true});
  process.stderr.write(`== ${name} (scale ${scale})\n`);
  const t = Date.now();
  // The benchmark's own Markdown goes to stderr here: stdout of this script is the summary.
  const r = spawnSync(process.execPath, [path.join(root, 'scripts/bench', `${name}.mjs`), '--scale', String(scale), '--json', jsonFile], {stdio: ['ignore', 2, 2]});
  const minutes = (Date.now() - t) / 60_000;
  if (!existsSync(jsonFile)) {
    failures.push(`${name} exited ${r.status ?? r.signal} without results`);
    continue;
  }
  // A benchmark over its budget exits 1 but has its results: they go in the doc, marked.
  const result = JSON.parse(readFileSync(jsonFile, 'utf8'));
  const flagged = r.status === 0 ? '' : `\n**This run exited ${r.status}: a figure is over its budget.**\n`;
  sections.set(name, `${renderMarkdown(result)}Took ${minutes.toFixed(1)} min.${note ? ` ${note}` : ''}\n${flagged}`);
}

let text = readFileSync(doc, 'utf8');
for (const [name, body] of sections) {
  const open = `<!-- bench:${name} -->`;
  const close = `<!-- /bench:${name} -->`;
  const block = `${open}\n${body}${close}`;
  const a = text.indexOf(open);
  const b = text.indexOf(close);
  if (a >= 0 && b > a) text = text.slice(0, a) + block + text.slice(b + close.length);
  else {
    // A new benchmark's section goes right after the last one, or at the end.
    const end = text.lastIndexOf('<!-- /bench:');
    const at = end >= 0 ? text.indexOf('-->', end) + 3 : text.length;
    text = `${text.slice(0, at)}\n\n${block}${text.slice(at)}`;
  }
}
writeFileSync(doc, text);
const total = ((Date.now() - started) / 60_000).toFixed(1);
console.log(`rewrote ${[...sections.keys()].join(', ') || 'nothing'} in ${path.relative(root, doc)} (scale ${scale}, ${total} min)${keep ? `; JSON in ${jsonDir}` : ''}`);
if (!keep) rmSync(jsonDir, {recursive: true, force: true});
if (failures.length) {
  console.error(`failed: ${failures.join('; ')}`);
  process.exitCode = 1;
}
