import {promises as fs} from 'node:fs';
import path from 'node:path';

import {beforeAll, describe, expect, it} from 'vitest';

import {generateSchemas, schemaDir, schemaFileFor, staleSchemas} from '../../scripts/generate-json-schemas.mjs';
import {repoRoot} from '../helpers/cli.js';

/**
 * docs/schemas/*.schema.json are derived from the commands' result types: regenerated here in
 * memory, they must equal what is committed, so a changed result type without its schema fails.
 * Needs a build (oclif.manifest.json lists the commands).
 */
describe('docs/schemas: the --json contracts', () => {
  let generated: Map<string, string>;
  beforeAll(async () => {
    generated = await generateSchemas();
  }, 120_000);

  it('the committed schemas are what the result types generate (else: npm run build && node scripts/generate-json-schemas.mjs)', async () => {
    const stale = await staleSchemas(generated);
    for (const file of stale) {
      const committed = await fs.readFile(path.join(schemaDir, file), 'utf8').catch(() => '(missing)');
      expect(committed, `docs/schemas/${file} is stale`).toBe(generated.get(file) ?? '(not generated: no such command)');
    }
    expect(stale).toEqual([]);
  });

  it('every command with --json has a schema; each requires an integer schemaVersion and describes an object', async () => {
    const manifest = JSON.parse(await fs.readFile(path.join(repoRoot, 'oclif.manifest.json'), 'utf8')) as {commands: Record<string, {enableJsonFlag?: boolean}>};
    // db psql hands the terminal to psql and has no --json, so no contract either.
    const ids = Object.keys(manifest.commands).filter((id) => manifest.commands[id]!.enableJsonFlag !== false);
    expect(generated.has(schemaFileFor('db:psql'))).toBe(false);
    expect(ids.length).toBeGreaterThan(40);
    for (const id of ids) {
      const schema = JSON.parse(generated.get(schemaFileFor(id))!) as {type?: string; anyOf?: Array<{type: string; required: string[]; properties: Record<string, {type: string}>}>; required?: string[]; properties?: Record<string, {type: string}>};
      for (const shape of schema.anyOf ?? [schema as {type: string; required: string[]; properties: Record<string, {type: string}>}]) {
        expect(shape.type, id).toBe('object');
        expect(shape.required, id).toContain('schemaVersion');
        expect(shape.properties.schemaVersion, id).toMatchObject({type: 'integer'});
      }
    }
  });

  it('the error envelope always carries data and its own schemaVersion', () => {
    const error = JSON.parse(generated.get('error.schema.json')!) as {required: string[]; properties: {error: {required: string[]}}};
    expect(error.required).toEqual(['schemaVersion', 'error']);
    expect(error.properties.error.required).toEqual(expect.arrayContaining(['kind', 'code', 'message', 'exitCode', 'nextSteps', 'data']));
  });
});
