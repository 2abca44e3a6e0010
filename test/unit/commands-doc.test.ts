import {readFileSync} from 'node:fs';
import path from 'node:path';

import {describe, expect, it} from 'vitest';

import {renderCommandDocs} from '../../scripts/generate-command-docs.mjs';
import {repoRoot} from '../helpers/cli.js';

/**
 * docs/commands.md is generated from the built help (scripts/generate-command-docs.mjs). A command,
 * flag or description changed without regenerating it fails here. Needs `npm run build` first.
 */
describe('docs/commands.md', () => {
  const doc = readFileSync(path.join(repoRoot, 'docs', 'commands.md'), 'utf8');

  it('is what npm run docs:commands writes from the current build', () => {
    expect(doc === renderCommandDocs(repoRoot), 'docs/commands.md is stale: run npm run build && npm run docs:commands, then commit it').toBe(true);
  });

  it('documents every command the manifest lists, and no other', () => {
    const manifest = JSON.parse(readFileSync(path.join(repoRoot, 'oclif.manifest.json'), 'utf8')) as {commands: Record<string, {hidden?: boolean}>};
    const listed = Object.entries(manifest.commands).filter(([, c]) => !c.hidden).map(([id]) => id.split(':').join(' ')).sort();
    const documented = [...doc.matchAll(/^## dforge (.+)$/gm)].map((m) => m[1]!).sort();
    expect(documented).toEqual(listed);
  });
});
