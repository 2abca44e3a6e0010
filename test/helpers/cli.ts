import {spawn} from 'node:child_process';
import {readFileSync} from 'node:fs';
import path from 'node:path';
import {fileURLToPath} from 'node:url';

import {Ajv, type ErrorObject, type ValidateFunction} from 'ajv';
import addFormats from 'ajv-formats';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const cliEntry = path.join(repoRoot, 'bin', 'run.js');

export interface CliResult {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

export interface CliOptions {
  readonly env?: NodeJS.ProcessEnv;
  readonly cwd?: string;
  readonly nodeArgs?: readonly string[];
  /** Written to stdin, which is then closed; without it stdin is closed from the start. */
  readonly input?: string;
}

/**
 * Runs the built CLI as an operator would: a separate process, no TTY, stdin closed. With `--json`
 * the run is also a contract test: stdout must validate against the command's schema
 * (docs/schemas/<command>.schema.json) or, for a failure, docs/schemas/error.schema.json;
 * otherwise the promise rejects with every mismatch, path by path.
 */
export async function runCli(args: readonly string[], options: CliOptions = {}): Promise<CliResult> {
  const result = await spawnCli(args, options);
  if (args.includes('--json')) checkJsonContract(args, result);
  return result;
}

/** What a `--json` run's stdout was checked against, for tests that want to say so. */
export const checkedContracts = new Set<string>();

const schemaDir = path.join(repoRoot, 'docs', 'schemas');
const ajv = new Ajv({strict: true, allErrors: true});
addFormats.default(ajv);
const validators = new Map<string, ValidateFunction>();
let commandIds: Set<string> | undefined;

function validatorFor(file: string): ValidateFunction {
  let validate = validators.get(file);
  if (!validate) {
    validate = ajv.compile(JSON.parse(readFileSync(path.join(schemaDir, file), 'utf8')) as object);
    validators.set(file, validate);
  }
  return validate;
}

/** The command an argv names: the longest run of leading words that is a command in the manifest. */
export function commandIdOf(args: readonly string[]): string | undefined {
  commandIds ??= new Set(Object.keys((JSON.parse(readFileSync(path.join(repoRoot, 'oclif.manifest.json'), 'utf8')) as {commands: Record<string, unknown>}).commands));
  const words: string[] = [];
  for (const a of args) {
    if (a.startsWith('-')) break;
    words.push(a);
  }
  for (let n = words.length; n > 0; n--) {
    const id = words.slice(0, n).join(':');
    if (commandIds.has(id)) return id;
  }
  return undefined;
}

function checkJsonContract(args: readonly string[], result: CliResult): void {
  // A process killed on purpose (crash-point tests) had no chance to print anything.
  if (result.signal !== null) return;
  const id = commandIdOf(args);
  const shown = `dforge ${args.join(' ')} (exit ${result.code})`;
  let parsed: unknown;
  try {
    parsed = JSON.parse(result.stdout);
  } catch {
    throw new Error(`${shown}: stdout is not one JSON document:\n${result.stdout.slice(0, 2000)}\nstderr: ${result.stderr.slice(0, 2000)}`);
  }
  // A failure prints the error envelope; posture prints its report whatever its exit code.
  const failed = result.code !== 0 && typeof parsed === 'object' && parsed !== null && 'error' in parsed;
  if (!failed && id === undefined) throw new Error(`${shown}: printed a success but names no command of the manifest`);
  const file = failed ? 'error.schema.json' : `${id!.replaceAll(':', '-')}.schema.json`;
  const validate = validatorFor(file);
  checkedContracts.add(failed ? `error:${id ?? 'unknown'}` : id!);
  if (validate(parsed)) return;
  const lines = closestBranch(validate.errors ?? []).map((e) => {
    const at = e.instancePath || '/';
    const got = JSON.stringify(valueAt(parsed, e.instancePath)) ?? 'undefined';
    return `  ${at}: ${e.message ?? e.keyword}${Object.keys(e.params).length > 0 ? ` ${JSON.stringify(e.params)}` : ''}\n      got: ${got.length > 300 ? `${got.slice(0, 300)}…` : got}`;
  });
  throw new Error(`${shown}: stdout does not match docs/schemas/${file}\n${lines.join('\n')}\nIf the output is right, change the result type and run: npm run build && node scripts/generate-json-schemas.mjs`);
}

/**
 * For a result that is one of several shapes (anyOf), ajv reports every branch's mismatches; only
 * the branch that came closest (fewest errors) says what is actually wrong.
 */
function closestBranch(errors: readonly ErrorObject[]): ErrorObject[] {
  const branches = new Map<string, ErrorObject[]>();
  const rest: ErrorObject[] = [];
  for (const e of errors) {
    const branch = /^#\/anyOf\/\d+/.exec(e.schemaPath)?.[0];
    if (branch) branches.set(branch, [...(branches.get(branch) ?? []), e]);
    else if (!(e.keyword === 'anyOf' && e.schemaPath === '#/anyOf')) rest.push(e);
  }
  const closest = [...branches.entries()].sort((x, y) => x[1].length - y[1].length)[0];
  return [...rest, ...(closest ? closest[1].map((e) => ({...e, message: `${e.message ?? e.keyword} (closest shape: ${closest[0]})`})) : [])];
}

function valueAt(doc: unknown, pointer: string): unknown {
  let at = doc;
  for (const raw of pointer.split('/').slice(1)) {
    const key = raw.replaceAll('~1', '/').replaceAll('~0', '~');
    at = at !== null && typeof at === 'object' ? (at as Record<string, unknown>)[key] : undefined;
  }
  return at;
}

function spawnCli(args: readonly string[], options: CliOptions = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...(options.nodeArgs ?? []), cliEntry, ...args], {
      cwd: options.cwd ?? repoRoot,
      env: {...process.env, NO_COLOR: '1', ...options.env},
      stdio: [options.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({code, signal, stdout, stderr}));
    if (options.input !== undefined) child.stdin!.end(options.input);
  });
}
