import {promises as fs} from 'node:fs';
import path from 'node:path';

import {parseDocument} from 'yaml';
import {z} from 'zod';

import {configSchema, type DforgeConfig} from '../config/schema.js';
import {UsageError, UserError} from '../errors.js';
import type {InstallDir} from '../state/install-dir.js';

/**
 * What `dforge install` asks. One list serves the three ways of answering (flags, an answers
 * file, prompts on a terminal), so they cannot drift apart: the same answers give the same
 * dforge.yaml whichever way they came in.
 */
export interface Answers {
  target: 'compose' | 'k8s';
  domain: string;
  region: string;
  httpsPort: number;
  httpPort: number;
  postgresPort: number;
  backupDir: string;
  /** mounted is never asked (it needs keys.mountedKeyDir): it comes from a dforge.yaml the operator wrote. */
  masterKeyProvider: DforgeConfig['keys']['masterKeyProvider'];
  release: string;
  project: string;
  images: Partial<Record<'postgres' | 'authDb' | 'auth' | 'app' | 'proxy', string>>;
}

export type AnswerKey = Exclude<keyof Answers, 'images'>;

export interface Question {
  readonly key: AnswerKey;
  readonly flag: string;
  readonly message: string;
  readonly kind: 'input' | 'number' | 'select';
  readonly choices?: readonly string[];
  /** Undefined: the answer is required. */
  default?(known: Partial<Answers>, dir: InstallDir): string | number;
  /** Asked only for these targets (default: all). */
  readonly targets?: ReadonlyArray<Answers['target']>;
}

export const QUESTIONS: readonly Question[] = [
  {key: 'target', flag: '--target', message: 'Where does dForge run?', kind: 'select', choices: ['compose', 'k8s'], default: () => 'compose'},
  {key: 'domain', flag: '--domain', message: 'Public domain name (the HTTPS proxy serves it)', kind: 'input'},
  {key: 'region', flag: '--region', message: 'Name of the region this install serves', kind: 'input', default: () => 'main'},
  {key: 'httpsPort', flag: '--https-port', message: 'HTTPS port', kind: 'number', default: () => 443, targets: ['compose']},
  {key: 'httpPort', flag: '--http-port', message: 'HTTP port (it only redirects to HTTPS)', kind: 'number', default: () => 80, targets: ['compose']},
  {key: 'postgresPort', flag: '--postgres-port', message: 'Host port for PostgreSQL (bound to 127.0.0.1 only)', kind: 'number', default: () => 5432, targets: ['compose']},
  {key: 'backupDir', flag: '--backup-dir', message: 'Backup directory', kind: 'input', default: (known, dir) => path.join(dir.root, 'backups', known.region ?? 'main')},
  {key: 'masterKeyProvider', flag: '--master-key-provider', message: 'Where the master key lives', kind: 'select', choices: ['file', 'env', 'passphrase'], default: () => 'file'},
  {key: 'release', flag: '--release', message: 'dForge release', kind: 'input', default: () => '1.0.0'},
  {key: 'project', flag: '--project', message: 'docker compose project name', kind: 'input', default: () => 'dforge', targets: ['compose']},
];

const answersFileSchema = z.strictObject({
  target: z.enum(['compose', 'k8s']).optional(),
  domain: z.string().optional(),
  region: z.string().optional(),
  httpsPort: z.number().int().optional(),
  httpPort: z.number().int().optional(),
  postgresPort: z.number().int().optional(),
  backupDir: z.string().optional(),
  masterKeyProvider: z.enum(['file', 'env', 'passphrase']).optional(),
  release: z.string().optional(),
  project: z.string().optional(),
  images: z.strictObject({postgres: z.string(), authDb: z.string(), auth: z.string(), app: z.string(), proxy: z.string()}).partial().optional(),
});

export type PartialAnswers = Partial<Answers>;

