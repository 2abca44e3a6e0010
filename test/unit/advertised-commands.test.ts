import {promises as fs} from 'node:fs';
import path from 'node:path';

import ts from 'typescript';
import {describe, expect, it} from 'vitest';

import {repoRoot} from '../helpers/cli.js';

/**
 * Help never advertises a command that does not exist: every `dforge <words>` in a string of src/
 * (next steps, descriptions, examples, messages) and every oclif topic of package.json must name
 * a command of the built manifest (the longest run of words that is one). Needs a build.
 */

interface Mention {
  readonly where: string;
  readonly text: string;
  readonly words: string[];
  /** Written as an instruction ("Run: dforge …", "`dforge …`"), so it cannot be prose. */
  readonly instruction: boolean;
  /** The --flags written after the command, up to the end of the clause. */
  readonly flags: string[];
}

const MENTION = /(?:\b(a|an|the|any|each|every|its|no|only|registered|valid) )?(Run: |run: |with: |`)?dforge((?: [a-z][a-z0-9-]*)+)([^`'";()\n]*)/gi;

async function sourceFiles(dir: string): Promise<string[]> {
  const entries = await fs.readdir(dir, {withFileTypes: true});
  const nested = await Promise.all(entries.map((e) => (e.isDirectory() ? sourceFiles(path.join(dir, e.name)) : Promise.resolve(e.name.endsWith('.ts') ? [path.join(dir, e.name)] : []))));
  return nested.flat();
}

/** The text of every string and template literal in a file, with its line. */
function stringsOf(file: string, text: string): Array<{line: number; text: string}> {
  const source = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true);
  const found: Array<{line: number; text: string}> = [];
  const visit = (node: ts.Node): void => {
    if (ts.isStringLiteral(node) || ts.isNoSubstitutionTemplateLiteral(node) || ts.isTemplateHead(node) || ts.isTemplateMiddle(node) || ts.isTemplateTail(node)) {
      found.push({line: source.getLineAndCharacterOfPosition(node.getStart()).line + 1, text: node.text.replaceAll('<%= config.bin %>', 'dforge')});
    }
    ts.forEachChild(node, visit);
  };
  visit(source);
  return found;
}

/** "a dforge bundle", "a registered dforge tenant role": dforge as an adjective, not a command line. */
function mentionsIn(where: string, text: string): Mention[] {
  return [...text.matchAll(MENTION)]
    .filter((m) => m[1] === undefined)
    .map((m) => {
      // The clause ends at a sentence break or at the next command named in it.
      const rest = m[4]!.split(/\. |, |\bdforge\b/)[0]!;
      return {where, text: `dforge${m[3]!}${rest}`.trimEnd(), words: m[3]!.trim().split(' '), instruction: m[2] !== undefined, flags: [...rest.matchAll(/(?:^|\s)--([a-z][a-z0-9-]*)/g)].map((f) => f[1]!)};
    });
}

/** Flags oclif gives every command. */
const GLOBAL_FLAGS = new Set(['help', 'version']);

/**
 * Why a mention is wrong, or undefined. A first word that is no command or topic is prose ("dforge
 * writes …") unless the mention is an instruction; under a topic that is not itself a command the
 * next word must be one of its commands.
 */
function problemWith(m: Mention, ids: Map<string, Set<string>>, roots: Set<string>): string | undefined {
  const [first, second] = m.words;
  if (!roots.has(first!)) return m.instruction ? `"${first}" is not a dforge command or topic` : undefined;
  for (let n = m.words.length; n > 0; n--) {
    const flags = ids.get(m.words.slice(0, n).join(':'));
    if (!flags) continue;
    const unknown = m.flags.filter((f) => !flags.has(f) && !GLOBAL_FLAGS.has(f) && !(f.startsWith('no-') && flags.has(f.slice(3))));
    return unknown.length === 0 ? undefined : `dforge ${m.words.slice(0, n).join(' ')} has no ${unknown.map((f) => `--${f}`).join(', ')}`;
  }
  if (second === undefined) return [...ids.keys()].some((id) => id.startsWith(`${first}:`)) ? undefined : `topic "${first}" has no commands`;
  return `no command "${first} ${second}"`;
}

describe('help never advertises commands that do not exist', () => {
  it('every dforge <command> named in a string of src/ and every package.json topic is in the manifest', async () => {
    const manifest = JSON.parse(await fs.readFile(path.join(repoRoot, 'oclif.manifest.json'), 'utf8')) as {commands: Record<string, {flags: Record<string, unknown>}>};
    const ids = new Map(Object.entries(manifest.commands).map(([id, c]) => [id, new Set(Object.keys(c.flags))]));
    const pkg = JSON.parse(await fs.readFile(path.join(repoRoot, 'package.json'), 'utf8')) as {oclif: {topics: Record<string, unknown>}};
    const roots = new Set([...[...ids.keys()].map((id) => id.split(':')[0]!), ...Object.keys(pkg.oclif.topics), 'help']);
    ids.set('help', new Set());

    const mentions: Mention[] = Object.keys(pkg.oclif.topics).map((topic) => ({where: 'package.json oclif.topics', text: `dforge ${topic}`, words: [topic], instruction: true, flags: []}));
    for (const file of await sourceFiles(path.join(repoRoot, 'src'))) {
      const relative = path.relative(repoRoot, file);
      for (const s of stringsOf(file, await fs.readFile(file, 'utf8'))) mentions.push(...mentionsIn(`${relative}:${s.line}`, s.text));
    }
    expect(mentions.length).toBeGreaterThan(100);
    const wrong = mentions.flatMap((m) => {
      const problem = problemWith(m, ids, roots);
      return problem ? [`${m.where}: "${m.text}": ${problem}`] : [];
    });
    expect(wrong).toEqual([]);
  });

  it('the check itself: a made-up subcommand, an empty topic and an instruction to a non-command are caught; prose is not', () => {
    const ids = new Map([['db:start', new Set(['cluster'])], ['backup', new Set(['tenant', 'all'])], ['backup:list', new Set(['tenant'])], ['tenant:list', new Set<string>()]]);
    const roots = new Set(['db', 'backup', 'tenant', 'residency']);
    const check = (text: string): string | undefined => problemWith(mentionsIn('t', text)[0]!, ids, roots);
    expect(check('Run: dforge db bootstrap')).toBe('no command "db bootstrap"');
    expect(check('dforge residency')).toBe('topic "residency" has no commands');
    expect(check('Run: dforge tenants list')).toBe('"tenants" is not a dforge command or topic');
    expect(check('dforge writes it 0600')).toBeUndefined();
    expect(mentionsIn('t', 'not a registered dforge tenant role; the name is not one a dforge bundle has')).toEqual([]);
    expect(check('dforge backup --tenant acme')).toBeUndefined();
    expect(check('dforge backup list --tenant acme')).toBeUndefined();
    expect(check('start it with: dforge db start --cluster x')).toBeUndefined();
    expect(check('Run: dforge backup --tenant acme --undo acme, then dforge tenant list --all')).toBe('dforge backup has no --undo');
    expect(check('dforge backup --all, or dforge tenant list --nope')).toBeUndefined();
  });
});
