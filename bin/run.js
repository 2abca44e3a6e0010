#!/usr/bin/env node
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
