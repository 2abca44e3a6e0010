#!/usr/bin/env node
// Builds dforge as one executable (Node single executable application): a copy of the pinned Node
// binary with a SEA blob injected whose main script is scripts/sea/main.cjs and whose assets are the
// installed package (dist/, bin/, templates/, package.json, oclif.manifest.json, the
// production node_modules without native add-ons, type declarations or source maps) as one payload.
// See scripts/sea/main.cjs for how it is unpacked and trusted at run time.
// Needs `npm run build` first (npm run build:sea does both).
// Usage: node scripts/build-sea.mjs [--out dist-sea/dforge]
import {execFileSync} from 'node:child_process';
import crypto from 'node:crypto';
import {chmodSync, copyFileSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {fileURLToPath} from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const outFlag = process.argv.indexOf('--out');
const out = path.resolve(outFlag > 0 ? process.argv[outFlag + 1] : path.join(root, 'dist-sea', 'dforge'));
const started = Date.now();

for (const need of ['dist/commands', 'dist/help-cache.json', 'oclif.manifest.json']) {
  if (!existsSync(path.join(root, need))) throw new Error(`${need} is missing: run npm run build first (npm run build:sea does).`);
}

// The pinned Node (the npm `node` package), not whatever runs this script: the executable's Node
// version is then the project's, and `dforge --version` names it.
const nodeBin = path.join(root, 'node_modules', 'node', 'bin', 'node');
const FUSE = 'NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2';
if (!readFileSync(nodeBin).includes(FUSE)) throw new Error(`${nodeBin} has no SEA fuse ${FUSE}: it cannot become a single executable`);

// Files a running dforge never reads; native add-ons are left out so nothing native can load
// (ssh2 and cpu-features fall back to JavaScript when their bindings are absent).
const SKIP_FILE = /(\.d\.[cm]?ts|\.map|\.node|\.gyp|\.gypi|\.tsbuildinfo|\.md|\.markdown)$/i;

function walk(dir, rel, files, {pkg}) {
  for (const name of readdirSync(dir).sort()) {
    const abs = path.join(dir, name);
    const r = rel ? `${rel}/${name}` : name;
    const st = lstatSync(abs);
    if (st.isDirectory()) {
      // Nested node_modules are listed by npm as packages of their own. Other directories are kept
      // whole: which of a package's files it loads at run time is its own business.
      if (pkg && name === 'node_modules') continue;
      walk(abs, r, files, {pkg});
    } else if (st.isFile()) {
      if (pkg && SKIP_FILE.test(name)) continue;
      files.push({abs, path: r, mode: st.mode & 0o111 ? 0o500 : 0o400});
    }
    // Symbolic links are not carried: the unpacked tree has regular files and directories only.
  }
}

const files = [];
for (const top of ['bin', 'dist', 'templates']) {
  if (existsSync(path.join(root, top))) walk(path.join(root, top), top, files, {pkg: false});
}
for (const f of ['package.json', 'oclif.manifest.json']) files.push({abs: path.join(root, f), path: f, mode: 0o400});
for (const f of ['scripts/sea/import.cjs']) files.push({abs: path.join(root, f), path: f, mode: 0o400});

const listed = execFileSync('npm', ['ls', '--omit=dev', '--all', '--parseable'], {cwd: root, encoding: 'utf8'})
  .split('\n')
  .filter(Boolean)
  .map((p) => path.relative(root, p))
  .filter((p) => p.startsWith('node_modules/'));
for (const p of [...new Set(listed)].sort()) {
  const real = path.join(root, p);
  if (!existsSync(real)) continue; // an optional dependency not installed on this platform
  walk(real, p, files, {pkg: true});
}
files.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));

// The payload is the files' bytes back to back; the index says where each one is. No mtimes or
// owners go in, so the same inputs give the same digest.
const chunks = [];
let offset = 0;
const index = {files: []};
for (const f of files) {
  const data = readFileSync(f.abs);
  index.files.push({path: f.path, mode: f.mode, offset, size: data.length});
  chunks.push(data);
  offset += data.length;
}
const payload = Buffer.concat(chunks);
const indexJson = JSON.stringify(index);
const digest = crypto.createHash('sha256').update(indexJson).update(payload).digest('hex');

const work = mkdtempSync(path.join(os.tmpdir(), 'dforge-sea-'));
try {
  writeFileSync(path.join(work, 'index.json'), indexJson);
  writeFileSync(path.join(work, 'payload.bin'), payload);
  writeFileSync(path.join(work, 'digest'), digest);
  const config = {
    main: path.join(root, 'scripts', 'sea', 'main.cjs'),
    output: path.join(work, 'sea-prep.blob'),
    disableExperimentalSEAWarning: true,
    // Both would tie the blob to this exact build machine's V8 flags and make it nondeterministic.
    useSnapshot: false,
    useCodeCache: false,
    assets: {'index.json': path.join(work, 'index.json'), 'payload.bin': path.join(work, 'payload.bin'), digest: path.join(work, 'digest')},
  };
  writeFileSync(path.join(work, 'sea-config.json'), JSON.stringify(config));
  execFileSync(nodeBin, ['--experimental-sea-config', path.join(work, 'sea-config.json')], {stdio: ['ignore', 'ignore', 'inherit']});
  const exe = path.join(work, 'dforge');
  copyFileSync(nodeBin, exe);
  chmodSync(exe, 0o755);
  const postject = path.join(root, 'node_modules', 'postject', 'dist', 'cli.js');
  execFileSync(process.execPath, [postject, exe, 'NODE_SEA_BLOB', path.join(work, 'sea-prep.blob'), '--sentinel-fuse', FUSE], {stdio: ['ignore', 'ignore', 'inherit']});
  mkdirSync(path.dirname(out), {recursive: true});
  // Rename, not copy, into place: a reader (the bundle writer) never sees a half-written executable.
  const staged = `${out}.tmp-${process.pid}`;
  copyFileSync(exe, staged);
  chmodSync(staged, 0o755);
  renameSync(staged, out);
} finally {
  rmSync(work, {recursive: true, force: true});
}
const size = statSync(out).size;
process.stderr.write(
  `dforge single executable: ${out}\n  ${files.length} files, payload ${(payload.length / 1e6).toFixed(1)} MB, executable ${(size / 1e6).toFixed(1)} MB, digest ${digest.slice(0, 16)}, ${((Date.now() - started) / 1000).toFixed(1)} s\n`,
);
