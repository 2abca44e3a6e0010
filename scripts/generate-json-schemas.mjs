#!/usr/bin/env node
// Generates docs/schemas/<command>.schema.json for every command in oclif.manifest.json from the
// TypeScript type its run() returns, plus the error envelope and the `audit tail --follow` line.
// The types are the contract; these files are derived from them, and a unit test fails when a
// committed schema differs from what this produces. Needs a build (the manifest and dist/).
//
//   node scripts/generate-json-schemas.mjs           write docs/schemas/*.schema.json
//   node scripts/generate-json-schemas.mjs --check   exit 1 if any committed schema is stale

import {promises as fs} from 'node:fs';
import path from 'node:path';
import {fileURLToPath, pathToFileURL} from 'node:url';

import {SchemaGenerator, createFormatter, createParser} from 'ts-json-schema-generator';
import ts from 'typescript';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const schemaDir = path.join(repoRoot, 'docs', 'schemas');
/** Every generated file ends with this; hand-written schemas (posture.json) do not. */
export const GENERATED_SUFFIX = '.schema.json';

/** `tenant:list` → `tenant-list.schema.json`: the command id with its spaces as dashes. */
export function schemaFileFor(commandId) {
  return `${commandId.replaceAll(':', '-')}${GENERATED_SUFFIX}`;
}

/** The virtual module the generator reads: one exported alias per result type. Never written to disk. */
const VIRTUAL = path.join(repoRoot, 'scripts', '__json_schema_results__.ts');

async function readManifest() {
  return JSON.parse(await fs.readFile(path.join(repoRoot, 'oclif.manifest.json'), 'utf8'));
}

function sourceOf(relativePath) {
  // dist/commands/x/y.js → src/commands/x/y.ts (tsconfig.build.json maps src → dist one to one).
  const [, ...rest] = relativePath;
  return path.join(repoRoot, 'src', ...rest).replace(/\.js$/, '.ts');
}

function programFor(virtualText) {
  const configFile = ts.readConfigFile(path.join(repoRoot, 'tsconfig.json'), ts.sys.readFile);
  const {options} = ts.parseJsonConfigFileContent(configFile.config, ts.sys, repoRoot);
  const host = ts.createCompilerHost(options);
  const getSourceFile = host.getSourceFile.bind(host);
  host.getSourceFile = (file, language, ...rest) => (path.resolve(file) === VIRTUAL ? ts.createSourceFile(file, virtualText, language) : getSourceFile(file, language, ...rest));
  const fileExists = host.fileExists.bind(host);
  host.fileExists = (file) => path.resolve(file) === VIRTUAL || fileExists(file);
  return ts.createProgram([VIRTUAL], options, host);
}

/** Adds the version field every success carries (BaseCommand.toSuccessJson) to each object shape of the result. */
function withSchemaVersion(schema, version, what) {
  if (Array.isArray(schema.anyOf)) {
    // `undefined` (the generator's {not: {}}) is a run that streamed its output and prints no result.
    const printed = schema.anyOf.filter((s) => !(s.not && Object.keys(s.not).length === 0));
    if (printed.length === 1) return withSchemaVersion({...schema, anyOf: undefined, ...printed[0]}, version, what);
    return {...schema, anyOf: printed.map((s) => withSchemaVersion(s, version, what))};
  }
  if (schema.type !== 'object') throw new Error(`${what}: a --json result must be an object, got ${JSON.stringify(schema).slice(0, 300)}`);
  return {
    ...schema,
    properties: {schemaVersion: {type: 'integer', const: version}, ...schema.properties},
    required: ['schemaVersion', ...(schema.required ?? [])],
  };
}

/** The file's own id, title and description first; the type's JSDoc description would describe the type, not the output. */
function toText({$schema, description: _typeDoc, ...schema}, meta) {
  return `${JSON.stringify({$schema, ...meta, ...schema}, null, 2)}\n`;
}

/**
 * Every schema this repository's types define, by file name. Reads the manifest for the command
 * list (so a new command gets its schema without touching this script) and dist/ for each
 * command's static schemaVersion.
 */
