import {readFileSync} from 'node:fs';
import path from 'node:path';
import {fileURLToPath} from 'node:url';

/**
 * Answers `--version` and non-interactive help without loading oclif, which alone costs several
 * times a bare `node -e 0`. Help text is not rendered here: it is the byte-exact output of oclif's
 * own help, captured per command and topic at build time (scripts/build-help-cache.mjs) and
 * checked against a live oclif run by the tests. Anything else, or any doubt, returns false and
 * the caller runs oclif.
 */

const packageRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const HELP_CACHE_FILE = path.join(packageRoot, 'dist', 'help-cache.json');

/** The width oclif renders help at when stdout is not a terminal. */
export const HELP_CACHE_COLUMNS = 80;

export interface HelpCache {
  readonly version: string;
  readonly columns: number;
  /** Keyed by command or topic id with spaces (`tenant`, `config validate`); '' is the root help. */
  readonly entries: Record<string, string>;
}

export function runFastPath(argv: readonly string[], env: NodeJS.ProcessEnv = process.env): boolean {
  if (env.DFORGE_NO_FAST_PATH === '1') return false;
  if (argv.length === 1 && argv[0] === '--version') {
    const pkg = JSON.parse(readFileSync(path.join(packageRoot, 'package.json'), 'utf8')) as {name: string; version: string};
    process.stdout.write(`${pkg.name}/${pkg.version} ${process.platform}-${process.arch} node-${process.version}\n`);
    return true;
  }
  const id = helpRequestId(argv);
  if (id === undefined || process.stdout.isTTY || env.OCLIF_COLUMNS) return false;
  let cache: HelpCache;
  try {
    cache = JSON.parse(readFileSync(HELP_CACHE_FILE, 'utf8')) as HelpCache;
  } catch {
    return false;
  }
  const text = cache.columns === HELP_CACHE_COLUMNS ? cache.entries[id] : undefined;
  if (text === undefined) return false;
  process.stdout.write(text);
  return true;
}

/** The id help is asked for: `help a b`, `a b --help`, `--help` or nothing at all; else undefined. */
export function helpRequestId(argv: readonly string[]): string | undefined {
  const words = (list: readonly string[]): boolean => list.every((w) => /^[a-z][a-z0-9-]*$/.test(w));
  if (argv.length === 0) return '';
  if (argv[0] === 'help') return words(argv.slice(1)) ? argv.slice(1).join(' ') : undefined;
  if (argv.at(-1) === '--help' && words(argv.slice(0, -1))) return argv.slice(0, -1).join(' ');
  return undefined;
}
