#!/usr/bin/env node
// npm's `prepare`: builds after `npm ci` / `npm install` in a clone and before `npm pack`. npm also
// runs it when `npx dforge` inside a clone installs the clone as the dforge package (npm_command
// "exec"); that must not rebuild (minutes, while the previous dforge is in use), so then it builds
// only a clone that has never been built. A tarball install never runs it: the tarball carries dist/.
import {execFileSync} from 'node:child_process';
import {existsSync} from 'node:fs';
import path from 'node:path';
import {fileURLToPath} from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const built = existsSync(path.join(root, 'dist', 'help-cache.json')) && existsSync(path.join(root, 'oclif.manifest.json'));
if (process.env.npm_command === 'exec' && built) process.exit(0);
execFileSync(process.execPath, [path.join(root, 'scripts', 'build.mjs')], {stdio: 'inherit'});