export async function generateSchemas() {
  const manifest = await readManifest();
  // A command without --json (db psql hands the terminal to psql) has no output contract.
  const ids = Object.keys(manifest.commands).filter((id) => manifest.commands[id].enableJsonFlag !== false).sort();
  const lines = [];
  ids.forEach((id, i) => {
    const source = path.relative(path.dirname(VIRTUAL), sourceOf(manifest.commands[id].relativePath)).replace(/\.ts$/, '.js');
    lines.push(`import type C${i} from './${source}';`, `export type Result${i} = ReturnType<C${i}['run']>;`);
  });
  lines.push(
    "import type {ErrorEnvelope as E} from '../src/errors.js';",
    'export type ErrorEnvelope = E;',
    "import type {ChangeEntry as F} from '../src/audit/change-log.js';",
    'export type FollowLine = F;',
  );
  const program = programFor(lines.join('\n'));
  const config = {path: VIRTUAL, expose: 'none', topRef: false, additionalProperties: false, skipTypeCheck: true, jsDoc: 'extended', sortProps: false};
  const generator = new SchemaGenerator(program, createParser(program, config), createFormatter(config), config);
  const create = (type, what = type) => {
    let generated;
    try {
      generated = generator.createSchema(type);
    } catch (err) {
      throw new Error(`${what}: cannot derive a JSON Schema from its result type (${err.message}${err.diagnostic?.node ? ` at ${err.diagnostic.node.getText().slice(0, 120)}` : ''})`, {cause: err});
    }
    const {$schema, definitions, ...rest} = generated;
    return {$schema, ...rest, ...(definitions && Object.keys(definitions).length > 0 ? {definitions} : {})};
  };

  const out = new Map();
  const failures = [];
  for (const [i, id] of ids.entries()) {
    const command = manifest.commands[id];
    try {
      const {default: cls} = await import(pathToFileURL(path.join(repoRoot, ...command.relativePath)).href);
      const words = id.replaceAll(':', ' ');
      const schema = withSchemaVersion(create(`Result${i}`, `dforge ${words}`), cls.schemaVersion, `dforge ${words}`);
      out.set(schemaFileFor(id), toText(schema, {$id: `urn:dforge:schema:${id.replaceAll(':', '-')}:v${cls.schemaVersion}`, title: `dforge ${words} --json`, description: `What dforge ${words} prints on stdout with --json when it succeeds (generated from its result type by scripts/generate-json-schemas.mjs). ${command.summary ?? ''}`.trim()}));
    } catch (err) {
      failures.push(err.message);
    }
  }
  // All of them at once: one run tells whoever changed result types everything to fix.
  if (failures.length > 0) throw new Error(failures.join('\n'));
  const error = create('ErrorEnvelope');
  error.properties.schemaVersion = {type: 'integer', const: error.properties.schemaVersion.const};
  out.set('error.schema.json', toText(error, {$id: 'urn:dforge:schema:error', title: 'dforge <any command> --json, failed', description: 'What every command prints on stdout with --json when it fails (exit code other than 0), except posture, whose report is its output whatever the exit code.'}));
  const {default: tail} = await import(pathToFileURL(path.join(repoRoot, 'dist', 'commands', 'audit', 'tail.js')).href);
  const line = withSchemaVersion(create('FollowLine'), tail.schemaVersion, 'audit tail --follow line');
  out.set('audit-tail-follow-line.schema.json', toText(line, {$id: 'urn:dforge:schema:audit-tail-follow-line', title: 'dforge audit tail --tenant S --follow --json, one line', description: 'Each line audit tail --follow prints with --json: one change entry (an element of entries in audit-tail.schema.json) and schemaVersion.'}));
  return out;
}

/** Committed generated files that differ from, are missing from, or are not in `generated`. */
export async function staleSchemas(generated) {
  const committed = (await fs.readdir(schemaDir)).filter((f) => f.endsWith(GENERATED_SUFFIX));
  const stale = [];
  for (const [file, text] of generated) {
    const current = await fs.readFile(path.join(schemaDir, file), 'utf8').catch(() => null);
    if (current !== text) stale.push(file);
  }
  for (const file of committed) if (!generated.has(file)) stale.push(file);
  return stale.sort();
}

async function main() {
  const generated = await generateSchemas();
  if (process.argv.includes('--check')) {
    const stale = await staleSchemas(generated);
    if (stale.length > 0) {
      process.stderr.write(`stale JSON Schemas in docs/schemas: ${stale.join(', ')}\nRun: npm run build && node scripts/generate-json-schemas.mjs\n`);
      process.exitCode = 1;
    }
    return;
  }
  await fs.mkdir(schemaDir, {recursive: true});
  for (const file of await staleSchemas(generated)) if (!generated.has(file)) await fs.rm(path.join(schemaDir, file));
  for (const [file, text] of generated) await fs.writeFile(path.join(schemaDir, file), text);
  process.stderr.write(`json schemas: ${generated.size} files in docs/schemas\n`);
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) await main();
