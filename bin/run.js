#!/usr/bin/env node
import module from 'node:module';
import os from 'node:os';
import path from 'node:path';

// V8's code cache, kept per user: Node's default is a directory under /tmp, which another local
// user could create first and fill with code for a root-run dforge to execute.
module.enableCompileCache?.(path.join(os.homedir(), '.cache', 'dforge', 'node-compile-cache'));
const {runFastPath} = await import('../dist/cli/fast-path.js');
if (!runFastPath(process.argv.slice(2))) {
  const {execute} = await import('@oclif/core');
  await execute({dir: import.meta.url});
}
