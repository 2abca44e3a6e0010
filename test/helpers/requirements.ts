import {findPostgresBinaries, type PostgresBinaries} from '../../src/postgres/binaries.js';

/**
 * Real-component tests need PostgreSQL binaries and a Docker engine. On a developer machine
 * without them the suites are skipped with a visible reason; with CI=true a missing component
 * fails the run instead, because a silently skipped suite is a green lie.
 */
export const inCI = process.env.CI === 'true';

export function missingComponent(component: string, reason: string): never | false {
  if (inCI) throw new Error(`${component} is required when CI=true but is unavailable: ${reason}`);
  process.stderr.write(`[skip] ${component} unavailable: ${reason}\n`);
  return false;
}

/** The host's PostgreSQL server binaries, found the way dforge finds them; undefined after a visible skip. */
export function hostPostgresBinaries(): PostgresBinaries | undefined {
  try {
    return findPostgresBinaries();
  } catch {
    missingComponent('PostgreSQL', 'no server binaries in /usr/lib/postgresql/<N>/bin or /usr/pgsql-<N>/bin (install the Debian package postgresql)');
    return undefined;
  }
}