/** Reads an answers file (`--config answers.yaml`): the same keys as the questions, plus `images`. */
export async function readAnswersFile(file: string): Promise<PartialAnswers> {
  const text = await fs.readFile(file, 'utf8').catch((err: NodeJS.ErrnoException) => {
    throw new UserError(`cannot read the answers file ${file}: ${err.code ?? err.message}`, {nextSteps: ['Pass an existing YAML file to --config.']});
  });
  const doc = parseDocument(text, {prettyErrors: false});
  if (doc.errors.length > 0) {
    const e = doc.errors[0]!;
    const [line, col] = e.linePos?.[0] ? [e.linePos[0].line, e.linePos[0].col] : [0, 0];
    throw new UserError(`${file}:${line}:${col}: not valid YAML: ${e.message.split('\n')[0]}`, {nextSteps: ['Fix the YAML syntax at that position.']});
  }
  const parsed = answersFileSchema.safeParse(doc.toJS() ?? {});
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new UserError(`${file}: ${issue.path.join('.') || '(top level)'}: ${issue.message}`, {nextSteps: [`Answer keys: ${QUESTIONS.map((q) => q.key).join(', ')}, images.`]});
  }
  return parsed.data as PartialAnswers;
}

/** The questions still open for the target, in order. */
export function openQuestions(known: PartialAnswers): Question[] {
  const target = known.target ?? 'compose';
  return QUESTIONS.filter((q) => known[q.key] === undefined && (!q.targets || q.targets.includes(target)));
}

/** Fills every open question with its default; a required one without an answer is a usage error naming its flag. */
export function withDefaults(known: PartialAnswers, dir: InstallDir): PartialAnswers {
  const filled: PartialAnswers = {...known};
  const missing: Question[] = [];
  for (const q of QUESTIONS) {
    if (filled[q.key] !== undefined) continue;
    if (q.default) (filled as Record<string, unknown>)[q.key] = q.default(filled, dir);
    else missing.push(q);
  }
  if (missing.length > 0) {
    throw new UsageError(`missing answer${missing.length > 1 ? 's' : ''}: ${missing.map((q) => `${q.key} (${q.flag})`).join(', ')}`, {
      nextSteps: [`Pass ${missing.map((q) => `${q.flag} <value>`).join(' ')}, or set ${missing.map((q) => q.key).join(', ')} in the answers file (--config), or run on a terminal to be asked.`],
    });
  }
  return filled;
}

/** The dforge.yaml the answers stand for; invalid values are errors naming the flag that carried them. */
export function configFromAnswers(a: Answers): DforgeConfig {
  const candidate = {
    version: 1,
    domain: a.domain,
    target: a.target,
    release: a.release,
    primaryRegion: a.region,
    regions: {
      [a.region]: {
        clusters: [{name: `${a.region}-1`, kind: 'bundled', port: a.postgresPort}],
        backup: {destinations: [{name: `${a.region}-local`, kind: 'local', path: a.backupDir}]},
      },
    },
    images: a.images,
    compose: {project: a.project, httpPort: a.httpPort, httpsPort: a.httpsPort},
    keys: {masterKeyProvider: a.masterKeyProvider},
  };
  const parsed = configSchema.safeParse(candidate);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const question = QUESTIONS.find((q) => issueMatches(q.key, issue.path.map(String)));
    const where = question ? `${question.key} (${question.flag})` : issue.path.join('.');
    throw new UsageError(`${where}: ${issue.message}`, {nextSteps: [`Give a valid ${where}.`]});
  }
  return parsed.data;
}

function issueMatches(key: AnswerKey, issuePath: string[]): boolean {
  const last = issuePath.at(-1);
  switch (key) {
    case 'region':
      return issuePath[0] === 'primaryRegion' || (issuePath[0] === 'regions' && issuePath.length <= 2) || last === 'name';
    case 'postgresPort':
      return issuePath[0] === 'regions' && last === 'port';
    case 'backupDir':
      return last === 'path';
    case 'masterKeyProvider':
      return last === 'masterKeyProvider';
    case 'project':
      return issuePath[0] === 'compose' && last === 'project';
    default:
      return last === key || issuePath[0] === key;
  }
}
