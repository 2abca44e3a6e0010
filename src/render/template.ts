import {isScalar, parseAllDocuments, parseDocument, visit, type Document, type Node} from 'yaml';

import {BugError, UserError} from '../errors.js';

/**
 * The two template languages of templates/: both refuse to let a value change the structure of
 * what it lands in, which is what keeps a hostile domain or image name from injecting
 * configuration.
 *
 * - YAML templates are parsed first, then filled in: a placeholder is a scalar, and a value
 *   replaces that scalar as a node (a string stays one string, however many quotes, newlines or
 *   colons it holds). `"{{ a.b }}"` alone puts the value in with its type (number, list, map);
 *   inside a longer string it is interpolated as text.
 * - Text templates (nginx.conf, postgresql.conf, pg_hba.conf) have no such structure, so every
 *   placeholder names the escaper of its format: `{{ domain | nginx }}`. A placeholder without
 *   one is a template error, not a silent raw insert.
 */

export type TemplateValues = Readonly<Record<string, unknown>>;

const PLACEHOLDER = /\{\{\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*(?:\|\s*([a-z]+)\s*)?\}\}/g;
const WHOLE_PLACEHOLDER = /^\{\{\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*\}\}$/;

/** Thrown for a template that references a missing value or escaper: a bug in the template, or in a user override. */
function templateError(template: string, message: string): UserError {
  return new UserError(`template ${template}: ${message}`, {
    nextSteps: ['If this template is a local override (<dir>/templates/...), fix or delete it; otherwise report it as a dforge bug.'],
  });
}

function lookup(values: TemplateValues, dotted: string, template: string): unknown {
  let current: unknown = values;
  for (const key of dotted.split('.')) {
    if (current === null || typeof current !== 'object' || !Object.hasOwn(current, key)) {
      throw templateError(template, `no value named ${dotted}`);
    }
    current = (current as Record<string, unknown>)[key];
  }
  if (current === undefined) throw templateError(template, `no value named ${dotted}`);
  return current;
}

function asText(value: unknown, dotted: string, template: string): string {
  if (typeof value === 'string') return value;
  if (typeof value === 'number' || typeof value === 'boolean') return String(value);
  throw templateError(template, `${dotted} is a ${Array.isArray(value) ? 'list' : typeof value} and cannot be put inside a string`);
}

/** Fills a YAML template; the result is a deterministic YAML text (stable key order, no line folding). */
export function renderYamlTemplate(name: string, source: string, values: TemplateValues): string {
  const doc = parseDocument(source, {prettyErrors: false, uniqueKeys: true});
  if (doc.errors.length > 0) throw templateError(name, `not valid YAML: ${doc.errors[0]!.message}`);
  fillYaml(doc, name, values);
  return doc.toString({lineWidth: 0, minContentWidth: 0, indentSeq: true});
}

/** Fills a multi-document YAML template (Kubernetes manifests), keeping the documents apart. */
export function renderYamlDocuments(name: string, source: string, values: TemplateValues): string {
  const docs = parseAllDocuments(source, {prettyErrors: false, uniqueKeys: true});
  if (!Array.isArray(docs)) throw templateError(name, 'not valid YAML');
  return docs
    .map((doc, i) => {
      if (doc.errors.length > 0) throw templateError(name, `not valid YAML: ${doc.errors[0]!.message}`);
      fillYaml(doc, name, values);
      // Each document after the first writes its own "---" (a separator joined in as well would add empty documents).
      if (i > 0) doc.directives.docStart = true;
      return doc.toString({lineWidth: 0, minContentWidth: 0, indentSeq: true});
    })
    .join('');
}

function fillYaml(doc: Document, name: string, values: TemplateValues): void {
  // visit() walks into a node that replaces another; the values inside it are data, never templates.
  const inserted = new WeakSet<Node>();
  const skipInserted = (_key: unknown, node: Node): symbol | undefined => (inserted.has(node) ? visit.SKIP : undefined);
  visit(doc, {
    Map: skipInserted,
    Seq: skipInserted,
    Scalar(key, node) {
      if (inserted.has(node)) return undefined;
      if (typeof node.value !== 'string' || !node.value.includes('{{')) return undefined;
      const whole = WHOLE_PLACEHOLDER.exec(node.value);
      if (whole && key !== 'key') {
        const created = doc.createNode(lookup(values, whole[1]!, name));
        // A string value keeps the template's quoting style, so output stays readable and stable.
        if (isScalar(created) && typeof created.value === 'string') {
          node.value = created.value;
          inserted.add(node);
          return undefined;
        }
        inserted.add(created);
        return created;
      }
      node.value = node.value.replace(PLACEHOLDER, (_m, dotted: string, escaper: string | undefined) => {
        if (escaper) throw templateError(name, `escapers (| ${escaper}) belong to text templates; YAML values are escaped by the YAML writer`);
        return asText(lookup(values, dotted, name), dotted, name);
      });
      return undefined;
    },
  });
}

/** Escapers of the text formats; each refuses what it cannot make inert. */
const ESCAPERS: Record<string, (value: string) => string> = {
  /**
   * A single nginx token (server_name, upstream host, path). nginx quoting is not enough on its own
   * (variables expand inside quotes), so only characters that can never start a directive, a
   * block or a variable are accepted.
   */
  nginx: (value) => {
    if (!/^[A-Za-z0-9._:/\-[\]]+$/.test(value)) throw new Error('not a plain nginx token');
    return value;
  },
  /** A postgresql.conf string literal: single quotes, with quotes and backslashes doubled. */
  pgconf: (value) => {
    if (/[\n\r\0]/.test(value)) throw new Error('control characters cannot appear in postgresql.conf');
    return `'${value.replaceAll('\\', '\\\\').replaceAll("'", "''")}'`;
  },
  /** A pg_hba.conf field: a plain word (role, address, keyword). Quoted names would change keyword meaning. */
  hba: (value) => {
    if (!/^[A-Za-z0-9_.:/-]+$/.test(value)) throw new Error('not a plain pg_hba word');
    return value;
  },
};

export function renderTextTemplate(name: string, source: string, values: TemplateValues): string {
  return source.replace(PLACEHOLDER, (_m, dotted: string, escaper: string | undefined) => {
    if (!escaper) throw templateError(name, `{{ ${dotted} }} needs an escaper (${Object.keys(ESCAPERS).join(', ')}), e.g. {{ ${dotted} | nginx }}`);
    const escape = ESCAPERS[escaper];
    if (!escape) throw templateError(name, `unknown escaper ${escaper}; known: ${Object.keys(ESCAPERS).join(', ')}`);
    const text = asText(lookup(values, dotted, name), dotted, name);
    try {
      return escape(text);
    } catch (err) {
      // The value is operator input: say which one, without echoing it (it may be hostile or long).
      throw new UserError(`the value of ${dotted} cannot be written into ${name}: ${(err as Error).message}`, {
        nextSteps: [`Fix ${dotted} in dforge.yaml (dforge config validate tells you the allowed form).`],
      });
    }
  });
}

/** Throws when a rendered text still holds a placeholder: a template typo must not ship half-filled. */
export function assertFilled(name: string, text: string): void {
  if (/\{\{[^}]*\}\}/.test(text)) throw new BugError(`template ${name} left a placeholder unfilled`);
}
