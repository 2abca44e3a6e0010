/**
 * Finds the host's PostgreSQL server binaries, the ones the embedded data plane runs.
 *
 * Distribution packages put them in a few well-known places; dforge looks there rather than on
 * PATH, because Debian's PATH only carries client wrappers and a server must match its data
 * directory's major version exactly.
 */

import {execFileSync} from 'node:child_process';
import {accessSync, constants, readFileSync, readdirSync} from 'node:fs';
import path from 'node:path';

import {UserError} from '../errors.js';

export interface PostgresBinaries {
  readonly binDir: string;
  readonly majorVersion: number;
}

/** The tools dforge runs: the server and its control tools, plus the clients backup and restore use. */
export type PostgresTool = 'initdb' | 'pg_ctl' | 'postgres' | 'pg_dump' | 'pg_restore' | 'psql';

// pg_restore is not optional: every package that ships pg_dump ships it too, and restore needs it.
const REQUIRED_TOOLS: readonly PostgresTool[] = ['initdb', 'pg_ctl', 'postgres', 'pg_dump', 'pg_restore', 'psql'];

/**
 * Debian/Ubuntu: /usr/lib/postgresql/<N>/bin. RHEL with PGDG packages: /usr/pgsql-<N>/bin.
 * RHEL's own postgresql-server package: /usr/bin (found through the /usr root's bin directory).
 */
export const DEFAULT_SEARCH_ROOTS: readonly string[] = ['/usr/lib/postgresql', '/usr'];

/** 13 is the oldest major release upstream still patched when this was written; older ones get no security fixes. */
export const DEFAULT_MIN_MAJOR = 13;

interface Candidate {
  readonly binDir: string;
  readonly majorVersion: number;
}

export function findPostgresBinaries(options: {searchRoots?: readonly string[]; minMajor?: number} = {}): PostgresBinaries {
  const roots = options.searchRoots ?? DEFAULT_SEARCH_ROOTS;
  const minMajor = options.minMajor ?? DEFAULT_MIN_MAJOR;
  const candidates = roots.flatMap(candidatesUnder).sort((a, b) => b.majorVersion - a.majorVersion);
  const best = candidates.find((c) => c.majorVersion >= minMajor);
  if (best) return best;

  const searched = roots.flatMap((root) => [path.join(root, '<N>', 'bin'), path.join(root, 'pgsql-<N>', 'bin'), path.join(root, 'bin')]);
  const tooOld = candidates[0];
  const message = tooOld
    ? `PostgreSQL ${tooOld.majorVersion} was found in ${tooOld.binDir}, but dforge needs PostgreSQL ${minMajor} or newer`
    : `no PostgreSQL server binaries were found (looked for ${REQUIRED_TOOLS.join(', ')} in ${searched.join(', ')})`;
  throw new UserError(message, {
    nextSteps: [
      `Debian/Ubuntu: apt-get install postgresql (or a specific major version: apt-get install postgresql-<N>, with <N> >= ${minMajor})`,
      `RHEL/Rocky/Alma: dnf install postgresql-server (or, from the PGDG repository, dnf install postgresql<N>-server, with <N> >= ${minMajor})`,
      'Then re-run the command; the embedded data plane uses the newest installed major version.',
    ],
    data: {searched, minMajor, ...(tooOld ? {found: tooOld} : {})},
  });
}

export function pgToolPath(bins: PostgresBinaries, tool: PostgresTool): string {
  return path.join(bins.binDir, tool);
}

/**
 * Whether the server binary was built with systemd support (`--with-systemd`), so it can tell
 * systemd when it is ready. Debian, Ubuntu, RHEL and PGDG packages all are; a source build may not be.
 */
export function supportsSystemdNotify(bins: PostgresBinaries): boolean {
  return readFileSync(pgToolPath(bins, 'postgres')).includes('sd_notify');
}

function candidatesUnder(root: string): Candidate[] {
  const found: Candidate[] = [];
  for (const entry of listDir(root)) {
    const major = /^(?:pgsql-)?(\d+)$/.exec(entry)?.[1];
    const binDir = path.join(root, entry, 'bin');
    if (major !== undefined && hasAllTools(binDir)) found.push({binDir, majorVersion: Number(major)});
  }
  // An unversioned bin directory (RHEL's own package) does not name its version; the server does.
  const plainBin = path.join(root, 'bin');
  if (hasAllTools(plainBin)) {
    const major = serverMajor(plainBin);
    if (major !== undefined) found.push({binDir: plainBin, majorVersion: major});
  }
  return found;
}

function listDir(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

function hasAllTools(binDir: string): boolean {
  return REQUIRED_TOOLS.every((tool) => {
    try {
      accessSync(path.join(binDir, tool), constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

function serverMajor(binDir: string): number | undefined {
  try {
    // `postgres --version` answers before the server's refusal to run as root, so this is safe as root.
    const out = execFileSync(path.join(binDir, 'postgres'), ['--version'], {encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 10_000});
    const major = /\(PostgreSQL\)\s+(\d+)/.exec(out)?.[1];
    return major === undefined ? undefined : Number(major);
  } catch {
    return undefined;
  }
}
