#!/usr/bin/env node
import module from 'node:module';

module.enableCompileCache?.();
const {runFastPath} = await import('../dist/cli/fast-path.js');
if (!runFastPath(process.argv.slice(2))) {
  const {execute} = await import('@oclif/core');
  await execute({dir: import.meta.url});
}
