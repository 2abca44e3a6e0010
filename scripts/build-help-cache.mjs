// Captures oclif's own non-interactive help output for the root, every topic and every command,
// so bin/run.js can answer help without loading oclif (see src/cli/fast-path.ts).
// Usage: node scripts/build-help-cache.mjs [ROOT]: ROOT is the package root to run and write into
// (default: the repository; scripts/build.mjs passes its staging root).
import {execFile} from 'node:child_process';
import {readFileSync, writeFileSync} from 'node:fs';
import path from 'node:path';
import {fileURLToPath} from 'node:url';
import {promisify} from 'node:util';

const run = promisify(execFile);
const root = path.resolve(process.argv[2] ?? path.join(path.dirname(fileURLToPath(import.meta.url)), '..'));
const pkg = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8'));
const manifest = JSON.parse(readFileSync(path.join(root, 'oclif.manifest.json'), 'utf8'));

const ids = new Set(['']);
for (const topic of Object.keys(pkg.oclif.topics ?? {})) ids.add(topic);
for (const id of Object.keys(manifest.commands)) {
  const parts = id.split(':');
  for (let i = 1; i <= parts.length; i++) ids.add(parts.slice(0, i).join(' '));
}

const env = {...process.env, DFORGE_NO_FAST_PATH: '1', NO_COLOR: '1'};
delete env.OCLIF_COLUMNS;
const entries = {};
await Promise.all(
  [...ids].map(async (id) => {
    const args = [path.join(root, 'bin', 'run.js'), 'help', ...(id ? id.split(' ') : [])];
    const {stdout, stderr} = await run(process.execPath, args, {env, cwd: root});
    if (stderr.trim()) throw new Error(`help for "${id}" wrote to stderr: ${stderr}`);
    entries[id] = stdout;
  }),
);
const sorted = Object.fromEntries(Object.entries(entries).sort(([a], [b]) => a.localeCompare(b)));
writeFileSync(path.join(root, 'dist', 'help-cache.json'), `${JSON.stringify({version: pkg.version, columns: 80, entries: sorted}, null, 1)}\n`);
process.stderr.write(`help cache: ${ids.size} entries\n`);
