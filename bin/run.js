#!/usr/bin/env node
// package.json "engines" is only a warning to npm: refuse an older Node here, with the fix, rather
// than fail later on a missing API.
const [major, minor] = process.versions.node.split('.').map(Number);
if (major < 22 || (major === 22 && minor < 13)) {
  process.stderr.write(`Error: dforge needs Node.js 22.13 or later; this is ${process.versions.node} (${process.execPath}).\nWhat to do:\n  - Install Node.js 22.13 or later and put it first on PATH, or use the single executable dforge (no Node needed).\n`);
  process.exit(1);
}
// V8's compile cache first, so everything after it loads from the cache: see src/cli/compile-cache.ts.
const {enableUserCompileCache} = await import('../dist/cli/compile-cache.js');
enableUserCompileCache();
const {runFastPath} = await import('../dist/cli/fast-path.js');
if (!runFastPath(process.argv.slice(2))) {
  const {execute, settings} = await import('@oclif/core');
  // dforge always runs its compiled dist/: with NODE_ENV=development or test, oclif would otherwise
  // look for TypeScript and the sources, which an installed package has neither of, and warn.
  settings.enableAutoTranspile = false;
  await execute({dir: import.meta.url});
}
