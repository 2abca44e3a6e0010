#!/usr/bin/env node
// Builds dist/, oclif.manifest.json and the help cache (dist/help-cache.json) without ever leaving
// the repository without a working dforge: everything is built in a staging root (build.next/, a
// package root of its own: package.json, bin/run.js, dist/), checked by running it, and only then
// moved into place by renames. A failed build (a type error, a command that does not load) leaves
// the previous dist/ untouched.
//
// A dforge running during the swap: rename(2) of dist/ is atomic, but two renames are needed (no
// portable directory exchange), so for the microseconds between them dist/ does not exist and a
// dforge starting exactly then fails to load and can be re-run. A dforge already running keeps the
// modules it has loaded; a command it loads lazily after the swap comes from the new dist/ (the same
// as after any reinstall). dist.old/ is removed last: nothing refers to it by that name.
//
// Usage: node scripts/build.mjs   (npm run build)
import {execFileSync} from 'node:child_process';
import {copyFileSync, existsSync, mkdirSync, renameSync, rmSync} from 'node:fs';
import path from 'node:path';
import {fileURLToPath} from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const stage = path.join(root, 'build.next');
const bin = (name) => path.join(root, 'node_modules', '.bin', name);
const run = (file, args) => execFileSync(file, args, {cwd: root, stdio: ['ignore', 'inherit', 'inherit']});

// A stage left by a killed build is stale, never resumed.
rmSync(stage, {recursive: true, force: true});
mkdirSync(path.join(stage, 'bin'), {recursive: true});
copyFileSync(path.join(root, 'package.json'), path.join(stage, 'package.json'));
// Copied, not linked: Node resolves a symlinked entry point to its real path, which would make the
// staged bin/run.js load the live dist/ instead of the staged one.
copyFileSync(path.join(root, 'bin', 'run.js'), path.join(stage, 'bin', 'run.js'));

// Dependencies resolve from the repository's node_modules/: the stage sits inside the repository.
run(bin('tsc'), ['-p', path.join(root, 'tsconfig.build.json'), '--outDir', path.join(stage, 'dist')]);
// oclif manifest loads every command from the stage's dist/commands: a command that fails to load
// fails the build here, before the swap.
execFileSync(bin('oclif'), ['manifest', stage], {cwd: root, stdio: ['ignore', 'ignore', 'inherit']});
run(process.execPath, [path.join(root, 'scripts', 'build-help-cache.mjs'), stage]);

const dist = path.join(root, 'dist');
const old = path.join(root, 'dist.old');
rmSync(old, {recursive: true, force: true});
if (existsSync(dist)) renameSync(dist, old);
renameSync(path.join(stage, 'dist'), dist);
// A file rename replaces the old manifest in one step.
renameSync(path.join(stage, 'oclif.manifest.json'), path.join(root, 'oclif.manifest.json'));
rmSync(old, {recursive: true, force: true});
rmSync(stage, {recursive: true, force: true});
