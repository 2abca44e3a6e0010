import {mkdtempSync, rmSync, writeFileSync, mkdirSync} from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {cruise, type ICruiseOptions, type ICruiseResult} from 'dependency-cruiser';
import extractDepcruiseOptions from 'dependency-cruiser/config-utl/extract-depcruise-options';
import extractTSConfig from 'dependency-cruiser/config-utl/extract-ts-config';
import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {repoRoot} from '../helpers/cli.js';

/**
 * No import cycle in src/: dependency-cruiser with the repository's .dependency-cruiser.cjs, type-only
 * imports and import() included. A failure lists each cycle as the chain of modules it runs through.
 */

let options: ICruiseOptions;
beforeAll(async () => {
  options = await extractDepcruiseOptions(path.join(repoRoot, '.dependency-cruiser.cjs'));
});

/** Cruises `dirs` under `baseDir` with the repository's rules and its tsconfig. */
async function cruiseUnder(baseDir: string, dirs: string[]): Promise<ICruiseResult> {
  const tsConfig = extractTSConfig(path.join(repoRoot, 'tsconfig.json'));
  const {output} = await cruise(dirs, {...options, baseDir}, undefined, {tsConfig});
  if (typeof output === 'string') throw new Error(`dependency-cruiser returned text, not a result: ${output.slice(0, 200)}`);
  return output;
}

/** Each cycle as `a.ts -> b.ts -> a.ts`, once per rule violation. */
function cyclesOf(result: ICruiseResult): string[] {
  return result.summary.violations.filter((v) => v.rule.name === 'no-circular').map((v) => [v.from, ...(v.cycle ?? []).map((d) => d.name)].join(' -> '));
}

describe('import cycles', () => {
  it('src/ has none', async () => {
    const result = await cruiseUnder(repoRoot, ['src']);
    expect(cyclesOf(result), 'import cycles in src/ (see .dependency-cruiser.cjs for how to break one)').toEqual([]);
    // The check sees what it must: `.js` specifiers resolved to the .ts sources, and type-only imports.
    const plane = result.modules.find((m) => m.source === 'src/control/plane.ts');
    expect(plane?.dependencies.map((d) => d.resolved)).toEqual(expect.arrayContaining(['src/control/clusters.ts', 'src/backup/pg-tools-mode.ts']));
  });

  describe('on a tree with a cycle', () => {
    let dir: string;
    beforeAll(() => {
      dir = mkdtempSync(path.join(os.tmpdir(), 'dforge-cycles-'));
      mkdirSync(path.join(dir, 'src'));
      // A value import one way and a type-only import back: the shape of the cycles this check removed.
      writeFileSync(path.join(dir, 'src', 'opener.ts'), "import {helper} from './helpers.js';\nexport interface Opened {\n  n: number;\n}\nexport const open = (): Opened => ({n: helper()});\n");
      writeFileSync(path.join(dir, 'src', 'helpers.ts'), "import type {Opened} from './opener.js';\nexport const helper = (): number => 1;\nexport const size = (o: Opened): number => o.n;\n");
    });
    afterAll(() => rmSync(dir, {recursive: true, force: true}));

    it('reports it, type-only edge included', async () => {
      const cycles = cyclesOf(await cruiseUnder(dir, ['src']));
      expect(cycles).toEqual(expect.arrayContaining([expect.stringMatching(/^src\/(opener|helpers)\.ts -> src\/(opener|helpers)\.ts -> src\/(opener|helpers)\.ts$/)]));
    });
  });
});
