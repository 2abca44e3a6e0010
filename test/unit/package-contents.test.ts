import {execFileSync} from 'node:child_process';
import {readFileSync} from 'node:fs';
import {isBuiltin} from 'node:module';
import path from 'node:path';

import {beforeAll, describe, expect, it} from 'vitest';

import {repoRoot, runCli} from '../helpers/cli.js';

/**
 * What `npm pack` puts in the tarball an operator installs with `npm install -g`: the built dforge
 * (dist/, oclif.manifest.json, the help cache) and nothing that needs a build step, dev
 * dependencies or a registry to run. Needs `npm run build` first, like the CLI tests.
 */

interface Pkg {
  dependencies: Record<string, string>;
  devDependencies: Record<string, string>;
  engines: {node: string};
  scripts: Record<string, string>;
  bin: Record<string, string>;
  oclif: {commands: string; plugins: string[]; hooks: Record<string, string>};
}
const pkg = JSON.parse(readFileSync(path.join(repoRoot, 'package.json'), 'utf8')) as Pkg;

let packed: Set<string>;
beforeAll(() => {
  // --ignore-scripts: `prepare` would rebuild dist/ under the other tests' feet; the list is the same.
  const out = execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], {cwd: repoRoot, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe']});
  const [entry] = JSON.parse(out) as [{files: {path: string}[]}];
  packed = new Set(entry.files.map((f) => f.path));
});

/** Every module specifier a built file imports: static imports and re-exports, side-effect imports, literal import(). */
function specifiers(source: string): string[] {
  const found: string[] = [];
  for (const re of [/^\s*(?:import|export)\s[^;]*?\sfrom\s*['"]([^'"]+)['"]/gm, /^\s*import\s*['"]([^'"]+)['"]/gm, /\bimport\(\s*['"]([^'"]+)['"]\s*\)/g]) {
    for (const m of source.matchAll(re)) found.push(m[1]!);
  }
  return found;
}

/** `@scope/name/sub` → `@scope/name`, `name/sub` → `name`. */
function packageName(specifier: string): string {
  const parts = specifier.split('/');
  return specifier.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0]!;
}

describe('the npm tarball', () => {
  it('carries the built CLI, its manifest, the help cache, the templates and the docs its messages cite', () => {
    for (const f of ['bin/run.js', 'oclif.manifest.json', 'dist/help-cache.json', 'dist/cli/fast-path.js', 'package.json', 'docs/security.md', 'docs/operations.md']) {
      expect(packed, f).toContain(f);
    }
    const manifest = JSON.parse(readFileSync(path.join(repoRoot, 'oclif.manifest.json'), 'utf8')) as {commands: Record<string, {relativePath: string[]}>};
    expect(Object.keys(manifest.commands).length).toBeGreaterThan(0);
    for (const [id, c] of Object.entries(manifest.commands)) expect(packed, id).toContain(c.relativePath.join('/'));
    for (const hook of Object.values(pkg.oclif.hooks)) expect(packed).toContain(path.posix.normalize(hook));
    const templates = execFileSync('git', ['ls-files', 'templates'], {cwd: repoRoot, encoding: 'utf8'}).split('\n').filter(Boolean);
    expect(templates.length).toBeGreaterThan(0);
    for (const t of templates) expect(packed, t).toContain(t);
  });

  it('carries no sources, tests, scripts or build leftovers', () => {
    const stray = [...packed].filter((f) => /^(src|test|scripts|node_modules|build\.next|dist\.old|dist-sea)\//.test(f) || /\.(ts|map|tsbuildinfo)$/.test(f));
    expect(stray).toEqual([]);
  });

  it('runs with no build step at install: no install-time lifecycle script of its own', () => {
    // `prepare` builds in a clone (npm ci) and before `npm pack`; npm does not run it for a tarball.
    for (const s of ['preinstall', 'install', 'postinstall']) expect(pkg.scripts[s], s).toBeUndefined();
    expect(Object.values(pkg.bin)).toEqual(['./bin/run.js']);
    expect(pkg.engines.node).toBe('>=22.13');
  });

  it('imports, at run time, only Node built-ins, its own packed files and its "dependencies"', () => {
    const runtime = [...packed].filter((f) => f.endsWith('.js') && (f.startsWith('dist/') || f.startsWith('bin/')));
    expect(runtime.length).toBeGreaterThan(50);
    const problems: string[] = [];
    for (const file of runtime) {
      for (const spec of specifiers(readFileSync(path.join(repoRoot, file), 'utf8'))) {
        if (spec.startsWith('.')) {
          const target = path.posix.normalize(path.posix.join(path.posix.dirname(file), spec));
          if (!packed.has(target)) problems.push(`${file}: ${spec} is not in the tarball`);
        } else if (!isBuiltin(spec) && !(packageName(spec) in pkg.dependencies)) {
          const where = packageName(spec) in pkg.devDependencies ? 'a devDependency' : 'not a dependency';
          problems.push(`${file}: ${spec} is ${where}`);
        }
      }
    }
    for (const plugin of pkg.oclif.plugins) if (!(plugin in pkg.dependencies)) problems.push(`oclif plugin ${plugin} is not a dependency`);
    expect(problems).toEqual([]);
  });

  it('refuses, with the fix, a Node older than engines allows; npm only warns about it', async () => {
    const as = (version: string) => ['--import', `data:text/javascript,Object.defineProperty(process.versions,"node",{value:"${version}"})`];
    const old = await runCli(['--version'], {nodeArgs: as('22.12.0')});
    expect(old.code).toBe(1);
    expect(old.stdout).toBe('');
    expect(old.stderr).toContain('dforge needs Node.js 22.13 or later; this is 22.12.0');
    expect(old.stderr).toContain('What to do:');
    const ok = await runCli(['--version'], {nodeArgs: as('22.13.0')});
    expect(ok.code).toBe(0);
    expect(ok.stdout).toContain('dforge/');
  });
});
