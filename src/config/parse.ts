import {isMap, isScalar, LineCounter, parseDocument, type Document, type Node as YamlNode, type Pair} from 'yaml';
import type {z} from 'zod';

import {UserError} from '../errors.js';
import {closest} from '../util/closest.js';
import {configSchema, type DforgeConfig} from './schema.js';

/** One problem in a config file, located so an editor or a human can jump to it. */
export interface ConfigIssue {
  /** Dotted path of the offending value, e.g. `regions.eu.clusters[0].port`; empty for syntax errors. */
  readonly path: string;
  readonly line: number;
  readonly column: number;
  readonly message: string;
  /** What to change, in the file's own terms. */
  readonly fix: string;
}

export class ConfigError extends UserError {
  readonly file: string;
  readonly issues: readonly ConfigIssue[];

  constructor(file: string, issues: readonly ConfigIssue[]) {
    const lines = issues.map((i) => `${file}:${i.line}:${i.column}: ${i.path ? `${i.path}: ` : ''}${i.message}\n    fix: ${i.fix}`);
    super(`${file} is not a valid dforge config (${issues.length} problem${issues.length === 1 ? '' : 's'}):\n  ${lines.join('\n  ')}`, {
      nextSteps: [`Edit ${file} as shown, then run: dforge config validate --file ${file}`, 'For editor checking, point yaml-language-server at the output of: dforge config schema'],
      data: {file, issues},
    });
    this.file = file;
    this.issues = issues;
  }
}

/** Parses and validates config text; every problem is reported, not only the first. */
export function parseConfig(text: string, file: string): DforgeConfig {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, {lineCounter, prettyErrors: false, uniqueKeys: true, strict: true});
  if (doc.errors.length > 0) {
    throw new ConfigError(
      file,
      doc.errors.map((e) => {
        const pos = lineCounter.linePos(e.pos[0]);
        return {path: '', line: pos.line, column: pos.col, message: firstLine(e.message), fix: syntaxFix(e.code)};
      }),
    );
  }
  let data: unknown;
  try {
    data = doc.toJS({maxAliasCount: 100});
  } catch (err) {
    // Unresolvable or exponentially expanding aliases surface here, not as parse errors.
    throw new ConfigError(file, [{path: '', line: 1, column: 1, message: (err as Error).message, fix: 'define each &anchor before its *alias, and do not nest aliases deeply'}]);
  }
  const result = configSchema.safeParse(data ?? {}, {reportInput: true});
  if (result.success) return result.data;
  throw new ConfigError(
    file,
    result.error.issues.flatMap((issue) => describeIssue(issue, doc, lineCounter)).sort((a, b) => a.line - b.line || a.column - b.column),
  );
}

function describeIssue(issue: z.core.$ZodIssue, doc: Document, lines: LineCounter): ConfigIssue[] {
  const at = (path: readonly PropertyKey[], offsetOf: 'key' | 'value'): {line: number; column: number} => {
    const {line, col} = lines.linePos(locate(doc, path, offsetOf));
    return {line, column: col};
  };
  if (issue.code === 'unrecognized_keys') {
    return issue.keys.map((key) => {
      const path = [...issue.path, key];
      const allowed = allowedKeys(issue.path);
      const suggestion = closest(key, allowed);
      return {
        path: formatPath(path),
        ...at(path, 'key'),
        message: `unknown key "${key}"`,
        fix: suggestion ? `did you mean "${suggestion}"? Rename the key.` : `remove it; allowed here: ${allowed.join(', ') || '(none)'}`,
      };
    });
  }
  const where = at(issue.path, 'value');
  return [{path: formatPath(issue.path), ...where, message: issue.message, fix: fixFor(issue)}];
}

function fixFor(issue: z.core.$ZodIssue): string {
  switch (issue.code) {
    case 'invalid_type':
      return issue.input === undefined
        ? `add the required key "${String(issue.path.at(-1))}" (${issue.expected})`
        : `use a ${issue.expected} here${issue.expected === 'number' ? ', without quotes' : ''}`;
    case 'invalid_value':
      return `use one of: ${issue.values.map((v) => JSON.stringify(v)).join(', ')}`;
    case 'invalid_union':
      return 'check "kind" and the keys that kind needs (see: dforge config schema)';
    case 'too_small':
    case 'too_big':
      return `adjust the value: ${issue.message}`;
    case 'invalid_format':
      return issue.message;
    default:
      return issue.message;
  }
}

function syntaxFix(code: string): string {
  switch (code) {
    case 'DUPLICATE_KEY':
      return 'remove or rename the duplicated key; each key may appear once per mapping';
    case 'BAD_INDENT':
    case 'MISSING_CHAR':
    case 'UNEXPECTED_TOKEN':
      return 'check the indentation (spaces, not tabs) and quoting around this position';
    case 'TAB_AS_INDENT':
      return 'indent with spaces; YAML does not allow tabs for indentation';
    default:
      return 'fix the YAML syntax at this position; quote values that contain ":" or "#"';
  }
}

/** Offset in the source of the node at `path`; falls back to the nearest existing ancestor. */
function locate(doc: Document, path: readonly PropertyKey[], offsetOf: 'key' | 'value'): number {
  for (let depth = path.length; depth >= 0; depth--) {
    const prefix = path.slice(0, depth);
    if (offsetOf === 'key' && depth === path.length && depth > 0) {
      const parent = prefix.length > 1 ? doc.getIn(prefix.slice(0, -1), true) : doc.contents;
      if (isMap(parent)) {
        const pair = (parent.items as Pair[]).find((p) => isScalar(p.key) && String(p.key.value) === String(prefix.at(-1)));
        const range = (pair?.key as YamlNode | undefined)?.range;
        if (range) return range[0];
      }
      continue;
    }
    const node = (prefix.length === 0 ? doc.contents : doc.getIn(prefix, true)) as YamlNode | null | undefined;
    if (node?.range) return node.range[0];
  }
  return 0;
}

/** Keys the schema allows at `path`, for "did you mean" suggestions. */
function allowedKeys(path: readonly PropertyKey[]): string[] {
  let schema: unknown = configSchema;
  for (const segment of path) {
    schema = unwrap(schema);
    const def = (schema as {def?: {type?: string; shape?: Record<string, unknown>; element?: unknown; valueType?: unknown; options?: unknown[]}}).def;
    if (!def) return [];
    if (def.type === 'object' && def.shape) schema = def.shape[String(segment)];
    else if (def.type === 'array') schema = def.element;
    else if (def.type === 'record') schema = def.valueType;
    else return [];
  }
  schema = unwrap(schema);
  const def = (schema as {def?: {type?: string; shape?: Record<string, unknown>; options?: unknown[]}}).def;
  if (def?.type === 'object' && def.shape) return Object.keys(def.shape);
  if (def?.type === 'union' && def.options) {
    return [...new Set(def.options.flatMap((o) => Object.keys((unwrap(o) as {def?: {shape?: object}}).def?.shape ?? {})))];
  }
  return [];
}

function unwrap(schema: unknown): unknown {
  let current = schema as {def?: {type?: string; innerType?: unknown; in?: unknown; schema?: unknown}} | undefined;
  while (current?.def && ['default', 'optional', 'nullable', 'pipe', 'prefault'].includes(current.def.type ?? '')) {
    current = (current.def.innerType ?? current.def.in) as typeof current;
  }
  return current;
}

function formatPath(path: readonly PropertyKey[]): string {
  return path.reduce<string>((acc, seg) => (typeof seg === 'number' ? `${acc}[${seg}]` : acc ? `${acc}.${String(seg)}` : String(seg)), '');
}

function firstLine(message: string): string {
  return message.split('\n')[0] ?? message;
}
